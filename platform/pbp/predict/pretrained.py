"""Using a pretrained ProteinBERT directly: the GO terms it predicts for a sequence, and embeddings.

A pretrained model directory (``pbp pretrain``'s ``final_model/``, or any :meth:`ProteinBERT.save_pretrained`
output) may hold ``go_vocabulary.json`` (:mod:`pbp.model.vocabulary`), which names each annotation output; without
it terms are known by their annotation index only (``id`` and ``name`` are None).

The same class is an MLflow pyfunc model through a loader module, as :mod:`pbp.finetune.pyfunc`: nothing is
pickled. ``mlflow.pyfunc.load_model(uri)`` imports this module and calls ``_load_pyfunc(data_path)`` on the model
directory. ``predict`` takes a table with a ``seq`` column and returns, per row,
  ``go_terms``   the top-k terms, a list of {"id", "name", "index", "probability"} (params {"top_k": N}, default 10)
  ``embedding``  instead, with params {"output": "embeddings"}: the per-protein embedding (d_global floats)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbp.model import ProteinBERT
from pbp.model.vocabulary import GoTerm, read_vocabulary
from pbp.predict.embeddings import Embeddings, embeddings, model_batches

OUTPUTS = ("go_terms", "embeddings")
DEFAULT_TOP_K = 10


class PretrainedPredictor:
    """GO-term predictions and embeddings from a pretrained model (the annotation input is all zeros, as the
    original at inference)."""

    def __init__(self, model: ProteinBERT, vocabulary: Sequence[GoTerm] | None = None, max_tokens: int = 16384) -> None:
        if vocabulary is not None and len(vocabulary) != model.config.n_annotations:
            raise ValueError(f"a vocabulary of {len(vocabulary)} GO terms for a model with "
                             f"{model.config.n_annotations} annotation outputs")  # fmt: skip
        self.model, self.max_tokens = model.eval(), max_tokens
        self.vocabulary = list(vocabulary) if vocabulary is not None else None

    @classmethod
    def from_dir(cls, directory: str | Path, max_tokens: int = 16384) -> PretrainedPredictor:
        """Load a pretrained model directory and its ``go_vocabulary.json`` when there is one."""
        model = ProteinBERT.from_pretrained(directory)
        return cls(model, read_vocabulary(directory, model.config.n_annotations), max_tokens)

    @torch.no_grad()
    def top_go_terms(self, seqs: Sequence[str], k: int = DEFAULT_TOP_K) -> list[list[dict[str, Any]]]:
        """Per sequence, the ``k`` most probable GO terms, most probable first:
        ``{"id", "name", "index" (annotation output), "probability" (sigmoid of its logit)}``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.model.config.n_annotations)
        device = next(self.model.parameters()).device
        out: list[list[dict[str, Any]]] = [[] for _ in seqs]
        for rows, _ids, tokens_BL in model_batches(self.model, seqs, self.max_tokens):
            probs_BA = torch.sigmoid(self.model(tokens_BL.to(device)).annotation_logits.float())
            top_p, top_i = probs_BA.topk(k, dim=-1)  # sorted, largest first
            for r, row in enumerate(rows):
                out[row] = [self._term(int(i), float(p)) for p, i in zip(top_p[r], top_i[r], strict=True)]
        return out

    def _term(self, index: int, probability: float) -> dict[str, Any]:
        term = self.vocabulary[index] if self.vocabulary is not None else None
        return {"id": term.id if term else None, "name": term.name if term else None, "index": index,
                "probability": probability}  # fmt: skip

    def embeddings(self, seqs: Sequence[str], per_residue: bool = False) -> Embeddings:
        """See :func:`pbp.predict.embeddings.embeddings`."""
        return embeddings(self.model, seqs, per_residue=per_residue, max_tokens=self.max_tokens)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """The pyfunc entry point: a table with a ``seq`` column -> a table of ``go_terms`` or ``embedding``."""
        import pandas as pd

        params = params or {}
        output = params.get("output") or "go_terms"
        if output not in OUTPUTS:
            raise ValueError(f"params output={output!r}: expected one of {list(OUTPUTS)}")
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "seq" not in df.columns:
            raise ValueError(f"input has no column 'seq' (columns: {list(df.columns)})")
        # MLflow's schema enforcement turns {"seq": [a, b]} into ONE row holding a list: one prediction per sequence.
        seqs = [str(x) for s in df["seq"] for x in (s if isinstance(s, list | tuple | np.ndarray) else [s])]
        if output == "embeddings":
            return pd.DataFrame({"embedding": [v.tolist() for v in self.embeddings(seqs).proteins]})
        top_k = int(params.get("top_k") or DEFAULT_TOP_K)
        return pd.DataFrame({"go_terms": self.top_go_terms(seqs, top_k)})


def _load_pyfunc(data_path: str) -> PretrainedPredictor:
    return PretrainedPredictor.from_dir(data_path)


def save_pyfunc(model_dir: Path, out: Path, example_seqs: list[str]) -> Path:
    """An MLflow pyfunc model directory at ``out`` wrapping the pretrained model directory ``model_dir``."""
    from pbp.predict.pyfunc_model import save_pyfunc_model

    return save_pyfunc_model(out, "pbp.predict.pretrained", model_dir, _load_pyfunc(str(model_dir)), "seq",
                             example_seqs, {"top_k": DEFAULT_TOP_K, "output": "go_terms"})  # fmt: skip

"""Fine-tuned models as MLflow pyfunc models, through a loader module: nothing is pickled.

``mlflow.pyfunc.load_model(uri)`` imports this module and calls ``_load_pyfunc(data_path)``, which reads the
safetensors + JSON directory written by ``pbp.finetune.export.save_finetuned``. ``predict`` takes a table with a
sequence column (``seq`` unless the task said otherwise) and returns, per row:
  numeric              ``prediction`` (float)
  binary               ``probability`` of class 1 (with named labels: of ``task.positive_label``, and ``label``,
                       the more likely of the two)
  categorical          ``label`` (the most likely class, as in the training file) and ``probabilities`` (list)
  residue kinds        ``residue_predictions``: a list per residue (probability of 1, or the class label)
With params ``{"output": "embeddings"}``: ``embedding``, the body's per-protein embedding (pbp.predict.embeddings).
Sequences are batched by length and never truncated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbp.finetune.export import TaskInfo, load_finetuned
from pbp.model.finetune import FinetuneModel, TaskKind
from pbp.model.tokenizer import encode
from pbp.predict.batches import length_batches
from pbp.scratch import scratch


class FinetunedPredictor:
    def __init__(self, model: FinetuneModel, task: TaskInfo, max_tokens: int = 16384) -> None:
        self.model, self.task, self.max_tokens = model.eval(), task, max_tokens

    @torch.no_grad()
    def predict_sequences(self, seqs: list[str]) -> list[dict[str, Any]]:
        ids = [encode(s, f"row {i}") for i, s in enumerate(seqs)]
        out: list[dict[str, Any]] = [{} for _ in seqs]
        for rows, tokens in length_batches(ids, self.max_tokens):
            logits = self.model(tokens).float()
            for r, k in enumerate(rows):
                out[k] = self._row(logits[r], len(ids[k]))
        return out

    def _row(self, logits: torch.Tensor, n_tokens: int) -> dict[str, Any]:
        kind, classes = self.task.kind, self.task.classes
        if kind is TaskKind.NUMERIC:
            return {"prediction": float(logits)}
        if kind is TaskKind.BINARY:
            prob = float(torch.sigmoid(logits))
            return {"probability": prob, "label": classes[int(prob >= 0.5)]} if classes else {"probability": prob}
        if kind is TaskKind.CATEGORICAL:
            p = torch.softmax(logits, -1)
            return {"label": classes[int(p.argmax())], "probabilities": p.tolist()}
        res = logits[1 : n_tokens - 1]
        if kind is TaskKind.RESIDUE_BINARY:
            return {"residue_predictions": torch.sigmoid(res).tolist()}
        return {"residue_predictions": [classes[int(c)] for c in res.argmax(-1)]}

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        col = self.task.seq_column if self.task.seq_column in df.columns else "seq"
        if col not in df.columns:
            raise ValueError(f"input has no column {self.task.seq_column!r} (columns: {list(df.columns)})")
        # MLflow's schema enforcement turns {"seq": [a, b]} into ONE row holding a list: one prediction per sequence.
        seqs = [str(x) for s in df[col] for x in (s if isinstance(s, list | tuple | np.ndarray) else [s])]
        output = (params or {}).get("output") or "predictions"
        if output == "embeddings":  # the body's per-protein embedding (pbp.predict.embeddings)
            from pbp.predict.embeddings import embeddings

            vectors = embeddings(self.model.body, seqs, max_tokens=self.max_tokens).proteins
            return pd.DataFrame({"embedding": [v.tolist() for v in vectors]})
        if output != "predictions":
            raise ValueError(f"params output={output!r}: expected 'predictions' or 'embeddings'")
        return pd.DataFrame(self.predict_sequences(seqs))


def _load_pyfunc(data_path: str) -> FinetunedPredictor:
    model, task, _meta = load_finetuned(data_path)
    return FinetunedPredictor(model, task)


def save_pyfunc(model_dir: Path, out: Path, example_seqs: list[str], seq_column: str = "seq") -> Path:
    """An MLflow pyfunc model directory at ``out`` wrapping the fine-tuned model at ``model_dir``."""
    from pbp.predict.pyfunc_model import save_pyfunc_model

    return save_pyfunc_model(out, "pbp.finetune.pyfunc", model_dir, _load_pyfunc(str(model_dir)), seq_column,
                             example_seqs, {"output": "predictions"})  # fmt: skip


def log_pyfunc(
    run_id: str, model_dir: Path, examples: list[str], seq_column: str, artifact_path: str = "model"
) -> None:
    """Save the pyfunc and log it to the run's ``artifact_path`` (no fluent run needed)."""
    from mlflow.tracking import MlflowClient

    with scratch("pyfunc") as tmp:  # a model's copy: gone once logged
        out = save_pyfunc(model_dir, Path(tmp) / "model", examples, seq_column)
        MlflowClient().log_artifacts(run_id, str(out), artifact_path)

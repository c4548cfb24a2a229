"""Protein embeddings from a ProteinBERT body: a pretrained model, or a fine-tuned model's ``.body``.

Per protein: the LAST block's global output, (G,) = d_global floats (512 for the paper's model). It is the
representation the pretraining objective shaped directly (the annotation head reads it and nothing else), it has a
fixed, modest size, and it summarises the whole sequence through global attention. The fine-tuning features
(:func:`pbp.model.finetune.extract_features`: every block's global LayerNorm plus the annotation probabilities,
15,599 floats) are the original's input to a linear head; as a general-purpose embedding they are 30x larger and
dominated by the annotation-probability block, so they are not used here.

Per residue (on request): the last block's local output with ``<START>``/``<END>`` dropped, (L_residues, D) =
d_local floats per residue (128), residue ``j`` of the input at row ``j``.

As the original at inference, the annotation input is all zeros. Sequences are length-batched
(:func:`pbp.predict.batches.length_batches`) and never truncated; with the model's padding mask (the default) a
protein's embedding does not depend on the batch it lands in. A model loaded with ``padding_mask=False`` (the
original's numerics, where padding leaks into the global track) is run one sequence at a time for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pbp.model import ProteinBERT
from pbp.model.tokenizer import encode
from pbp.predict.batches import length_batches


@dataclass
class Embeddings:
    proteins: np.ndarray
    """(N, G) float32: per protein, the last block's global output."""
    residues: list[np.ndarray] | None = None
    """With ``per_residue``: per protein (L_residues, D) float32, the last block's local output at each residue."""


def model_batches(
    model: ProteinBERT, seqs: Sequence[str], max_tokens: int
) -> Iterator[tuple[list[int], list[list[int]], torch.Tensor]]:
    """-> (row indices into ``seqs``, those rows' token ids, padded tokens (B, L)): length batches, or one sequence
    per batch when the model has no padding mask (so padding cannot change a result)."""
    ids = [encode(s, f"row {i}") for i, s in enumerate(seqs)]
    for rows, tokens in length_batches(ids, max_tokens if model.config.padding_mask else 1):
        yield rows, [ids[k] for k in rows], tokens


@torch.no_grad()
def embeddings(
    model: ProteinBERT, seqs: Sequence[str], *, per_residue: bool = False, max_tokens: int = 16384
) -> Embeddings:
    """Embeddings of ``seqs`` in input order (see the module docstring for what they are). ProteinBERT has no
    dropout, so the model's train/eval mode does not matter and is left as it is."""
    device = next(model.parameters()).device
    proteins = np.zeros((len(seqs), model.config.d_global), dtype=np.float32)
    residues: list[np.ndarray] = [np.zeros((0, model.config.d_local), np.float32)] * len(seqs)
    for rows, ids, tokens_BL in model_batches(model, seqs, max_tokens):
        out = model(tokens_BL.to(device), output_hidden_states=True)
        assert out.global_hidden is not None and out.local_hidden is not None
        global_BG = out.global_hidden[-1].float().cpu().numpy()
        local_BLD = out.local_hidden[-1].float().cpu().numpy() if per_residue else None
        for r, k in enumerate(rows):
            proteins[k] = global_BG[r]
            if local_BLD is not None:
                residues[k] = local_BLD[r, 1 : len(ids[r]) - 1].copy()  # drop <START>, <END> and padding
    return Embeddings(proteins, residues if per_residue else None)

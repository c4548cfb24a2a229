"""Length-sorted inference batches: sequences sorted by length, each batch padded to its longest member and holding
at most ``max_tokens`` tokens (one sequence longer than that is a batch of its own). Nothing is truncated, and with
the padding mask a protein's outputs do not depend on the batch it lands in."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from pbp.model.tokenizer import PAD_ID


def length_batches(ids: Sequence[Sequence[int]], max_tokens: int = 16384) -> Iterator[tuple[list[int], torch.Tensor]]:
    """-> (row indices into ``ids``, tokens (B, L) int64 right-padded with <PAD>), shortest sequences first."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = np.argsort([len(x) for x in ids], kind="stable")
    i = 0
    while i < len(order):
        j, longest = i, 0
        while j < len(order) and max(longest, len(ids[order[j]])) * (j - i + 1) <= max_tokens:
            longest = max(longest, len(ids[order[j]]))
            j += 1
        j = max(j, i + 1)
        rows = [int(k) for k in order[i:j]]
        L = max(len(ids[k]) for k in rows)
        tokens = torch.full((len(rows), L), PAD_ID, dtype=torch.long)
        for r, k in enumerate(rows):
            tokens[r, : len(ids[k])] = torch.as_tensor(list(ids[k]), dtype=torch.long)
        yield rows, tokens
        i = j

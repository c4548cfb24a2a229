"""Batches for fine-tuning: shuffled training batches within a stage's seq_len, length-sorted evaluation batches.

Training (per stage): a sequence longer than ``seq_len`` tokens is dropped (``too_long='drop'``, the original's
choice, counted) or cropped to a random window (``'crop'``; residue labels are cropped with it). Each batch is
padded to its longest sequence: with the padding mask the outputs do not depend on padding.
Evaluation never truncates: sequences sorted by length, batches of up to ``max_tokens`` tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pbp.finetune.data import Split
from pbp.model.finetune import IGNORE_INDEX
from pbp.model.tokenizer import PAD_ID


@dataclass
class Batch:
    index: np.ndarray
    """(B,) row indices into the split."""
    tokens: torch.Tensor
    """(B, L) int64, right-padded with <PAD>."""
    labels: torch.Tensor
    """(B,) per protein, or (B, L) per token position with IGNORE_INDEX at START/END/PAD."""


def collate(split: Split, index: np.ndarray, windows: list[tuple[int, int]] | None = None) -> Batch:
    rows = [split.tokens[i] for i in index]
    if windows is not None:
        rows = [r[a:b] for r, (a, b) in zip(rows, windows, strict=True)]
    L = max(len(r) for r in rows)
    tokens = torch.full((len(rows), L), PAD_ID, dtype=torch.long)
    for j, r in enumerate(rows):
        tokens[j, : len(r)] = torch.from_numpy(r.astype(np.int64))
    if isinstance(split.labels, list):
        labels = torch.full((len(rows), L), IGNORE_INDEX, dtype=torch.long)
        for j, i in enumerate(index):
            lab = split.labels[i] if windows is None else split.labels[i][windows[j][0] : windows[j][1]]
            labels[j, : len(lab)] = torch.from_numpy(lab)
    else:
        labels = torch.from_numpy(np.asarray(split.labels[index]))
    return Batch(np.asarray(index), tokens, labels)


def fitting_rows(split: Split, seq_len: int, too_long: str) -> tuple[np.ndarray, int]:
    """-> (rows used for training at this seq_len, how many were dropped)."""
    lengths = split.lengths()
    if too_long == "crop":
        return np.arange(len(split)), 0
    keep = np.flatnonzero(lengths <= seq_len)
    return keep, len(split) - len(keep)


def train_batches(
    split: Split, rows: np.ndarray, seq_len: int, batch_size: int, rng: np.random.Generator, rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:  # fmt: skip
    """One epoch over ``rows`` in a seeded order; rank r takes every world_size-th batch (the last partial round is
    dropped when world_size > 1 so every rank does the same number of steps)."""
    order = rows[rng.permutation(len(rows))]
    lengths = split.lengths()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if world_size > 1:
        batches = batches[: len(batches) // world_size * world_size]
    for b in batches[rank::world_size]:
        windows = None
        if (lengths[b] > seq_len).any():
            starts = [int(rng.integers(0, n - seq_len + 1)) if n > seq_len else 0 for n in lengths[b]]
            windows = [(s, s + seq_len) for s in starts]
        yield collate(split, b, windows)


def eval_groups(split: Split, max_tokens: int) -> list[np.ndarray]:
    """Row indices of the evaluation batches, in order: sorted by length, up to ``max_tokens`` tokens per batch
    (one sequence at least). Every rank computes the same list."""
    lengths = split.lengths()
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        n = int(lengths[i])
        if cur and max(cur_max, n) * (len(cur) + 1) > max_tokens:
            batches.append(np.asarray(cur))
            cur, cur_max = [], 0
        cur.append(i)
        cur_max = max(cur_max, n)
    if cur:
        batches.append(np.asarray(cur))
    return batches


def eval_batches(split: Split, max_tokens: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """The batches of :func:`eval_groups`; rank r takes every world_size-th batch."""
    for b in eval_groups(split, max_tokens)[rank::world_size]:
        yield collate(split, b)

"""The frozen-body feature cache: while the body is frozen its outputs do not change, so compute them once.

The body has no dropout and, with the padding mask, its outputs do not depend on how a batch was padded, so the
cached features are exactly those every epoch would recompute (up to float16 rounding where the cache is
float16). The head (Dropout + Linear) is then trained on them: an epoch costs a matrix product instead of a body
forward pass. Storage, chosen by size within the budget: float32 in memory, float16 in memory, a float16 file on
local disk (memory-mapped), else no cache (recompute, the fallback).

Per-protein tasks cache (N, F) global features; per-residue tasks cache every token position's local features,
concatenated (sum of lengths, F) with offsets, and train on the flattened positions (the loss is a mean over
valid positions, so flattening a batch changes nothing).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pbp.finetune.batching import collate, eval_groups
from pbp.finetune.data import Split
from pbp.model.finetune import IGNORE_INDEX, FinetuneModel, extract_features
from pbp.train.dist import DistContext, all_gather_objects

log = logging.getLogger("pbp.finetune")
PROGRESS_EVERY_S = 30.0


@dataclass
class FeatureCache:
    features: np.ndarray | torch.Tensor
    """(N, F) per protein, or (sum of lengths, F) per token position."""
    labels: np.ndarray
    """(N,) or (sum of lengths,) aligned with ``features``."""
    offsets: np.ndarray | None
    """Per-residue caches: (N + 1,) start of each example's positions."""
    storage: str
    """float32 | float16 | disk-float16."""

    def __len__(self) -> int:
        return len(self.labels) if self.offsets is None else len(self.offsets) - 1

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (features (B, F) or (positions, F) as float32, labels)."""
        if self.offsets is None:
            sel = np.sort(idx)
            x, y = self.features[sel], self.labels[sel]
        else:
            pos = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
            x, y = self.features[pos], self.labels[pos]
        xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        return xt.float(), torch.from_numpy(np.asarray(y))


def cache_size_bytes(split: Split, per_residue: bool, n_features: int, itemsize: int) -> int:
    rows = int(split.lengths().sum()) if per_residue else len(split)
    return rows * n_features * itemsize


@torch.no_grad()
def build_cache(
    model: FinetuneModel, split: Split, max_tokens: int, max_memory_mb: float, max_disk_mb: float,
    device: torch.device, show_progress: bool = False, ctx: DistContext | None = None,
) -> FeatureCache | None:  # fmt: skip
    """Compute the frozen body's features of every row of ``split`` (None: over both budgets, recompute).

    With several ranks (``ctx``) each computes every world_size-th evaluation batch and the ranks exchange their
    features batch by batch (one all-gather per round), so every rank ends with the whole cache at 1/world_size of
    the body's compute, holding at most one round of other ranks' features beyond its cache."""
    per_residue = model.task.kind.per_residue
    cfg = model.body.config
    F = cfg.local_feature_dim if per_residue else cfg.global_feature_dim
    fp32, fp16 = (cache_size_bytes(split, per_residue, F, n) / 2**20 for n in (4, 2))
    storage = choose_storage(fp32, fp16, max_memory_mb, max_disk_mb)
    if storage is None:
        log.warning("feature cache: %s needs %.0f MiB in float16, over both budgets; recomputing", split.name, fp16)
        return None
    feats, labels = _allocate(split, per_residue, F, storage)
    offsets = np.concatenate([[0], np.cumsum(split.lengths())]) if per_residue else None
    was_training = model.training
    model.body.eval()
    ctx = ctx or DistContext.single()
    groups = eval_groups(split, max_tokens)
    mine = groups[ctx.rank :: ctx.world_size]
    done, t0, shown = 0, time.perf_counter(), time.perf_counter()
    for r in range(-(-len(groups) // ctx.world_size)):  # every rank takes part in every round's all-gather
        part = _features(model, split, mine[r], device, feats.dtype.type) if r < len(mine) else None
        for got in all_gather_objects(part, ctx):
            if got is None:
                continue
            index, f, lab = got
            if offsets is None:
                feats[index], labels[index] = f, lab
            else:
                pos = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in index])
                feats[pos], labels[pos] = f, lab
            done += len(index)
        if show_progress and time.perf_counter() - shown > PROGRESS_EVERY_S:
            shown = time.perf_counter()
            rate = done / (shown - t0)
            print(f"feature cache: {split.name} {done}/{len(split)} sequences, {rate:.0f}/s, "
                  f"ETA {(len(split) - done) / rate:.0f} s", flush=True)  # fmt: skip
    model.train(was_training)
    log.info("feature cache: %s, %d rows x %d features, %s (%.0f MiB)", split.name, len(feats), F, storage,
             fp32 if storage == "float32" else fp16)  # fmt: skip
    return FeatureCache(feats, labels, offsets, storage)


def choose_storage(fp32_mb: float, fp16_mb: float, max_memory_mb: float, max_disk_mb: float) -> str | None:
    """float32 in memory if it fits the memory budget, else float16 in memory, else float16 on disk within the disk
    budget; None: over both, recompute."""
    if fp32_mb <= max_memory_mb:
        return "float32"
    if fp16_mb <= max_memory_mb:
        return "float16"
    if fp16_mb <= max_disk_mb:
        return "disk-float16"
    return None


def _allocate(split: Split, per_residue: bool, F: int, storage: str) -> tuple[np.ndarray, np.ndarray]:
    """The cache's empty arrays: features (rows, F) in ``storage`` (rows: one per residue or per sequence) and
    labels (IGNORE_INDEX per residue until filled). A disk cache is a float16 memmap whose file is unlinked at once:
    the mapping keeps its space until the cache is dropped, so nothing is left behind, also when a run is killed."""
    n_rows = int(split.lengths().sum()) if per_residue else len(split)
    feats: np.ndarray
    if storage == "disk-float16":
        path = Path(tempfile.mkdtemp(prefix="pbp-features-")) / f"{split.name}.f16"
        feats = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n_rows, F))
        path.unlink()
        path.parent.rmdir()
    else:
        feats = np.empty((n_rows, F), dtype=np.float32 if storage == "float32" else np.float16)
    if per_residue:
        labels = np.full(n_rows, IGNORE_INDEX, dtype=np.int64)
    else:
        labels = np.empty(n_rows, dtype=np.asarray(split.labels).dtype)
    return feats, labels


def _features(
    model: FinetuneModel, split: Split, index: np.ndarray, device: torch.device, dtype: type[np.floating],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """One evaluation batch -> (its rows, their features as ``dtype``: (B, F), or (sum of lengths, F) in row order
    per residue, the matching labels)."""
    b = collate(split, index)
    local_BLF, global_BF = extract_features(model.body, b.tokens.to(device))
    if model.task.kind.per_residue:
        lengths = torch.from_numpy(split.lengths()[b.index].astype(np.int64))
        real_BL = torch.arange(b.tokens.shape[1])[None, :] < lengths[:, None]
        feats, labels = local_BLF[real_BL.to(local_BLF.device)], b.labels[real_BL]
    else:
        feats, labels = global_BF, b.labels
    return b.index, feats.float().cpu().numpy().astype(dtype, copy=False), labels.numpy()

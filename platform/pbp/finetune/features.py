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
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pbp.console import LineProgress
from pbp.finetune.batching import collate, eval_groups
from pbp.finetune.data import Split
from pbp.model.finetune import IGNORE_INDEX, FinetuneModel, extract_features
from pbp.scratch import make
from pbp.train.dist import DistContext, all_gather_objects, all_min, barrier, broadcast

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
    shared_by: int = 1
    """Ranks on this node that map this one cache (in shared memory, or the one disk file)."""

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


def cache_rows(split: Split, per_residue: bool) -> int:
    """Rows of a cache: one per residue (token position) or one per sequence."""
    return int(split.lengths().sum()) if per_residue else len(split)


def cache_size_bytes(split: Split, per_residue: bool, n_features: int, itemsize: int) -> int:
    return cache_rows(split, per_residue) * n_features * itemsize


def _dtypes(split: Split, per_residue: bool, storage: str) -> tuple[np.dtype, np.dtype]:
    """(features, labels) dtypes of a cache in ``storage``."""
    labels = np.dtype(np.int64) if per_residue else np.asarray(split.labels).dtype
    return np.dtype(np.float32 if storage == "float32" else np.float16), labels


@torch.no_grad()
def build_cache(
    model: FinetuneModel, split: Split, max_tokens: int, max_memory_mb: float, max_disk_mb: float,
    device: torch.device, show_progress: bool = False, ctx: DistContext | None = None,
) -> FeatureCache | None:  # fmt: skip
    """Compute the frozen body's features of every row of ``split`` (None: over both budgets, recompute).

    With several ranks (``ctx``), the ranks of one node share one cache: a file in shared memory (``/dev/shm``; on
    local disk for ``disk-float16``) that each maps and fills with every ``local_world_size``-th evaluation batch,
    so a node holds one copy (not one per worker) and nothing is exchanged. Where a node cannot share (a single
    rank per node, or no room in ``/dev/shm``: containers often give it 64 MiB), each rank computes every
    ``world_size``-th batch and the ranks exchange their features batch by batch (one all-gather per round), so
    every rank ends with the whole cache at 1/world_size of the body's compute."""
    per_residue = model.task.kind.per_residue
    cfg = model.body.config
    F = cfg.local_feature_dim if per_residue else cfg.global_feature_dim
    fp32, fp16 = (cache_size_bytes(split, per_residue, F, n) / 2**20 for n in (4, 2))
    storage = choose_storage(fp32, fp16, max_memory_mb, max_disk_mb)
    if storage is None:
        log.warning("feature cache: %s needs %.0f MiB in float16, over both budgets; recomputing", split.name, fp16)
        return None
    ctx = ctx or DistContext.single()
    offsets = np.concatenate([[0], np.cumsum(split.lengths())]) if per_residue else None
    was_training = model.training
    model.body.eval()
    groups = eval_groups(split, max_tokens)
    node = _node_arrays(split, per_residue, F, storage, ctx)
    if node is not None:  # this node's ranks fill one cache; rank 0 counts its own rows for all of them
        progress, scale = _progress(split, show_progress), ctx.local_world_size
        feats, labels = node
        for index in groups[ctx.local_rank :: ctx.local_world_size]:
            progress.update(scale * _store(feats, labels, offsets, _features(model, split, index, device,
                                                                feats.dtype.type)))  # fmt: skip
        barrier(ctx)  # every rank's rows written before any reads them
    else:
        progress = _progress(split, show_progress)
        feats, labels = _allocate(split, per_residue, F, storage)
        mine = groups[ctx.rank :: ctx.world_size]
        for r in range(-(-len(groups) // ctx.world_size)):  # every rank takes part in every round's all-gather
            part = _features(model, split, mine[r], device, feats.dtype.type) if r < len(mine) else None
            for got in all_gather_objects(part, ctx):
                if got is not None:
                    progress.update(_store(feats, labels, offsets, got))
    model.train(was_training)
    shared_by = ctx.local_world_size if node is not None else 1
    if ctx.rank == 0:  # the same for every rank; on stdout after the progress lines (Ray reads stderr apart)
        mib = fp32 if storage == "float32" else fp16
        print(f"feature cache: {split.name}, {len(feats)} rows x {F} features, {storage} ({mib:.0f} MiB)"
              + (f", shared by the node's {shared_by} ranks" if node else ""), flush=True)  # fmt: skip
    return FeatureCache(feats, labels, offsets, storage, shared_by)


def _progress(split: Split, enabled: bool) -> LineProgress:
    """A line every ``PROGRESS_EVERY_S`` while a cache is built (rank 0 only: ``enabled``), in the worker's stdout
    beside its epoch lines; the build's own summary line follows it (``feature cache: NAME, N rows x F ...``). Where
    a node's ranks fill one cache, rank 0 counts its rows once per rank (they fill it at about the same pace)."""
    return LineProgress(f"feature cache: {split.name}", "sequences", len(split), enabled, summary=False,
                        stream=sys.stdout, every_s=PROGRESS_EVERY_S)  # fmt: skip


def _store(feats: np.ndarray, labels: np.ndarray, offsets: np.ndarray | None,
           got: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:  # fmt: skip
    """One batch's features and labels into the cache arrays (per residue: at its rows' positions) -> its rows."""
    index, f, lab = got
    if offsets is None:
        feats[index], labels[index] = f, lab
    else:
        pos = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in index])
        feats[pos], labels[pos] = f, lab
    return len(index)


SHARED_MEMORY = Path("/dev/shm")


def _node_arrays(split: Split, per_residue: bool, F: int, storage: str,
                 ctx: DistContext) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
    """The cache arrays that the node's ranks share (the same files mapped by each), or None where some node
    cannot share (then no rank does: the other way exchanges features through collectives that need every rank).

    Local rank 0 creates the files, every local rank maps them, then they are unlinked: the mappings keep them
    until the cache is dropped, so nothing is left behind, also when a run is killed after that."""
    n_rows = cache_rows(split, per_residue)
    fdtype, label_dtype = _dtypes(split, per_residue, storage)
    where = Path(tempfile.gettempdir()) if storage == "disk-float16" else SHARED_MEMORY
    need = n_rows * (F * fdtype.itemsize + label_dtype.itemsize)
    ok = ctx.local_world_size > 1 and label_dtype.kind in "iufb" and where.is_dir() and _free(where) > 1.1 * need
    if ctx.world_size < 2 or all_min(float(ok), ctx) < 1.0:
        return None
    token = broadcast(uuid.uuid4().hex if ctx.is_main else None, ctx)
    base = where / f"pbp-features-{token}-node{ctx.node_rank}-{split.name}"
    paths = (Path(f"{base}.features.npy"), Path(f"{base}.labels.npy"))
    if ctx.local_rank == 0:
        feats = np.lib.format.open_memmap(paths[0], mode="w+", dtype=fdtype, shape=(n_rows, F))
        labels = np.lib.format.open_memmap(paths[1], mode="w+", dtype=label_dtype, shape=(n_rows,))
        if per_residue:
            labels[:] = IGNORE_INDEX
    barrier(ctx)  # the files exist
    if ctx.local_rank != 0:
        feats, labels = np.load(paths[0], mmap_mode="r+"), np.load(paths[1], mmap_mode="r+")
    barrier(ctx)  # every local rank has mapped them
    if ctx.local_rank == 0:
        for p in paths:
            p.unlink()
    return feats, labels


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


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
    n_rows = cache_rows(split, per_residue)
    fdtype, label_dtype = _dtypes(split, per_residue, storage)
    feats: np.ndarray
    if storage == "disk-float16":
        path = make("features") / f"{split.name}.f16"
        feats = np.lib.format.open_memmap(path, mode="w+", dtype=fdtype, shape=(n_rows, F))
        path.unlink()
        path.parent.rmdir()
    else:
        feats = np.empty((n_rows, F), dtype=fdtype)
    labels = np.full(n_rows, IGNORE_INDEX, dtype=label_dtype) if per_residue else np.empty(n_rows, dtype=label_dtype)
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

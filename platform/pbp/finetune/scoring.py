"""Scoring a fine-tuned model: its predictions on a split, the task's metrics beside their trivial baselines, overall
and per length bucket (as the original reported test results). Shared by fine-tuning's validation and test, by
``pbp evaluate`` of a fine-tuned model on a labelled CSV file, and by the registry's gate.

A prediction is ``(row, logits, labels)``: the split's row, the logits over its labelled positions (residue kinds) or
of the protein (1, C), and the labels there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbp.finetune.data import Split
from pbp.model.finetune import IGNORE_INDEX, TaskSpec, task_loss
from pbp.train.metrics import BASELINE_SUFFIX, task_metrics

Pred = tuple[int, np.ndarray, np.ndarray]

LENGTH_BUCKETS = (512, 1024, 2048)
"""Token counts bounding the test buckets (``FinetuneConfig.length_buckets``' default)."""


def row_predictions(row: int, logits: torch.Tensor, labels: np.ndarray, per_residue: bool) -> Pred:
    """One example's prediction: ``logits`` (L, C) or (1, C) as the model gave them, ``labels`` aligned with them."""
    if per_residue:
        keep = labels != IGNORE_INDEX
        return row, logits[: len(labels)][torch.from_numpy(keep)].numpy(), labels[keep]
    return row, logits.numpy(), labels


@torch.no_grad()
def predict_split(model: Any, split: Split, max_tokens: int = 16384, device: str | torch.device = "cpu") -> list[Pred]:
    """Every example of ``split`` through ``model`` (a FinetuneModel) in length-sorted batches, in row order."""
    from pbp.predict.batches import length_batches

    model.eval()
    per_residue = model.task.kind.per_residue
    out: list[Pred] = []
    for rows, tokens in length_batches(split.tokens, max_tokens):  # type: ignore[arg-type]  # arrays of token ids
        logits = model(tokens.to(device)).float().cpu()
        for r, k in enumerate(rows):
            labels = np.asarray(split.labels[k]) if per_residue else np.asarray(split.labels)[k : k + 1]
            out.append(row_predictions(k, logits[r] if per_residue else logits[r : r + 1], labels, per_residue))
    return sorted(out, key=lambda p: p[0])


def score(task: TaskSpec, preds: Sequence[Pred], prefix: str, train_ref: Any = None) -> dict[str, float]:
    """``{prefix}_loss`` and the task's metrics with their baselines (``train_ref``: the training labels the
    constant baselines take their value from; without them, the scored labels'). ``task``: the flattened spec."""
    logits = torch.from_numpy(np.concatenate([p[1] for p in preds]))
    labels = torch.from_numpy(np.concatenate([p[2] for p in preds]))
    loss = float(task_loss(task, logits, labels))
    metrics = task_metrics(task, logits, labels, train_ref)
    return {f"{prefix}_loss": loss, **{f"{prefix}_{k}": v for k, v in metrics.items()}}


def by_length(task: TaskSpec, preds: Sequence[Pred], lengths: np.ndarray, buckets: Sequence[int] = LENGTH_BUCKETS,
              prefix: str = "test", train_ref: Any = None) -> dict[str, float]:  # fmt: skip
    """The metrics of each length bucket that holds examples (``test_le512_spearman``, ``test_gt2048_n``: tokens per
    sequence, <START>/<END> included), without their baselines; ``_n`` is the bucket's example count."""
    out: dict[str, float] = {}
    for lo, hi in itertools.pairwise([0, *buckets, math.inf]):
        sel = [p for p in preds if lo < lengths[p[0]] <= hi]
        if sel:
            tag = f"{prefix}_le{hi}" if math.isfinite(hi) else f"{prefix}_gt{lo}"
            out.update({k: v for k, v in score(task, sel, tag, train_ref).items() if not k.endswith(BASELINE_SUFFIX)})
            out[f"{tag}_n"] = float(len(sel))
    return out


def evaluate_file(model_dir: Path, url: str, *, seq_column: str = "", label_column: str = "", max_rows: int = 0,
                  buckets: Sequence[int] = LENGTH_BUCKETS, drop_unseen: bool = False) -> dict[str, float]:  # fmt: skip
    """The fine-tuned model in ``model_dir`` scored on a labelled CSV file (local or ``s3://``): ``test_*`` metrics
    overall beside their baselines (their constant, mean or majority class, from the training labels as the model's
    ``baseline_reference`` records them; the file's own labels for a model saved without it), then per length
    bucket. A class the model was not trained on is an error naming file and line, or with ``drop_unseen`` the row
    is left out and counted (``test_rows_left_out``)."""
    from pbp.finetune.data import load_split
    from pbp.finetune.export import load_finetuned

    model, task, meta = load_finetuned(model_dir)
    dropped: dict[str, int] | None = {} if drop_unseen else None
    split, _ = load_split(url, task.kind, task.classes, seq_column or task.seq_column, label_column or task.label_column,
                          max_rows, dropped)  # fmt: skip
    preds = predict_split(model, split)
    flat = task.spec.flattened()
    left_out = {"test_rows_left_out": float(dropped.get("test", 0))} if dropped is not None else {}
    return {**score(flat, preds, "test", baseline_labels(meta)), **left_out,
            **by_length(flat, preds, split.lengths(), buckets)}  # fmt: skip


def baseline_labels(meta: dict[str, Any]) -> np.ndarray | None:
    """A saved model's ``baseline_reference`` (``pbp.train.metrics.baseline_reference``) as the training labels
    :func:`score` takes its baselines' constant from; None for a model saved without it (the scored labels then)."""
    ref = meta.get("baseline_reference")
    return np.asarray(ref, dtype=np.float64) if ref else None

"""Quality metrics beside their trivial baselines, and training throughput bookkeeping.

Used by ``pbp evaluate`` (pretraining) and by fine-tuning. numpy and torch only: no Ray or MLflow here.

A figure means little without the score of a model that learned nothing, computed on the same set:
  numeric      ``spearman`` (baseline 0.0: a constant predictor has no rank correlation) and ``mse`` (baseline:
               predict the mean label of the training set);
  binary       ``roc_auc`` (baseline 0.5: a constant score ties every pair) and ``accuracy`` at logit 0 (baseline:
               predict the training set's majority class);
  categorical  ``accuracy`` (baseline: the majority class).
Residue kinds score every labelled residue (positions labelled ``IGNORE_INDEX`` are left out), as one set.

Shapes: N items (proteins or residues), T columns (e.g. GO terms).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch

from pbp.model.finetune import IGNORE_INDEX, TaskKind, TaskSpec

BASELINE_SUFFIX = "_baseline"
"""A metric ``m``'s trivial baseline is reported as ``m_baseline``."""
WORKER_STARTED, WORKER_SECONDS = "worker_started_at", "worker_seconds"
"""In every fine-tuning report: when the worker started (wall clock) and the seconds since (a campaign's cost)."""

_PROBABILITY_KINDS = (TaskKind.BINARY, TaskKind.RESIDUE_BINARY)


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), 1-based; vectorised."""
    n = len(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.r_[True, xs[1:] != xs[:-1]] if n else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], n] - 1
    group = np.cumsum(new_group) - 1
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ((starts + ends) / 2.0 + 1.0)[group]
    return ranks


def spearman(pred: np.ndarray, target: np.ndarray) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when either side is constant."""
    rp, rt = _rank(np.asarray(pred, dtype=np.float64)), _rank(np.asarray(target, dtype=np.float64))
    rp, rt = rp - rp.mean(), rt - rt.mean()
    denom = np.sqrt((rp**2).sum() * (rt**2).sum())
    return float((rp * rt).sum() / denom) if denom > 0 else float("nan")


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Mann-Whitney form of ROC-AUC (ties count one half); NaN when only one class is present."""
    score, label = np.asarray(score, dtype=np.float64), np.asarray(label).astype(bool)
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rank(score)
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc_macro(scores_NT: np.ndarray, labels_NT: np.ndarray) -> float:
    """Mean over columns of the per-column ROC-AUC, skipping columns with one class only; NaN if none has both."""
    scores_NT, labels_NT = np.asarray(scores_NT, dtype=np.float64), np.asarray(labels_NT).astype(bool)
    if scores_NT.shape != labels_NT.shape or scores_NT.ndim != 2:
        raise ValueError(f"need two (N, T) arrays, got scores {scores_NT.shape} and labels {labels_NT.shape}")
    n_pos_T = labels_NT.sum(0)
    both_T = np.flatnonzero((n_pos_T > 0) & (n_pos_T < len(labels_NT)))
    if not len(both_T):
        return float("nan")
    return float(np.mean([roc_auc(scores_NT[:, t], labels_NT[:, t]) for t in both_T]))


def accuracy(pred_class: np.ndarray, label: np.ndarray) -> float:
    pred_class, label = np.asarray(pred_class), np.asarray(label)
    return float((pred_class == label).mean()) if len(label) else float("nan")


def _flat_labelled(task: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """-> (logits, labels) as numpy over the scored items: every protein, or every residue not ``IGNORE_INDEX``."""
    logits, labels = logits.detach().float().cpu(), labels.detach().cpu()
    if task.kind.per_residue:
        valid = labels != IGNORE_INDEX
        logits, labels = logits[valid], labels[valid]
    return logits.numpy(), labels.numpy()


def task_metric(task: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The task's headline metric (``task.kind.metric_name``: Spearman, ROC-AUC or accuracy) over a whole set."""
    logits_np, labels_np = _flat_labelled(task, logits, labels)
    if task.kind is TaskKind.NUMERIC:
        return spearman(logits_np, labels_np)
    if task.kind in _PROBABILITY_KINDS:
        return roc_auc(logits_np, labels_np)
    return accuracy(logits_np.argmax(-1), labels_np)


def _majority(labels: np.ndarray) -> float:
    """The most frequent label (the smallest one on a tie); NaN for no labels."""
    values, counts = np.unique(labels, return_counts=True)
    return float(values[counts.argmax()]) if len(values) else math.nan


def baseline_reference(task: TaskSpec, train_labels: np.ndarray) -> list[float]:
    """What the trivial baselines take from the training labels, as a one-element stand-in for them (the mean for a
    numeric task, else the majority class): saved with a model, so that scoring it on a file later uses the same
    constant as its training run did, not the file's own labels."""
    ref = _labelled(task, np.asarray(train_labels))
    return [_constant(task, ref)] if ref.size else []


def _labelled(task: TaskSpec, labels: np.ndarray) -> np.ndarray:
    """``labels`` without a per-residue task's unlabelled positions."""
    return labels[labels != IGNORE_INDEX] if task.kind.per_residue else labels


def _constant(task: TaskSpec, ref: np.ndarray) -> float:
    """The trivial baselines' constant: the mean of ``ref`` for a numeric task, else its majority class (NaN for
    none)."""
    if task.kind is TaskKind.NUMERIC:
        return float(ref.astype(np.float64).mean()) if ref.size else math.nan
    return _majority(ref.astype(np.int64))


def task_metrics(
    task: TaskSpec,
    logits: torch.Tensor,
    labels: torch.Tensor,
    train_labels: torch.Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """The headline metric and the task's other figures, each beside its trivial baseline (module docstring).

    ``train_labels``: the training set's labels (same layout as ``labels``), from which the mean and majority-class
    baselines take their constant; without them the evaluated labels are used (a slightly optimistic baseline).
    """
    logits_np, labels_np = _flat_labelled(task, logits, labels)
    ref = labels_np if train_labels is None else np.asarray(torch.as_tensor(train_labels).detach().cpu())
    constant = _constant(task, ref if train_labels is None else _labelled(task, ref))
    if task.kind is TaskKind.NUMERIC:
        pred, target = logits_np.astype(np.float64), labels_np.astype(np.float64)
        return {
            "spearman": spearman(pred, target),
            "spearman_baseline": 0.0,  # a constant has no rank correlation (its rho is undefined; 0 by convention)
            "mse": float(((pred - target) ** 2).mean()) if target.size else math.nan,
            "mse_baseline": float(((constant - target) ** 2).mean()) if target.size else math.nan,
        }
    if task.kind in _PROBABILITY_KINDS:
        target = labels_np.astype(np.int64)
        return {
            "roc_auc": roc_auc(logits_np, target),
            "roc_auc_baseline": roc_auc(np.zeros_like(logits_np), target),  # 0.5 (NaN with one class, as roc_auc)
            "accuracy": accuracy((logits_np > 0).astype(np.int64), target),
            "accuracy_baseline": accuracy(np.full(len(target), constant), target),
        }
    target = labels_np.astype(np.int64)
    return {
        "accuracy": accuracy(logits_np.argmax(-1), target),
        "accuracy_baseline": accuracy(np.full(len(target), constant), target),
    }


def baseline_table(metrics: Mapping[str, float]) -> str:
    """``metric  model  baseline`` rows: each figure beside its ``_baseline`` (``-`` where it has none)."""
    rows = [("metric", "model", "baseline")]
    for name, value in metrics.items():
        if name.endswith(BASELINE_SUFFIX) and name[: -len(BASELINE_SUFFIX)] in metrics:
            continue
        base = metrics.get(name + BASELINE_SUFFIX)
        rows.append((name, _figure(value), "-" if base is None else _figure(base)))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{n:{width}}  {m:>10}  {b:>10}" for n, m, b in rows)


def _figure(value: float) -> str:
    """A count (an ``int``, e.g. ``proteins``) as such, any other figure to 4 decimals."""
    return str(value) if isinstance(value, int) else f"{value:.4f}"


class ThroughputWindow:
    """Tokens, samples and data-loader wait since the last ``reset()``, turned into rates per second of wall time.

    ``clock`` (seconds, monotonic) is injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.t0, self.tokens, self.samples, self.wait_s = self._clock(), 0, 0, 0.0

    def add(self, tokens: int, samples: int, wait_s: float) -> None:
        self.tokens += tokens
        self.samples += samples
        self.wait_s += wait_s

    def rates(self) -> dict[str, float]:
        elapsed = self._clock() - self.t0
        return {
            "tokens_per_s": self.tokens / elapsed,
            "samples_per_s": self.samples / elapsed,
            "data_wait_fraction": self.wait_s / elapsed,
        }


def progress_line(run: str, done: int, total: int, metrics: Mapping[str, float], rates: Mapping[str, float],
                  steps_per_s: float) -> str:  # fmt: skip
    """One human line per logging step: ``[run] step 150/200: loss 0.4723 (token 0.2706, annotation 0.2017),
    1,234 tokens/s, data wait 3%, ETA 0:00:35``."""
    eta = (total - done) / steps_per_s if steps_per_s > 0 else math.nan
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) and eta < 86400 else "?"
    return (f"[{run}] step {done}/{total}: loss {metrics.get('loss', math.nan):.4f} (token "
            f"{metrics.get('token_loss', math.nan):.4f}, annotation {metrics.get('annotation_loss', math.nan):.4f}), "
            f"{rates.get('tokens_per_s', 0):,.0f} tokens/s, data wait {rates.get('data_wait_fraction', 0):.0%}, "
            f"ETA {eta_text}")  # fmt: skip

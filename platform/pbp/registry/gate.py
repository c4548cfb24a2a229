"""The promotion gate: a candidate and the current champion scored on the same test split, by its digest.

The score of a version is its headline test metric (``test_<kind.metric_name>``: Spearman, ROC-AUC or accuracy;
higher is better for each). A logged score counts only if it was computed on the reference split (same file
sha256, same row limit); otherwise the version is re-scored on that split now, after checking that the file at the
recorded path still has the recorded digest. The reference split is the champion's (a first promotion: the
candidate's own).

A candidate must also beat its headline metric's trivial baseline on that split (``test_<metric>_baseline``: a
constant prediction's Spearman 0, a constant score's ROC-AUC 0.5, a majority-class prediction's accuracy with the train
split's majority class, which the model records (``baseline_reference``) so that a re-scored version's baseline is
the same constant; a model saved without it is re-scored with that split's own majority), also as the first champion: a model no better than predicting a constant is refused
(``--force --reason`` to override)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pbp.registry.lineage import SplitRef
from pbp.registry.server import RegistryError


@dataclass
class Verdict:
    ok: bool
    why: str
    metric: str = ""
    candidate_value: float = math.nan
    champion_value: float = math.nan
    split: SplitRef | None = None
    candidate_source: str = ""
    """logged | recomputed"""
    advice: str = ""
    """What the user can do about a refusal (shown with it, not part of the audited reason)."""


def headline(tags: dict[str, str]) -> str:
    from pbp.model.finetune import TaskKind

    return f"test_{TaskKind(tags['pbp.task.kind']).metric_name}"


def task_mismatch(cand: dict[str, str], champ: dict[str, str]) -> str:
    """Why two versions are not for the same task ('' when they are)."""
    for key, what in (("pbp.kind", "model kind"), ("pbp.task.kind", "task kind"), ("pbp.task.name", "task"),
                      ("pbp.task.classes", "label set")):  # fmt: skip
        a, b = cand.get(key, ""), champ.get(key, "")
        if a and b and a != b:
            return f"another {what}: candidate {a!r}, champion {b!r}"
        if key != "pbp.task.name" and a != b:
            return f"another {what}: candidate {a or '(none)'!r}, champion {b or '(none)'!r}"
    return ""


def decide(name: str, cand: Any, champ: Any | None, tolerance: float) -> Verdict:
    """``cand``/``champ``: MLflow ModelVersion objects. Refusals come back as a Verdict (to be audited)."""
    ct = dict(cand.tags)
    if ct.get("pbp.kind") != "finetuned" or "pbp.task.kind" not in ct:
        return Verdict(False, f"version {cand.version} is a {ct.get('pbp.kind', 'non-pbp')} model with no task test "
                              "metric to gate on", advice="promote it with --force --reason")  # fmt: skip
    metric = headline(ct)
    ht = dict(champ.tags) if champ is not None else {}
    if champ is not None and (why := task_mismatch(ct, ht)):
        return Verdict(False, f"version {cand.version} is for {why}", metric)
    ref = SplitRef.from_tags(ht if champ is not None else ct) or SplitRef.from_tags(ct)
    if ref is None:
        return Verdict(False, f"version {cand.version}: no test split recorded, so no {metric} to compare "
                              "(register it with --test FILE)", metric)  # fmt: skip
    cv, cb, source = score(name, cand, metric, ref)
    if math.isnan(cv):
        return Verdict(False, f"version {cand.version}: {metric} is missing or NaN on the test split", metric, cv,
                       split=ref)  # fmt: skip
    hv = score(name, champ, metric, ref)[0] if champ is not None else math.nan
    # its logged figure was on another split (another file or row limit)
    rescored = (
        f"; the candidate re-scored on the champion's test split, {ref.describe()}" if source == "recomputed" else ""
    )
    if not math.isnan(cb) and cv <= cb:  # never a champion that a constant or majority-class predictor matches
        return Verdict(False, f"{metric} {cv:.4f} is not above its trivial baseline's {cb:.4f} on the test split "
                              f"({BASELINES.get(metric, 'a trivial predictor')}){rescored}", metric, cv, hv, ref, source)  # fmt: skip
    if champ is None:
        return Verdict(True, f"first champion ({metric} {cv:.4f}, trivial baseline {cb:.4f})", metric, cv, split=ref,
                       candidate_source=source)  # fmt: skip
    ok = math.isnan(hv) or cv >= hv - tolerance
    cmp = ">=" if ok else "<"
    why = f"{metric} {cv:.4f} {cmp} champion v{champ.version}'s {hv:.4f} - tolerance {tolerance:g}{rescored}"
    return Verdict(ok, why, metric, cv, hv, ref, source)


BASELINES = {
    "test_spearman": "a constant prediction",
    "test_roc_auc": "a constant score",
    "test_accuracy": "a majority-class prediction",
}
"""What each headline metric's trivial baseline (``<metric>_baseline``, pbp.train.metrics) predicts."""


def score(name: str, mv: Any, metric: str, ref: SplitRef) -> tuple[float, float, str]:
    """-> (the version's ``metric`` on the split ``ref``, that metric's trivial baseline there (NaN when none was
    recorded), 'logged' | 'recomputed')."""
    from pbp.train.metrics import BASELINE_SUFFIX

    tags = dict(mv.tags)
    if tags.get("pbp.metric.split") == ref.key and f"pbp.metric.{metric}" in tags:
        baseline = float(tags.get(f"pbp.metric.{metric}{BASELINE_SUFFIX}", "nan"))
        return float(tags[f"pbp.metric.{metric}"]), baseline, "logged"
    from pbp.finetune.export import find_model_dir, load_finetuned
    from pbp.train.artifacts import model_files

    uri = f"models:/{name}/{mv.version}"
    with model_files(uri) as d:
        model, task, meta = load_finetuned(find_model_dir(d, uri))
    got = evaluate(model, task, ref, meta)
    return got.get(metric, math.nan), got.get(f"{metric}{BASELINE_SUFFIX}", math.nan), "recomputed"


def evaluate(model: Any, task: Any, ref: SplitRef, meta: dict[str, Any] | None = None) -> dict[str, float]:
    """A fine-tuned model's test metrics on the split ``ref`` (its file checked against the recorded digest), the
    baselines' constant from the training labels its metadata ``meta`` records (else the split's)."""
    from pbp.finetune.data import TaskFileNotFoundError, load_split
    from pbp.finetune.scoring import baseline_labels, predict_split, score

    try:
        split, sha = load_split(ref.path, task.kind, task.classes, ref.seq_column, ref.label_column, ref.max_rows)
    except TaskFileNotFoundError as e:
        raise RegistryError(f"the gate's test split {ref.describe()} cannot be read here ({e}); "
                            f"{_why_missing(ref.path)}. Else promote with --force --reason (recorded in the audit "
                            "trail)") from None  # fmt: skip
    if ref.sha256 and sha != ref.sha256:
        raise RegistryError(f"test split {ref.path}: its sha256 is now {sha[:12]}..., the registry recorded "
                            f"{ref.sha256[:12]}...: the file changed, so scores on it are not comparable")  # fmt: skip
    return score(task.spec.flattened(), predict_split(model, split), "test", baseline_labels(meta or {}))


def _why_missing(path: str) -> str:
    """Why a recorded test split may not be here, and what to do about it (for the gate's message)."""
    if not path:
        return "its version records no path: register it again with --test FILE"
    if path.startswith("s3://"):
        return "the object is gone from storage: put the same file back there"
    if "/runtime_resources/working_dir_files/" in path:  # Ray's copy of a submitted job's project, on its node
        return (
            "a job on a cluster recorded its node's copy of a local task file: give jobs their test file in "
            "s3://, or promote where that path holds the same file"
        )
    return "moved or deleted: put the same file back at that path"

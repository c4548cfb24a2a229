"""pbp's own metrics, exported through Ray's metrics API (``ray.util.metrics``): every Ray node's metrics agent
serves them beside Ray's own, Prometheus scrapes them (``pbp stack up`` runs one; KubeRay setups scrape the same
agents), and ``dashboards/`` charts them. Ray prefixes custom metrics with ``ray_``: ``pbp_train_tokens_per_second``
is queried as ``ray_pbp_train_tokens_per_second``.

    training    (``kind`` = pretrain | finetune, ``run``; not ``job``, which Prometheus sets itself)  tokens/s, samples/s, step seconds, data-wait fraction, loss,
                skipped steps (gauges, set at every logging step by rank 0); checkpoint save seconds (gauge) and
                checkpoints saved (counter); shard bytes read (counter, every rank)
    campaigns   (``campaign``)  trials by state: running, completed, pruned, failed (gauge, tag ``state``); the best
                metric so far (gauge, tag ``metric``)
    registry    (``model``, ``event`` = promoted | refused | rolled_back)  decisions (counter)

Which figures these are is decided where they are computed (``pbp.train.metrics``, the campaign's progress
reporter, the registry's gate); this module only forwards them. Every call is a no-op outside a Ray process
(unit tests, a CLI that is not a Ray driver) and never raises: metrics must not break a run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("pbp.telemetry")

# name -> (kind, description, tag keys)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pbp_train_tokens_per_second": ("gauge", "Training tokens (non-pad) per second, all ranks", ("kind", "run")),
    "pbp_train_samples_per_second": ("gauge", "Training sequences per second, all ranks", ("kind", "run")),
    "pbp_train_step_seconds": ("gauge", "Wall seconds per optimizer step (mean over the last window)", ("kind", "run")),
    "pbp_train_data_wait_fraction": ("gauge", "Share of wall time waiting for the data loader", ("kind", "run")),
    "pbp_train_loss": ("gauge", "Training loss at the last logging step", ("kind", "run")),
    "pbp_train_skipped_steps": ("gauge", "Steps skipped for a non-finite loss, so far", ("kind", "run")),
    "pbp_train_step": ("gauge", "Steps (pretraining) or epochs (fine-tuning) done", ("kind", "run")),
    "pbp_checkpoint_save_seconds": ("gauge", "Seconds the last checkpoint took to save and commit", ("kind", "run")),
    "pbp_checkpoints_saved": ("counter", "Complete checkpoints saved", ("kind", "run")),
    "pbp_data_bytes_read": ("counter", "Shard bytes read from storage", ("kind", "run")),
    "pbp_tune_trials": ("gauge", "Trials of a campaign by state", ("campaign", "state")),
    "pbp_tune_best_metric": ("gauge", "The campaign's best validation metric so far", ("campaign", "metric")),
    "pbp_registry_events": ("counter", "Registry decisions", ("model", "event")),
}

_made: dict[str, Any] = {}
_warned = False


def _active() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except Exception:  # ray missing or half-initialised
        return False


def _metric(name: str):
    if name not in _made:
        from ray.util import metrics

        kind, description, tags = METRICS[name]
        cls = {"gauge": metrics.Gauge, "counter": metrics.Counter}[kind]
        _made[name] = cls(name, description=description, tag_keys=tags)
    return _made[name]


def _send(name: str, value: float, tags: Mapping[str, str]) -> None:
    global _warned
    if not _active():
        return
    try:
        m = _metric(name)
        if METRICS[name][0] == "counter":
            if value > 0:
                m.inc(float(value), tags=dict(tags))
        else:
            m.set(float(value), tags=dict(tags))
    except Exception as e:  # never let metrics break a run
        if not _warned:
            _warned = True
            log.warning("metrics export failed (%s: %s); training goes on without it", type(e).__name__, e)


def training(job: str, run: str, step: int, metrics: Mapping[str, float], rates: Mapping[str, float],
             step_seconds: float, skipped: int) -> None:  # fmt: skip
    """Rank 0 at a logging step: the window's rates and the step's loss."""
    tags = {"kind": job, "run": run}
    for key, name in (("tokens_per_s", "pbp_train_tokens_per_second"), ("samples_per_s", "pbp_train_samples_per_second"),
                      ("data_wait_fraction", "pbp_train_data_wait_fraction")):  # fmt: skip
        if key in rates:  # fine-tuning counts samples, not tokens
            _send(name, rates[key], tags)
    _send("pbp_train_step_seconds", step_seconds, tags)
    _send("pbp_train_step", step, tags)
    _send("pbp_train_skipped_steps", skipped, tags)
    if "loss" in metrics and metrics["loss"] == metrics["loss"]:  # not NaN
        _send("pbp_train_loss", metrics["loss"], tags)


def checkpoint_saved(job: str, run: str, seconds: float) -> None:
    tags = {"kind": job, "run": run}
    _send("pbp_checkpoint_save_seconds", seconds, tags)
    _send("pbp_checkpoints_saved", 1, tags)


def bytes_read(job: str, run: str, n: int) -> None:
    _send("pbp_data_bytes_read", n, {"kind": job, "run": run})


def campaign(name: str, states: Mapping[str, int], metric: str, best: float | None) -> None:
    """The campaign driver, whenever a trial changes state or reports."""
    for state in ("running", "completed", "pruned", "failed"):
        _send("pbp_tune_trials", states.get(state, 0), {"campaign": name, "state": state})
    if best is not None and best == best:
        _send("pbp_tune_best_metric", best, {"campaign": name, "metric": metric})


def registry_event(model: str, event: str) -> None:
    _send("pbp_registry_events", 1, {"model": model, "event": event})

"""``TuneConfig``: the one typed config of a search campaign (YAML + dotted overrides, see ``pbp.config``).

The search space is YAML over any fine-tuning config field by dotted key (list items by index)::

    space:
      stages.0.lr:   {type: loguniform, low: 1.0e-3, high: 1.0e-1}
      head_dropout:  {type: uniform, low: 0.0, high: 0.6}
      stages.1.batch_size: {type: choice, values: [16, 32]}
      stages.1.max_epochs: {type: int, low: 2, high: 6}

Every key is checked against the fine-tuning config (with the range's end points applied) before any trial starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pbp.config import check_seed
from pbp.names import check_name

TPE_STARTUP_TRIALS = 4
"""Random trials before TPE models the space (the campaign's searcher; ``pbp bench tune`` compares against it)."""


@dataclass
class ParamSpec:
    type: Literal["loguniform", "uniform", "int", "choice"] = "uniform"
    low: float = 0.0
    high: float = 1.0
    values: list[Any] = field(default_factory=list)
    """choice: the values (numbers or strings)."""
    log: bool = False
    """int: sample on a log scale."""

    def __post_init__(self) -> None:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice parameter needs a non-empty 'values' list")
            return
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"{self.type}: needs finite low < high, got low={self.low}, high={self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform: low must be > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int: low and high must be integers, got {self.low}, {self.high}")

    def end_points(self) -> list[Any]:
        if self.type == "choice":
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


@dataclass
class AshaConfig:
    enabled: bool = True
    grace_period: int = 1
    """Epochs every trial gets before it can be stopped."""
    reduction_factor: float = 2.0
    max_t: int = 0
    """Epochs of a full trial (0: the fine-tuning config's total max_epochs over its stages)."""

    def __post_init__(self) -> None:
        if self.grace_period < 1 or self.reduction_factor <= 1 or self.max_t < 0:
            raise ValueError("asha: grace_period >= 1, reduction_factor > 1 and max_t >= 0 are required")


@dataclass
class StopConfig:
    target: float | None = None
    """Stop the campaign once a trial's metric reaches this value (>= for mode max, <= for min)."""
    patience_trials: int = 0
    """Stop once this many finished trials in a row did not improve on the best (0: never)."""
    time_budget_s: float = 0.0
    """Wall-clock budget of the campaign in seconds (0: none); running trials are stopped at the end of it."""

    def __post_init__(self) -> None:
        if self.patience_trials < 0 or self.time_budget_s < 0:
            raise ValueError("stop.patience_trials and stop.time_budget_s must be >= 0")
        if self.target is not None and not math.isfinite(self.target):
            raise ValueError(f"stop.target must be finite, got {self.target}")


DEFAULT_SLOT_WAIT_S = 24 * 3600.0


@dataclass
class TuneConfig:
    name: str = "campaign"
    """Names the campaign: its state in storage, its MLflow parent run; `pbp tune --resume NAME` continues it."""
    seed: int = 0
    finetune: str = "configs/finetune/tiny.yaml"
    """The fine-tuning config every trial starts from."""
    finetune_overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied to it before the sampled values (e.g. task.max_rows=300)."""
    space: dict[str, ParamSpec] = field(default_factory=dict)
    metric: str = ""
    """The objective reported by every epoch (default: valid_<the task's headline metric>, e.g. valid_spearman)."""
    mode: Literal["max", "min", ""] = ""
    """Default: max for spearman / roc_auc / accuracy, min for a loss."""
    num_samples: int = 8
    max_concurrent_trials: int = 2
    cpus_per_trial_worker: float = 1.0
    trial_workers: int = 1
    """Ray Train workers per trial (scaling.num_workers of each trial's fine-tuning)."""
    use_gpu: bool = False
    max_failures: int = 2
    """Retries of a failed trial, each from its newest complete checkpoint."""
    slot_wait_s: float = 0.0
    """How long a trial waits for room for its workers (its fine-tuning's ``scaling.resource_wait_s``): the trials
    before it may hold the cluster (``max_concurrent_trials`` above what the nodes hold) or nodes may be joining (an
    autoscaler). 0: the campaign's ``stop.time_budget_s``, else 24 hours. A fine-tuning run's own wait (300 s on the
    local stack) failed every trial that waited longer for a sibling to end."""
    asha: AshaConfig = field(default_factory=AshaConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    storage_path: str = ""
    """Where campaigns live (s3://bucket/prefix or a directory); empty: s3://<runs bucket of the local stack>/tune."""
    experiment: str = "pbp-tune"
    """MLflow experiment of the parent run and of every trial's child run."""
    report_dir: str = "build/tune"
    """The report is written to <report_dir>/<name>/ locally (and logged to the parent run)."""

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_name(self.experiment, "experiment")
        check_seed(self.seed)  # the TPE sampler's RandomState takes 0 .. 2**32 - 1
        if not self.space:
            raise ValueError("space is empty: give at least one fine-tuning field to search")
        if self.num_samples < 1 or self.max_concurrent_trials < 1 or self.trial_workers < 1:
            raise ValueError("num_samples, max_concurrent_trials and trial_workers must be >= 1")
        if self.cpus_per_trial_worker <= 0 or self.max_failures < 0:
            raise ValueError("cpus_per_trial_worker must be > 0 and max_failures >= 0")
        if not (self.slot_wait_s == 0 or 1 <= self.slot_wait_s < math.inf):
            raise ValueError(
                f"slot_wait_s must be 0 (the time budget, else 24 h) or >= 1 second, got {self.slot_wait_s}"
            )
        for key in self.space:
            if not key or any(not part for part in key.split(".")):
                raise ValueError(f"space: {key!r} is not a dotted fine-tuning key")

    def trial_resource_wait(self) -> float:
        """Seconds a trial waits for room for its workers (``slot_wait_s``, resolved)."""
        return max(1.0, self.slot_wait_s or self.stop.time_budget_s or DEFAULT_SLOT_WAIT_S)

    def resolved_mode(self, metric: str) -> str:
        if self.mode:
            return self.mode
        return "min" if metric.endswith(("loss", "mse")) else "max"


def resume_storage(config_given: bool, warm_start: str | None, overrides: Sequence[str]) -> str:
    """``--resume NAME`` (``pbp tune`` and ``pbp submit tune``) takes the campaign's saved config: no ``--config``,
    ``--warm-start`` or overrides but ``storage_path=...`` (where it lives, if not the default). -> that path ('')."""
    storage = [o for o in overrides if o.startswith("storage_path=")]
    if config_given or warm_start or len(storage) != len(overrides):
        raise ValueError("--resume NAME takes the campaign's saved config: no --config, --warm-start or overrides "
                         "other than storage_path=... (where the campaign lives, if not the default)")  # fmt: skip
    return storage[-1].partition("=")[2] if storage else ""

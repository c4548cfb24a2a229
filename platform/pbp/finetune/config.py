"""``FinetuneConfig``: the one typed config of a fine-tuning job (YAML + dotted overrides, see ``pbp.config``).

The default schedule is the original's (``proteinbert/finetuning.py`` + the paper's benchmarks):
  stage 1  body frozen, Adam lr 1e-2, up to 40 epochs, seq_len 512, batch 32
  stage 2  body unfrozen,   lr 1e-4, up to 40 epochs, seq_len 512, batch 32
  stage 3  one final epoch at seq_len 1024, lr 1e-5, batch 16
each with reduce-on-plateau (patience 1, factor 0.25, min 1e-5) and early stopping (patience 2) on the validation
loss; the best weights of a stage are restored at its end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pbp.config import check_seed
from pbp.model.config import ModelConfig
from pbp.model.finetune import TaskKind
from pbp.names import check_name
from pbp.train.config import ScalingConfig


def _positive(section: str, **values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{section}.{name} must be a finite number > 0, got {v!r}")


@dataclass
class TaskConfig:
    kind: TaskKind = TaskKind.NUMERIC
    """numeric | binary | categorical | residue_binary | residue_categorical."""
    name: str = ""
    """What the task is called in the registry (models for different tasks are never compared); empty: the
    training file's name up to its first dot (``stability.train.csv`` -> ``stability``)."""
    train: str = ""
    """CSV file with a header (local path or s3://)."""
    valid: str = ""
    """Optional; empty: a seeded split of train (``valid_fraction`` of its rows, by a hash of row and seed)."""
    test: str = ""
    """Optional; evaluated once at the end, overall and per length bucket."""
    seq_column: str = "seq"
    label_column: str = "label"
    positive_label: str = ""
    """binary: the label that means 1 when the labels are names (``yes``/``no``, ``stable``/``unstable``): train
    must hold it and one other label; the model predicts its probability. Empty: the labels are 0 and 1."""
    valid_fraction: float = 0.1
    max_rows: int = 0
    """Read at most this many rows of each file (0: all); for smoke runs and tests."""
    unseen_labels: Literal["error", "drop"] = "error"
    """A valid or test row whose class (categorical kinds) does not occur in train: an error naming file and line, or
    ``drop``: the row is left out and counted (a smoke run with ``max_rows`` on a task of many classes)."""

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("task.train is empty: point it at a CSV file with a header")
        self.name = check_name(self.name or self.train.rsplit("/", 1)[-1].split(".")[0] or "task", "task.name")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"task.valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.max_rows < 0:
            raise ValueError(f"task.max_rows must be >= 0, got {self.max_rows}")
        if not self.seq_column or not self.label_column or self.seq_column == self.label_column:
            raise ValueError("task.seq_column and task.label_column must be two different, non-empty names")
        if self.positive_label and self.kind is not TaskKind.BINARY:
            raise ValueError(f"task.positive_label is for task.kind=binary, not {self.kind.value}")


@dataclass
class StageConfig:
    name: str = "stage"
    freeze_body: bool = False
    """Train only the head (the original's first phase); the body's features are then cached (see feature_cache)."""
    lr: float = 1e-4
    max_epochs: int = 40
    seq_len: int = 512
    """Tokens per training sequence, <START>/<END> included."""
    batch_size: int = 32

    def __post_init__(self) -> None:
        check_name(self.name, "stages[].name")
        _positive(f"stages[{self.name}]", lr=self.lr)
        if self.max_epochs < 1 or self.batch_size < 1 or self.seq_len < 8:
            raise ValueError(f"stages[{self.name}]: max_epochs >= 1, batch_size >= 1 and seq_len >= 8 are required")


def _default_stages() -> list[StageConfig]:
    return [
        StageConfig("frozen", freeze_body=True, lr=1e-2, max_epochs=40, seq_len=512, batch_size=32),
        StageConfig("unfrozen", freeze_body=False, lr=1e-4, max_epochs=40, seq_len=512, batch_size=32),
        StageConfig("final-1024", freeze_body=False, lr=1e-5, max_epochs=1, seq_len=1024, batch_size=16),
    ]


@dataclass
class ScheduleConfig:
    plateau_patience: int = 1
    """Epochs without a lower validation loss before the lr is multiplied by plateau_factor."""
    plateau_factor: float = 0.25
    min_lr: float = 1e-5
    early_stopping_patience: int = 2
    """Epochs without a lower validation loss before the stage ends (its best weights are restored)."""
    min_delta: float = 0.0
    """An improvement smaller than this does not count."""

    def __post_init__(self) -> None:
        if self.plateau_patience < 0 or self.early_stopping_patience < 0:
            raise ValueError("schedule.plateau_patience and schedule.early_stopping_patience must be >= 0")
        if not 0.0 < self.plateau_factor < 1.0:
            raise ValueError(f"schedule.plateau_factor must be in (0, 1), got {self.plateau_factor}")
        if not (math.isfinite(self.min_lr) and self.min_lr >= 0) or self.min_delta < 0:
            raise ValueError("schedule.min_lr and schedule.min_delta must be finite and >= 0")


@dataclass
class FeatureCacheConfig:
    enabled: bool = True
    """While the body is frozen its outputs do not change (it has no dropout): compute them once, train the head."""
    max_memory_mb: float = 2048.0
    """Per worker (the workers of one node share one cache where they can). Features are kept in float32, else
    float16, else in a float16 file on local disk, within this; past ``max_disk_mb`` too, they are recomputed every
    epoch (exact either way, up to the float16 rounding)."""
    max_disk_mb: float = 20_000.0

    def __post_init__(self) -> None:
        if self.max_memory_mb < 0 or self.max_disk_mb < 0:
            raise ValueError("feature_cache.max_memory_mb and max_disk_mb must be >= 0")


@dataclass
class FTCheckpointConfig:
    storage_path: str = ""
    """Where runs live (s3://bucket/prefix or a directory); empty: s3://<runs bucket of the local stack>/finetune."""
    keep_last: int = 2

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")


@dataclass
class FTTrackingConfig:
    experiment: str = "pbp-finetune"
    enabled: bool = True

    def __post_init__(self) -> None:
        check_name(self.experiment, "tracking.experiment")


@dataclass
class FinetuneConfig:
    run_name: str = "finetune"
    """Names the run in storage and MLflow; re-running the same name resumes it."""
    seed: int = 0
    init: str = "none"
    """Starting point: 'none' (no pretraining: a fresh body built from ``model``), a pbp model directory (local or
    s3://, e.g. a pretraining run's final_model/ or `pbp model import-keras`'s output), or an MLflow URI
    (runs:/ID/model, models:/NAME@alias) of a pbp model."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Used only with init=none; otherwise the starting point's config is used."""
    task: TaskConfig = field(default_factory=lambda: TaskConfig(train="-"))
    stages: list[StageConfig] = field(default_factory=_default_stages)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    head_dropout: float = 0.5
    too_long: Literal["drop", "crop"] = "drop"
    """Training sequences longer than a stage's seq_len: 'drop' them from that stage (the original's choice;
    counted and logged), or 'crop' a random window (residue labels cropped with it). Evaluation never truncates."""
    eval_batch_tokens: int = 16384
    """Evaluation batches hold up to this many tokens (sequences sorted by length, padded to the longest)."""
    length_buckets: list[int] = field(default_factory=lambda: [512, 1024, 2048])
    """Test metrics are also reported per bucket of sequences of up to this many tokens (and one above the last)."""
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)
    checkpoint: FTCheckpointConfig = field(default_factory=FTCheckpointConfig)
    tracking: FTTrackingConfig = field(default_factory=FTTrackingConfig)
    scaling: ScalingConfig = field(default_factory=lambda: ScalingConfig(num_workers=1))
    """Ray Train workers (one CPU worker by default); worker failures survived by resuming."""

    def __post_init__(self) -> None:
        check_name(self.run_name, "run_name")
        check_seed(self.seed)  # numpy's SeedSequence on every worker refuses a negative one
        if self.task.train == "-":
            raise ValueError("task.train is empty: point it at a CSV file with a header")
        if not self.stages:
            raise ValueError("stages: at least one stage is needed")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: names must be unique, got {names}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout}")
        if self.eval_batch_tokens < 64:
            raise ValueError(f"eval_batch_tokens must be >= 64, got {self.eval_batch_tokens}")
        if sorted(self.length_buckets) != self.length_buckets or any(b < 8 for b in self.length_buckets):
            raise ValueError(f"length_buckets must be increasing token counts >= 8, got {self.length_buckets}")
        if not self.init:
            raise ValueError("init is empty: 'none', a pbp model directory, or an MLflow model URI")

    @property
    def run_url(self) -> str:
        """The run's directory: Ray Train's storage for it and pbp's checkpoints, final model and metrics (one
        value, so the two can never disagree)."""
        if not self.checkpoint.storage_path:
            raise ValueError("checkpoint.storage_path is empty (pbp finetune fills in the stack's runs bucket)")
        return f"{self.checkpoint.storage_path.rstrip('/')}/{self.run_name}"

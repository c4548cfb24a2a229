"""``PretrainConfig``: the one typed config of a pretraining job (YAML + dotted overrides, see ``pbp.config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pbp.config import check_range
from pbp.model.config import ModelConfig
from pbp.model.pretraining import CorruptionConfig, PretrainingLossConfig
from pbp.names import check_name


@dataclass
class DataConfig:
    url: str = ""
    """Dataset URL: s3://bucket/prefix/ (or a directory) holding a manifest.json from `pbp data build`."""
    buckets: list[list[int]] = field(default_factory=lambda: [[128, 128], [512, 64], [1024, 32]])
    """[seq_len, batch_size] per length bucket (the original's episodes)."""
    shuffle_buffer: int = 1000
    num_workers: int = 1
    """DataLoader worker processes per training worker."""
    on_shard_error: Literal["raise", "skip"] = "raise"

    def __post_init__(self) -> None:
        for b in self.buckets:
            if len(b) != 2 or b[0] < 8 or b[1] < 1:
                raise ValueError(f"data.buckets: each entry is [seq_len >= 8, batch_size >= 1], got {b}")
        check_range("data.shuffle_buffer", self.shuffle_buffer, 0)
        check_range("data.num_workers", self.num_workers, 0)


@dataclass
class OptimConfig:
    name: Literal["adamw", "lamb"] = "adamw"
    """AdamW, or LAMB as the original (LAMB needs deepspeed.zero_stage 0: ZeRO flattens the per-layer trust ratio)."""
    lr: float = 2e-4
    """Peak learning rate (the original: 2e-4)."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 100
    """Linear warm-up from 0 to lr."""
    schedule: Literal["constant", "cosine", "plateau"] = "constant"
    """After warm-up: constant; cosine decay to min_lr at max_steps; or reduce-on-plateau (the original)."""
    min_lr: float = 1e-6
    plateau_patience: int = 200
    """plateau: steps without a new best smoothed loss before the lr is multiplied by plateau_factor."""
    plateau_factor: float = 0.5
    grad_clip: float = 1.0
    """Gradient-norm clipping (0 disables)."""
    max_nonfinite_in_a_row: int = 20
    """Steps with a non-finite loss are skipped and counted; this many in a row stops the run."""

    def __post_init__(self) -> None:
        check_range("optim.lr", self.lr, 0, low_open=True)
        check_range("optim.min_lr", self.min_lr, 0, self.lr)
        for i, b in enumerate(self.betas):
            check_range(f"optim.betas[{i}]", b, 0, 1, high_open=True)
        check_range("optim.eps", self.eps, 0, low_open=True)
        check_range("optim.weight_decay", self.weight_decay, 0)
        check_range("optim.warmup_steps", self.warmup_steps, 0)
        check_range("optim.plateau_patience", self.plateau_patience, 1)
        check_range("optim.plateau_factor", self.plateau_factor, 0, 1, low_open=True, high_open=True)
        check_range("optim.grad_clip", self.grad_clip, 0)
        check_range("optim.max_nonfinite_in_a_row", self.max_nonfinite_in_a_row, 1)


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    """ZeRO stage 0-3."""
    bf16: Literal["auto", "true", "false"] = "auto"
    """auto: on where the accelerator supports it (CUDA with bf16); off on CPU."""
    gradient_accumulation_steps: int = 1

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0-3, got {self.zero_stage}")
        check_range("deepspeed.gradient_accumulation_steps", self.gradient_accumulation_steps, 1)


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep_last: int = 3
    """Complete checkpoints kept in storage."""
    storage_path: str = ""
    """Where runs live (s3://bucket/prefix or a directory); empty: s3://<runs bucket of the local stack>/pretrain."""

    def __post_init__(self) -> None:
        check_range("checkpoint.every_steps", self.every_steps, 1)
        check_range("checkpoint.keep_last", self.keep_last, 1)


@dataclass
class TrackingConfig:
    experiment: str = "pbp-pretrain"
    """MLflow experiment name (letters, digits, '.', '_', '-')."""
    log_every: int = 10
    """Log metrics every this many steps (rank 0)."""
    enabled: bool = True

    def __post_init__(self) -> None:
        check_name(self.experiment, "tracking.experiment")
        check_range("tracking.log_every", self.log_every, 1)


@dataclass
class ScalingConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    """Worker or node failures the run survives (resuming from the newest complete checkpoint)."""
    resource_wait_s: float | None = None
    """How long, in all, the run waits for the cluster to have room for its workers (at the start, and after a node
    is lost) before it fails naming the lost nodes; Ray Train alone would wait forever. None: 300 s on the local
    stack, 30 minutes on another cluster, where an autoscaler may be starting nodes (a GPU node from zero, its image
    or packages included, takes minutes: a fixed 300 s failed the first run on infra/'s clusters)."""
    report_poll_s: float = 0.2
    """How often Ray Train's controller polls the workers (health and reported results; Ray's default is 2 s). A
    worker's checkpoint report waits for the previous one to be collected, so with Ray's 2 s every short epoch and
    the run's end waited up to 2 s: a tiny fine-tuning run took twice as long. A poll is one small call per worker."""

    def __post_init__(self) -> None:
        check_range("scaling.num_workers", self.num_workers, 1)
        check_range("scaling.cpus_per_worker", self.cpus_per_worker, 0, low_open=True)
        check_range("scaling.max_failures", self.max_failures, 0)
        if self.resource_wait_s is not None:
            check_range("scaling.resource_wait_s", self.resource_wait_s, 1)
        check_range("scaling.report_poll_s", self.report_poll_s, 0.01, 60)


@dataclass
class PretrainConfig:
    run_name: str = "pretrain"
    """Names the run in storage and MLflow (letters, digits, '.', '_', '-'); re-submitting the same name resumes it."""
    max_steps: int = 1000
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    loss: PretrainingLossConfig = field(default_factory=PretrainingLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def __post_init__(self) -> None:
        check_range("max_steps", self.max_steps, 1)
        check_range("seed", self.seed, 0, 2**63 - 1)  # torch's generators (numpy's need < 2**32: check_seed)
        if self.optim.name == "lamb" and self.deepspeed.zero_stage != 0:
            raise ValueError("optim.name=lamb needs deepspeed.zero_stage=0 (ZeRO partitions break LAMB's trust ratio)")
        check_name(self.run_name, "run_name")

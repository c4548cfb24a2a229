"""The DeepSpeed JSON, generated from the typed config (one source of truth)."""

from __future__ import annotations

import logging
from typing import Any

from pbp.hardware import cpu_bf16_native, cpu_model
from pbp.train.config import PretrainConfig

log = logging.getLogger("pbp.train")


def bf16_enabled(cfg: PretrainConfig, device_type: str) -> bool:
    """auto: CUDA with bf16 only. On a CPU, even one with native bf16, fp32 stays the default (bf16 autocast on CPU
    is opt-in with ``true``, which warns where the CPU would emulate it)."""
    import torch

    if cfg.deepspeed.bf16 == "true":
        if device_type == "cpu" and not cpu_bf16_native():
            log.warning("deepspeed.bf16=true on %s, which has no native bf16: PyTorch emulates it, much slower than "
                        "fp32 (deepspeed.bf16=auto keeps fp32 there)", cpu_model())  # fmt: skip
        return True
    if cfg.deepspeed.bf16 == "false":
        return False
    return device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def deepspeed_config(cfg: PretrainConfig, world_size: int, device_type: str) -> dict[str, Any]:
    """Micro batch = the largest bucket's batch size (buckets vary per step; DeepSpeed only uses it for bookkeeping)."""
    micro = max(b[1] for b in cfg.data.buckets)
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": cfg.deepspeed.gradient_accumulation_steps,
        "train_batch_size": micro * cfg.deepspeed.gradient_accumulation_steps * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": bf16_enabled(cfg, device_type)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed.zero_stage >= 1:
        ds["zero_optimization"].update({"contiguous_gradients": True, "overlap_comm": device_type == "cuda"})
    if cfg.deepspeed.zero_stage == 3:
        ds["zero_optimization"].update({"stage3_gather_16bit_weights_on_model_save": True})
    return ds

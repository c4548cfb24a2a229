"""What this machine can do, for benchmarks and dtype choices: the CPU's native bf16 support, and a description.

On x86, bf16 matmuls are native only with AVX-512 BF16 or AMX-BF16; elsewhere PyTorch emulates them, much slower
than fp32 (measured on an AVX2-only EPYC: a base-model step 27 s in bf16 against 1.9 s in fp32). pbp never
autocasts to bf16 on such a CPU by default, and benchmarks say so instead of timing it silently.
"""

from __future__ import annotations

import os
import platform
from functools import cache

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_native() -> bool:
    """True where bf16 matmuls run natively (x86 AVX-512 BF16 / AMX; Arm's bf16 extension)."""
    flags = cpu_flags()
    return any(f in flags for f in BF16_FLAGS) or "bf16" in flags


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, object]:
    """The machine in a few fields (benchmark reports put it beside their figures)."""
    import torch

    out: dict[str, object] = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": "native" if cpu_bf16_native() else "emulated",
        "avx512": "avx512f" in cpu_flags(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpus"] = torch.cuda.device_count()
    return out

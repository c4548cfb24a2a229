"""Measured matmul peak of this machine, the yardstick for model speed."""

from __future__ import annotations

import time

import torch


def matmul_peak(dtype: torch.dtype, seconds: float = 2.0, device: str = "cpu", sizes: tuple[int, ...] = ()) -> float:
    """Best observed FLOP/s of square matmuls in ``dtype``, over a few sizes, about ``seconds`` in all.

    Taking the best over sizes keeps the yardstick honest: a model's fraction of peak is never inflated by a
    matrix size the BLAS happens to handle badly.
    """
    sizes = sizes or ((1024, 2048) if device == "cpu" else (4096, 8192))
    return max(_matmul_peak_at(dtype, n, seconds / len(sizes), device) for n in sizes)


def _matmul_peak_at(dtype: torch.dtype, n: int, seconds: float, device: str) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    flops = 2.0 * n**3
    for _ in range(2):  # warm-up (thread pools, AMX tiles, cuBLAS handles)
        torch.matmul(a, b, out=c)
    sync(device)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        sync(device)
        best = max(best, reps * flops / (time.perf_counter() - t0))
    return best


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU's has returned already)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()

"""``pbp.train.dist``: the gradient exchange of fine-tuning's data parallelism, on real gloo ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbp.train.dist import DistContext, average_gradients, gradient_buckets, spawn_gloo_ranks

SHAPES = [(3, 4), (5,), (40, 40), (7,), (1000,), (2, 2)]
"""Float32 sizes in bytes: 48, 20, 6400, 28, 4000, 16."""


def _grads(rank: int) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(rank)
    out: list[torch.Tensor | None] = [torch.randn(s, generator=g) for s in SHAPES]
    out[3] = None  # a parameter without a gradient (frozen, or unused this step)
    return out


def _exchange(ctx: DistContext, tmp: str, bucket_bytes: int) -> None:
    params = []
    for shape, grad in zip(SHAPES, _grads(ctx.rank), strict=True):
        p = torch.nn.Parameter(torch.zeros(shape))
        p.grad = grad
        params.append(p)
    average_gradients(params, ctx, bucket_bytes=bucket_bytes)
    np.savez(f"{tmp}/rank{ctx.rank}.npz", *[p.grad.numpy() for p in params if p.grad is not None])


@pytest.mark.parametrize("bucket_bytes", [1, 5000, 2**30])  # every tensor alone; mixed; one bucket
def test_two_ranks_end_with_the_mean_of_their_gradients_whatever_the_buckets(tmp_path, bucket_bytes):
    spawn_gloo_ranks(_exchange, 2, (str(tmp_path), bucket_bytes), str(tmp_path / "pg"))
    want = [(a + b).numpy() / 2 for a, b in zip(_grads(0), _grads(1), strict=True) if a is not None and b is not None]
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert len(got.files) == len(want)
        for i, w in enumerate(want):
            np.testing.assert_allclose(got[f"arr_{i}"], w, rtol=1e-6, atol=1e-7)


def test_buckets_hold_consecutive_gradients_up_to_the_size_and_a_large_one_alone():
    grads = [g for g in _grads(0) if g is not None]  # 48, 20, 6400, 4000, 16 bytes
    sizes = [[g.numel() * 4 for g in b] for b in gradient_buckets(grads, 5000)]
    assert sizes == [[48, 20], [6400], [4000, 16]]
    assert [len(b) for b in gradient_buckets(grads, 2**30)] == [5]
    mixed = [torch.zeros(2), torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    assert [len(b) for b in gradient_buckets(mixed, 2**30)] == [1, 2]  # one dtype per bucket (they are flattened)

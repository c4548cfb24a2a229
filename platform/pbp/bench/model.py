"""``pbp bench model``: forward+backward throughput of ProteinBERT as a fraction of this run's matmul peak."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import torch

from pbp.bench.peak import matmul_peak, sync
from pbp.model import ModelConfig, ProteinBERT
from pbp.model.flops import train_flops
from pbp.model.pretraining import CorruptionConfig, corrupt, pretraining_loss
from pbp.model.tokenizer import AMINO_ACIDS, END_ID, START_ID

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class ModelBenchResult:
    dtype: str
    seq_len: int
    batch_size: int
    steps: int
    seconds_per_step: float
    samples_per_s: float
    tokens_per_s: float
    model_flops_per_s: float
    matmul_peak_flops_per_s: float
    fraction_of_peak: float
    train_flops_per_sample: int


def synthetic_batch(
    cfg: ModelConfig, batch_size: int, seq_len: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-length random protein-like tokens (START, residues, END) and sparse annotations."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, len(AMINO_ACIDS), (batch_size, seq_len), generator=g)
    tokens[:, 0], tokens[:, -1] = START_ID, END_ID
    annotations = (torch.rand(batch_size, cfg.n_annotations, generator=g) < 0.002).float()
    return tokens, annotations


def bench_model(
    cfg: ModelConfig,
    *,
    dtype: str = "fp32",
    seq_len: int = 512,
    batch_size: int = 8,
    min_seconds: float = 10.0,
    min_steps: int = 3,
    warmup_steps: int = 2,
    peak_seconds: float = 2.0,
    compile: bool = False,
    device: str = "cpu",
) -> ModelBenchResult:
    """Time forward + loss + backward steps (no optimizer step) on synthetic full-length batches."""
    torch.manual_seed(0)
    model = ProteinBERT(cfg).to(device).train()
    step_fn = torch.compile(model) if compile else model
    tokens, annotations = synthetic_batch(cfg, batch_size, seq_len)
    batch = corrupt(tokens, annotations, CorruptionConfig(), torch.Generator().manual_seed(1))
    tokens, annotations = tokens.to(device), annotations.to(device)
    inputs = (batch.tokens.to(device), batch.annotations.to(device), batch.pad_mask.to(device))
    autocast = (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
        if dtype == "bf16"
        else contextlib.nullcontext()
    )

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast:
            out = step_fn(inputs[0], inputs[1], pad_mask=inputs[2])
        loss = pretraining_loss(out, tokens, annotations).total
        loss.backward()

    for _ in range(warmup_steps):
        step()
    sync(device)
    steps, t0 = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - t0 < min_seconds:
        step()
        steps += 1
    sync(device)
    elapsed = time.perf_counter() - t0
    peak = matmul_peak(DTYPES[dtype], seconds=peak_seconds, device=device)
    per_sample = train_flops(cfg, seq_len)
    sps = steps * batch_size / elapsed
    return ModelBenchResult(
        dtype=dtype,
        seq_len=seq_len,
        batch_size=batch_size,
        steps=steps,
        seconds_per_step=elapsed / steps,
        samples_per_s=sps,
        tokens_per_s=sps * seq_len,
        model_flops_per_s=sps * per_sample,
        matmul_peak_flops_per_s=peak,
        fraction_of_peak=sps * per_sample / peak,
        train_flops_per_sample=per_sample,
    )


def as_row(r: ModelBenchResult) -> dict[str, object]:
    return asdict(r)

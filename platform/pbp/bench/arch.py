"""``pbp bench arch``: the paper's central claim, measured here. ProteinBERT's training step (its base config)
against a TAPE-sized Transformer encoder (12 layers, hidden 512, 8 heads, FFN 2048, learned positions; ~38M
parameters, as TAPE's) at several sequence lengths: parameters, samples/s and peak memory, as ratios
ProteinBERT / Transformer, both measured in the same run on the same synthetic batches.

Each measurement runs in a fresh Python process, its peak resident memory (VmHWM, reset once model and batch
exist) or peak CUDA allocation its own; the memory figure is the step's peak above the process's footprint then (weights, gradients, activations, temporaries). Both models train on a masked-token loss over every
position (ProteinBERT adds its annotation loss); no optimizer step, as ``pbp bench model``.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pbp.bench.model import synthetic_batch
from pbp.bench.peak import sync
from pbp.model import ModelConfig, ProteinBERT
from pbp.model.pretraining import CorruptionConfig, corrupt, pretraining_loss
from pbp.model.tokenizer import VOCAB_SIZE


@dataclass(frozen=True)
class TransformerConfig:
    """TAPE's Transformer (Rao et al. 2019): 12 layers, hidden 512, 8 heads, FFN 2048."""

    n_layers: int = 12
    d_model: int = 512
    n_heads: int = 8
    d_ffn: int = 2048
    max_len: int = 2048


class Transformer(nn.Module):
    """A BERT-style encoder: token + learned position embeddings, post-norm layers (GELU), a token head.

    (B, L) token ids -> (B, L, VOCAB_SIZE) logits.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB_SIZE, cfg.d_model)
        self.positions = nn.Embedding(cfg.max_len, cfg.d_model)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ffn, dropout=0.0, activation="gelu",
                                           batch_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(cfg.d_model, VOCAB_SIZE)

    def forward(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        pos_L = torch.arange(tokens_BL.shape[1], device=tokens_BL.device)
        return self.head(self.encoder(self.tokens(tokens_BL) + self.positions(pos_L)))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak_rss() -> None:
    """Linux: reset this process' peak RSS (VmHWM), so imports and set-up before the step do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(arch: str, model_cfg: dict, seq_len: int, batch_size: int, steps: int, warmup: int, device: str,
            transformer: dict | None = None) -> dict[str, float]:  # fmt: skip
    """One architecture at one length, in this process: params, samples/s, peak memory of the step (MiB)."""
    torch.manual_seed(0)
    pcfg = ModelConfig(**model_cfg)
    tokens, annotations = synthetic_batch(pcfg, batch_size, seq_len)
    c = corrupt(tokens, annotations, CorruptionConfig(), torch.Generator().manual_seed(1))
    if arch == "proteinbert":
        model: nn.Module = ProteinBERT(pcfg).to(device).train()
        args = (c.tokens.to(device), c.annotations.to(device))
        tokens, annotations = tokens.to(device), annotations.to(device)

        def loss() -> torch.Tensor:
            out = model(*args, pad_mask=c.pad_mask.to(device))
            return pretraining_loss(out, tokens, annotations).total
    else:
        tcfg = TransformerConfig(**{**(transformer or {}), "max_len": max(2048, seq_len)})
        model = Transformer(tcfg).to(device).train()
        x, y = c.tokens.to(device), tokens.to(device)

        def loss() -> torch.Tensor:
            return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss().backward()

    _reset_peak_rss()
    base = _rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    elapsed = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else _peak_rss_mb()) - base
    return {"params": float(n_params(model)), "samples_per_s": steps * batch_size / elapsed, "peak_mib": peak}


@dataclass
class ArchRow:
    seq_len: int
    batch_size: int
    proteinbert: dict[str, float]
    transformer: dict[str, float]
    params_ratio: float
    """ProteinBERT's parameters / the Transformer's."""
    speed_ratio: float
    """ProteinBERT's samples/s / the Transformer's (> 1: ProteinBERT trains faster)."""
    memory_ratio: float
    """ProteinBERT's step peak memory / the Transformer's (< 1: ProteinBERT needs less)."""


def _in_subprocess(arch: str, model_cfg: dict, seq_len: int, batch_size: int, steps: int, warmup: int,
                   device: str, threads: int, transformer: dict) -> dict[str, float]:  # fmt: skip
    spec = json.dumps({"arch": arch, "model_cfg": model_cfg, "seq_len": seq_len, "batch_size": batch_size,
                       "steps": steps, "warmup": warmup, "device": device, "threads": threads,
                       "transformer": transformer})  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "pbp.bench.arch", spec], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"bench arch: {arch} at L={seq_len} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_arch(model_cfg: ModelConfig, seq_lens: tuple[int, ...] = (128, 512, 1024), batch_size: int = 8,
               steps: int = 2, warmup: int = 1, device: str = "cpu", transformer: TransformerConfig | None = None,
               progress=print) -> list[ArchRow]:  # fmt: skip
    """ProteinBERT (``model_cfg``) against the TAPE-sized Transformer (or ``transformer``) at each length, the same
    batch for both."""
    cfg, tcfg = asdict(model_cfg), asdict(transformer or TransformerConfig())
    threads = torch.get_num_threads()
    rows = []
    for L in seq_lens:
        pb = _in_subprocess("proteinbert", cfg, L, batch_size, steps, warmup, device, threads, tcfg)
        tf = _in_subprocess("transformer", cfg, L, batch_size, steps, warmup, device, threads, tcfg)
        row = ArchRow(L, batch_size, pb, tf, pb["params"] / tf["params"], pb["samples_per_s"] / tf["samples_per_s"],
                      pb["peak_mib"] / tf["peak_mib"] if tf["peak_mib"] > 0 else math.nan)  # fmt: skip
        progress(
            f"L={L}: ProteinBERT {pb['samples_per_s']:.2f} samples/s, Transformer {tf['samples_per_s']:.2f}: "
            f"speed x{row.speed_ratio:.2f}, memory x{row.memory_ratio:.2f}, params x{row.params_ratio:.2f}"
        )
        rows.append(row)
    return rows


if __name__ == "__main__":  # one measurement, in a fresh process (called by bench_arch)
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec.pop("threads"))
    print(json.dumps(measure(**spec)))

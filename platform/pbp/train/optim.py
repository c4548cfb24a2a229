"""Optimizers and the learning-rate schedule of pretraining."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from pbp.train.config import OptimConfig


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020), the original ProteinBERT's optimizer: Adam moments, per-tensor trust ratio."""

    def __init__(self, params: Iterable, lr: float = 2e-4, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"], state["m"], state["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                state["step"] += 1
                m, v, t = state["m"], state["v"], state["step"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = (w_norm / u_norm) if w_norm > 0 and u_norm > 0 else torch.ones((), device=p.device)
                p.add_(update, alpha=-group["lr"] * float(trust))
        return loss


def build_optimizer(params: Iterable, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "lamb":
        return Lamb(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


class LRSchedule:
    """Linear warm-up, then constant, cosine to ``min_lr`` at ``max_steps``, or reduce-on-plateau.

    Plateau (the original's schedule): an exponential moving average of the loss (0.98) is compared with its best;
    after ``plateau_patience`` steps without improvement the lr is multiplied by ``plateau_factor`` (not below
    ``min_lr``). The schedule's state is saved in checkpoints.
    """

    def __init__(self, cfg: OptimConfig, max_steps: int) -> None:
        self.cfg, self.max_steps = cfg, max_steps
        self.scale = 1.0
        self.ema: float | None = None
        self.best = math.inf
        self.since_best = 0

    def lr(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.schedule == "cosine":
            span = max(1, self.max_steps - c.warmup_steps)
            frac = min(1.0, (step - c.warmup_steps) / span)
            return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * frac))
        if c.schedule == "plateau":
            return max(c.min_lr, c.lr * self.scale)
        return c.lr

    def observe(self, loss: float) -> None:
        if self.cfg.schedule != "plateau" or not math.isfinite(loss):
            return
        self.ema = loss if self.ema is None else 0.98 * self.ema + 0.02 * loss
        if self.ema < self.best - 1e-4:
            self.best, self.since_best = self.ema, 0
        else:
            self.since_best += 1
            if self.since_best >= self.cfg.plateau_patience:
                self.scale *= self.cfg.plateau_factor
                self.since_best = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "ema": self.ema, "best": self.best, "since_best": self.since_best}

    def load_state_dict(self, d: dict) -> None:
        self.scale, self.ema, self.best, self.since_best = d["scale"], d["ema"], d["best"], d["since_best"]

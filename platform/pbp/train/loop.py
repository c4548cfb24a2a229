"""The pretraining loop run by every Ray Train worker: DeepSpeed engine, streamed shards, checkpoints, tracking.

``train_loop_per_worker(config)`` is importable: Ray Train calls it on each worker (and Ray Tune can wrap it).
It is the shared loop driver (``pbp.train.driver``) over optimizer steps: ``Pretrainer.step`` is one step of the
paper's objective, ``log`` sends the windowed metrics to MLflow (rank 0), ``save`` writes a complete checkpoint
through ``pbp.train.checkpoint.Checkpointer`` (every rank its DeepSpeed shard, rank 0 the commit record).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pbp import telemetry
from pbp.config import from_dict
from pbp.data.episodes import Bucket
from pbp.data.go import vocabulary_terms
from pbp.data.reader import PretrainingStream, ReaderConfig, StatefulLoader
from pbp.data.shards import load_manifest, manifest_digest
from pbp.errors import UserError
from pbp.model import ProteinBERT
from pbp.model.pretraining import PretrainingLoss, pretraining_loss
from pbp.train import checkpoint as ckpt
from pbp.train.checkpoint import Checkpointer, CommitRecord
from pbp.train.config import PretrainConfig
from pbp.train.deepspeed_config import deepspeed_config
from pbp.train.dist import DistContext, all_min, broadcast, quiet_ray_train_reports
from pbp.train.driver import Cadence, Metrics, drive
from pbp.train.metrics import ThroughputWindow, progress_line
from pbp.train.optim import LRSchedule, build_optimizer
from pbp.train.tracking import Tracker, finish_on_error

log = logging.getLogger("pbp.train")

REPORTED = ("loss", "token_loss", "annotation_loss")
"""The metrics reported to Ray Train with each checkpoint."""


class NonFiniteLossError(UserError, RuntimeError):
    """Too many steps in a row with a non-finite loss."""


@dataclass
class NonFiniteSteps:
    """Steps whose loss is not finite on some rank are skipped on every rank; too many in a row stop the run."""

    run_name: str
    limit: int
    total: int = 0
    """Skipped steps over the whole run (kept in the commit record)."""
    in_a_row: int = 0

    def record(self, finite: bool, step: int) -> None:
        if finite:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise NonFiniteLossError(
                f"{self.run_name}: {self.in_a_row} steps in a row with a non-finite loss (last at step {step}); "
                "lower optim.lr, check the data, or raise optim.max_nonfinite_in_a_row"
            )


def _without_nan(metrics: Metrics) -> Metrics:
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}


class Pretrainer:
    """One worker's pretraining state; ``step``, ``log`` and ``save`` are the driver's callbacks."""

    def __init__(self, cfg: PretrainConfig, meta: dict[str, Any], ctx: DistContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.engine, self.device, self.bf16 = _deepspeed_engine(cfg, ctx)
        self.schedule = LRSchedule(cfg.optim, cfg.max_steps)
        self.ckpt = Checkpointer(meta["run_url"], ctx, cfg.checkpoint.keep_last)
        self.nonfinite = NonFiniteSteps(cfg.run_name, cfg.optim.max_nonfinite_in_a_row)
        # Test hook: steps whose loss is made NaN (a fault the real data cannot produce on cue).
        self.inject_nan = frozenset(meta.get("inject_nonfinite_steps") or ())
        self.identity: dict[str, Any] = meta.get("identity", {})
        self.window = ThroughputWindow()
        self.bytes_seen: dict[int, int] = {}
        """Each reader's shard bytes already counted (for the bytes-read metric)."""
        self.first_log: tuple[int, float] | None = None
        self.tracker: Tracker | None = None
        self.run_id: str | None = None
        self.started_at = 0
        """The step this run started from (its restored checkpoint's; 0 for a fresh start)."""
        self.tracking_backlog: list[list[Any]] = []
        """The restored checkpoint's undelivered metrics (``ckpt.TRACKING_BACKLOG``), for rank 0's tracker."""
        self.loader: StatefulLoader | None = None
        self.batches: Iterator[dict[str, Any]] = iter(())

    def restore(self) -> tuple[int, dict[str, Any] | None, str | None]:
        """Load the newest COMPLETE checkpoint (the same on every rank), if any.

        -> (steps done, this rank's reader state when the world size is unchanged, the MLflow run id)."""
        restored = self.ckpt.restore()
        if restored is None:
            return 0, None, None
        with ckpt.load_weights_only(self.engine, restored.local, restored.url):  # never unpickles code
            self.engine.load_checkpoint(str(restored.local), tag=ckpt.DS_TAG, load_optimizer_states=True,
                                        load_lr_scheduler_states=False)  # fmt: skip
        commit = restored.commit
        self.schedule.load_state_dict(commit.schedule)
        self.nonfinite.total = commit.nonfinite_steps
        self.tracking_backlog = restored.tracking_backlog
        restored.cleanup()
        if self.ctx.is_main:
            log.warning("resuming %s from %s (step %d)", self.cfg.run_name, restored.url, commit.step)
        return commit.step, restored.reader_state, commit.mlflow_run_id

    def open_stream(self, reader_state: dict[str, Any] | None) -> None:
        c, ctx = self.cfg, self.ctx
        reader_cfg = ReaderConfig(
            url=c.data.url, split="train", mode="resampled", shuffle_buffer=c.data.shuffle_buffer,
            buckets=tuple(Bucket(s, b) for s, b in c.data.buckets), seed=c.seed, on_shard_error=c.data.on_shard_error,
            corruption=c.corruption,
        )  # fmt: skip
        stream = PretrainingStream(reader_cfg, ctx.rank, ctx.world_size, state=reader_state)
        self.loader = StatefulLoader(stream, c.data.num_workers)
        self.batches = iter(self.loader)
        # Bytes already counted: none on a fresh start, the saved totals on a resume.
        self.bytes_seen = {int(k): int(v.get("bytes_read", 0)) for k, v in (reader_state or {}).items()}

    def step(self, step: int) -> Metrics:
        """One optimizer step: forward, loss, the non-finite check across ranks, backward, update."""
        t0 = time.perf_counter()
        batch = next(self.batches)
        wait = time.perf_counter() - t0
        lr = self.schedule.lr(step)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        loss = self._loss(batch)
        total = loss.total * float("nan") if step in self.inject_nan else loss.total
        finite = bool(all_min(float(torch.isfinite(total.detach()).item()), self.ctx))
        if finite:  # else skipped on every rank: no backward, so no gradient is accumulated
            self.engine.backward(total)
            self.engine.step()
            self.schedule.observe(float(total.item()))
        self.nonfinite.record(finite, step)
        world = self.ctx.world_size
        self.window.add(int(batch["pad_mask"].sum()) * world, len(batch["accessions"]) * world, wait)
        read = int(batch["position"].get("bytes_read", 0))  # every rank counts its own reader's bytes
        telemetry.bytes_read("pretrain", self.cfg.run_name, read - self.bytes_seen.get(batch["reader"], 0))
        self.bytes_seen[batch["reader"]] = read
        return {
            "loss": float(total.item()) if finite else float("nan"),
            "token_loss": float(loss.token_loss.item()),
            "annotation_loss": float(loss.annotation_loss.item()),
            "lr": lr,
            "seq_len": float(batch["seq_len"]),
        }

    def _loss(self, batch: dict[str, Any]) -> PretrainingLoss:
        d = self.device
        with torch.autocast(d.type, dtype=torch.bfloat16, enabled=self.bf16 and d.type == "cpu"):
            out = self.engine(batch["input_tokens"].to(d), batch["input_annotations"].to(d),
                              pad_mask=batch["pad_mask"].to(d))  # fmt: skip
        return pretraining_loss(out, batch["tokens"].to(d), batch["annotations"].to(d), self.cfg.loss)

    def log(self, done: int, metrics: Metrics) -> None:
        """Rank 0: the step's losses with throughput over the window since the last log, to MLflow."""
        if self.tracker is None:
            return
        rates = self.window.rates()
        self.tracker.log_metrics(done, _without_nan({**metrics, **rates, "skipped_steps": float(self.nonfinite.total)}))
        now = time.perf_counter()
        step_s = (now - self.window.t0) / max(1, min(self.cfg.tracking.log_every, done))
        telemetry.training("pretrain", self.cfg.run_name, done, metrics, rates, step_s, self.nonfinite.total)
        if self.first_log is None:  # the ETA's step rate is measured from the first logging window on
            self.first_log = (max(done - self.cfg.tracking.log_every, 0), self.window.t0)
        steps, start = done - self.first_log[0], self.first_log[1]
        print(progress_line(self.cfg.run_name, done, self.cfg.max_steps, metrics, rates,
                            steps / max(now - start, 1e-9)), flush=True)  # fmt: skip
        self.window.reset()

    def save(self, done: int, metrics: Metrics) -> None:
        """Every rank: its DeepSpeed files and reader position; rank 0 also the commit record."""
        assert self.loader is not None

        def write(local: Path, up: ckpt.Upload) -> None:
            with ckpt.upload_as_saved(self.engine, up):  # each file goes up as DeepSpeed writes it
                self.engine.save_checkpoint(str(local), tag=ckpt.DS_TAG)

        commit = CommitRecord(step=done, world_size=self.ctx.world_size, run_name=self.cfg.run_name,
                              mlflow_run_id=self.run_id, schedule=self.schedule.state_dict(),
                              nonfinite_steps=self.nonfinite.total, config=self.identity)  # fmt: skip
        report = _without_nan({"step": done, **{k: metrics[k] for k in REPORTED}})
        t0 = time.perf_counter()
        self.ckpt.save(write, commit, report, self.loader.state_dict(),
                       self.tracker.backlog() if self.tracker else None)  # fmt: skip
        if self.ctx.is_main:
            telemetry.checkpoint_saved("pretrain", self.cfg.run_name, time.perf_counter() - t0)


def _deepspeed_engine(cfg: PretrainConfig, ctx: DistContext) -> tuple[Any, torch.device, bool]:
    """The model and optimizer in a DeepSpeed engine. -> (engine, device, bf16)."""
    use_cuda = cfg.scaling.use_gpu and torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_cuda else "cpu")
    import deepspeed

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo")
    device = torch.device(f"cuda:{ctx.local_rank}" if use_cuda else "cpu")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = ProteinBERT(cfg.model)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    ds_cfg = deepspeed_config(cfg, ctx.world_size, device.type)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg)
    return engine, device, bool(ds_cfg["bf16"]["enabled"])


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's worker function: :func:`run_pretraining` on this worker's rank."""
    quiet_ray_train_reports()
    pt = run_pretraining(from_dict(PretrainConfig, config["cfg"]), config["meta"], DistContext.from_ray())
    if pt.tracker is not None:
        pt.tracker.finish()


def run_pretraining(cfg: PretrainConfig, meta: dict[str, Any], ctx: DistContext) -> Pretrainer:
    """One worker's whole pretraining run (resumed from the newest complete checkpoint, if any), in this process, up
    to ``max_steps`` and the model's export. ``torch.distributed`` is set up by DeepSpeed from the environment (Ray
    Train's, or RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT). The caller finishes the returned tracker."""
    pt = Pretrainer(cfg, meta, ctx)
    start, reader_state, run_id = pt.restore()
    pt.started_at = start
    if ctx.is_main:
        pt.tracker = Tracker(cfg.tracking.experiment, cfg.run_name, run_id, cfg.tracking.enabled,
                             backlog=pt.tracking_backlog)  # fmt: skip
        pt.tracker.log_config(cfg, meta.get("tags", {}))
    pt.run_id = broadcast(pt.tracker.run_id if pt.tracker else None, ctx) or None
    pt.open_stream(reader_state)
    cadence = Cadence(log=cfg.tracking.log_every, save=cfg.checkpoint.every_steps)
    with finish_on_error(pt.tracker):
        drive(start, cfg.max_steps, pt.step, cadence, log=pt.log, save=pt.save)
        _export(pt.engine, cfg, pt.ckpt.run, pt.tracker, ctx)
    return pt


def save_final_model(model: ProteinBERT, out: Path, cfg: PretrainConfig, manifest: dict[str, Any]) -> Path:
    """The exported pretrained model at ``out``: ``model.safetensors``, ``config.json`` and ``go_vocabulary.json``
    (the dataset's GO terms with names, in annotation order, so the annotation outputs can be named)."""
    meta: dict[str, object] = {
        "run_name": cfg.run_name,
        "steps": cfg.max_steps,
        "pbp.dataset_url": cfg.data.url,
        "pbp.dataset_manifest_sha256": manifest_digest(manifest),
    }  # lineage (registry tags)
    return model.save_pretrained(out, metadata=meta, vocabulary=vocabulary_terms(manifest))


def _export(engine, cfg: PretrainConfig, run: ckpt.StorageDir, tracker: Tracker | None, ctx: DistContext) -> None:
    """Framework-neutral final model (safetensors + config JSON + GO vocabulary) in the run dir and as an MLflow
    artifact."""
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=cfg.deepspeed.zero_stage == 3):
        if ctx.is_main:
            model = ProteinBERT(cfg.model)
            model.load_state_dict({k: v.detach().float().cpu() for k, v in engine.module.state_dict().items()})
            local = ckpt.scratch_dir() / "final_model"
            save_final_model(model, local, cfg, load_manifest(cfg.data.url))
            run.put_dir(local, "final_model")
            if tracker is not None:
                tracker.log_model_dir(local)
            shutil.rmtree(local.parent, ignore_errors=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()

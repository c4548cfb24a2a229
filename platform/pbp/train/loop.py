"""The pretraining loop run by every Ray Train worker: DeepSpeed engine, streamed shards, checkpoints, tracking.

``train_loop_per_worker(config)`` is importable: Ray Train calls it on each worker (and Ray Tune can wrap it).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from typing import Any

import torch

from pbp.config import from_dict
from pbp.data.episodes import Bucket
from pbp.data.reader import PretrainingStream, ReaderConfig, StatefulLoader
from pbp.errors import UserError
from pbp.model import ProteinBERT
from pbp.model.pretraining import pretraining_loss
from pbp.train import checkpoint as ckpt
from pbp.train.config import PretrainConfig
from pbp.train.deepspeed_config import deepspeed_config
from pbp.train.dist import DistContext
from pbp.train.metrics import ThroughputWindow
from pbp.train.optim import LRSchedule, build_optimizer
from pbp.train.tracking import Tracker

log = logging.getLogger("pbp.train")


class NonFiniteLossError(UserError, RuntimeError):
    """Too many steps in a row with a non-finite loss."""


def storage_dir(meta: dict[str, Any]) -> ckpt.StorageDir:
    """The run's directory in storage (S3 through pyarrow with an explicit endpoint, or a local path)."""
    from pyarrow import fs as pafs

    from pbp.stack.endpoints import resolve

    url = meta["run_url"]
    if url.startswith("s3://"):
        return ckpt.StorageDir(resolve().pyarrow_fs(), url[len("s3://") :])
    return ckpt.StorageDir(pafs.LocalFileSystem(), url)


def _all_min(value: float, ctx: DistContext) -> float:
    if ctx.world_size == 1 or not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return float(t.item())


def _broadcast(obj: Any, ctx: DistContext) -> Any:
    if ctx.world_size == 1 or not torch.distributed.is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    cfg = from_dict(PretrainConfig, config["cfg"])
    meta = config["meta"]
    ctx = DistContext.from_ray()
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
    bf16 = ds_cfg["bf16"]["enabled"]
    schedule = LRSchedule(cfg.optim, cfg.max_steps)
    run = storage_dir(meta)

    # Resume from the newest COMPLETE checkpoint (rank 0 decides; every rank loads the same one).
    start_step, reader_state, mlflow_run_id, nonfinite_total = 0, None, None, 0
    chosen = _broadcast(ckpt.newest_complete(run) if ctx.is_main else None, ctx)
    if chosen is not None:
        local = ckpt.scratch_dir() / chosen
        commit, mine = ckpt.download(run, chosen, local, ctx.rank)
        engine.load_checkpoint(str(local), tag=ckpt.DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False)
        start_step = int(commit["step"])
        schedule.load_state_dict(commit["schedule"])
        mlflow_run_id = commit.get("mlflow_run_id")
        nonfinite_total = int(commit.get("nonfinite_steps", 0))
        if commit["world_size"] == ctx.world_size:
            reader_state = mine.get("reader")
        shutil.rmtree(local.parent, ignore_errors=True)
        if ctx.is_main:
            log.warning("resuming %s from %s (step %d)", cfg.run_name, run.url(chosen), start_step)

    tracker = None
    if ctx.is_main:
        tracker = Tracker(cfg.tracking.experiment, cfg.run_name, mlflow_run_id, cfg.tracking.enabled)
        tracker.log_config(cfg, meta.get("tags", {}))
    run_id = _broadcast(tracker.run_id if tracker else None, ctx) or None

    buckets = tuple(Bucket(s, b) for s, b in cfg.data.buckets)
    reader_cfg = ReaderConfig(
        url=cfg.data.url, split="train", mode="resampled", shuffle_buffer=cfg.data.shuffle_buffer, buckets=buckets,
        seed=cfg.seed, on_shard_error=cfg.data.on_shard_error, corruption=cfg.corruption,
    )  # fmt: skip
    loader = StatefulLoader(
        PretrainingStream(reader_cfg, ctx.rank, ctx.world_size, state=reader_state), cfg.data.num_workers
    )
    batches = iter(loader)
    consecutive_nonfinite = 0
    window = ThroughputWindow()

    def save(step: int, metrics: dict[str, float]) -> None:
        local = ckpt.scratch_dir()
        engine.save_checkpoint(str(local), tag=ckpt.DS_TAG)
        commit = None
        if ctx.is_main:
            commit = {"world_size": ctx.world_size, "run_name": cfg.run_name, "mlflow_run_id": run_id,
                      "schedule": schedule.state_dict(), "nonfinite_steps": nonfinite_total}  # fmt: skip
        ckpt.write_manifests(local, ctx.rank, step, loader.state_dict(), commit)
        ray.train.report(
            {"step": step, **metrics},
            checkpoint=ray.train.Checkpoint.from_directory(str(local)),
            checkpoint_dir_name=ckpt.checkpoint_name(step),
        )
        shutil.rmtree(local, ignore_errors=True)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank's report (and so its upload) has returned
        if ctx.is_main:
            for name in ckpt.prune(run, cfg.checkpoint.keep_last):
                log.info("retention: deleted %s", run.url(name))

    metrics: dict[str, float] = {}
    for step in range(start_step, cfg.max_steps):
        t0 = time.perf_counter()
        batch = next(batches)
        wait = time.perf_counter() - t0
        lr = schedule.lr(step)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        tokens, annotations = batch["tokens"].to(device), batch["annotations"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cpu"):
            out = engine(
                batch["input_tokens"].to(device), batch["input_annotations"].to(device),
                pad_mask=batch["pad_mask"].to(device),
            )  # fmt: skip
        loss = pretraining_loss(out, tokens, annotations, cfg.loss)
        total = loss.total
        if meta.get("inject_nonfinite_steps") and step in meta["inject_nonfinite_steps"]:
            total = total * float("nan")  # test hook: a fault the real data cannot produce on cue
        finite = _all_min(float(torch.isfinite(total.detach()).item()), ctx)
        if finite:
            engine.backward(total)
            engine.step()
            consecutive_nonfinite = 0
            schedule.observe(float(total.item()))
        else:  # skipped on every rank: no backward, so no gradient is accumulated
            nonfinite_total += 1
            consecutive_nonfinite += 1
            if consecutive_nonfinite >= cfg.optim.max_nonfinite_in_a_row:
                raise NonFiniteLossError(
                    f"{cfg.run_name}: {consecutive_nonfinite} steps in a row with a non-finite loss (last at step "
                    f"{step}); lower optim.lr, check the data, or raise optim.max_nonfinite_in_a_row"
                )
        n_tok = int(batch["pad_mask"].sum())
        window.add(n_tok * ctx.world_size, len(batch["accessions"]) * ctx.world_size, wait)
        done = step + 1
        if ctx.is_main and (done % cfg.tracking.log_every == 0 or done == cfg.max_steps):
            rates = window.rates()
            metrics = {
                "loss": float(total.item()) if finite else float("nan"),
                "token_loss": float(loss.token_loss.item()),
                "annotation_loss": float(loss.annotation_loss.item()),
                "lr": lr,
                **rates,
                "skipped_steps": float(nonfinite_total),
                "seq_len": float(batch["seq_len"]),
            }
            metrics = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
            assert tracker is not None
            tracker.log_metrics(done, metrics)
            window.reset()
        if done % cfg.checkpoint.every_steps == 0 or done == cfg.max_steps:
            save(done, {k: metrics[k] for k in ("loss", "token_loss", "annotation_loss") if k in metrics})

    _export(engine, cfg, run, tracker, ctx)
    if tracker is not None:
        tracker.finish()


def _export(engine, cfg: PretrainConfig, run: ckpt.StorageDir, tracker: Tracker | None, ctx: DistContext) -> None:
    """Framework-neutral final model (safetensors + config JSON) in the run dir and as an MLflow artifact."""
    import deepspeed
    from pyarrow import fs as pafs

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=cfg.deepspeed.zero_stage == 3):
        if ctx.is_main:
            model = ProteinBERT(cfg.model)
            model.load_state_dict({k: v.detach().float().cpu() for k, v in engine.module.state_dict().items()})
            local = ckpt.scratch_dir() / "final_model"
            model.save_pretrained(local, metadata={"run_name": cfg.run_name, "steps": cfg.max_steps})
            pafs.copy_files(str(local), f"{run.path}/final_model", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=run.fs)  # fmt: skip
            if tracker is not None:
                tracker.log_model_dir(local)
            shutil.rmtree(local.parent, ignore_errors=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()

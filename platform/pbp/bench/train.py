"""``pbp bench train``: what DeepSpeed and Ray Train cost over a bare PyTorch loop, and what a checkpoint costs.

For one model config and one fixed synthetic batch, in one run:
  (a) a bare PyTorch loop (forward, loss, backward, AdamW step);
  (b) the same steps through a DeepSpeed engine (single process, gloo, ZeRO stage as configured);
  (c) the same DeepSpeed steps inside a Ray Train TorchTrainer with one worker on the cluster.
Each measures only its steady-state step time (warm-up steps excluded). Reported: seconds per step and (b)/(a),
(c)/(a). Then checkpoint save + commit (DeepSpeed save, upload to S3 hashing each file on the way, manifests) against
a raw upload of the same bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbp.bench.model import synthetic_batch
from pbp.config import from_dict, to_dict
from pbp.model import ModelConfig, ProteinBERT
from pbp.model.pretraining import CorruptionConfig, corrupt, pretraining_loss
from pbp.train.dist import one_rank_env

REPEATS = 5


def _batch(cfg: ModelConfig, batch_size: int, seq_len: int):
    tokens, ann = synthetic_batch(cfg, batch_size, seq_len)
    c = corrupt(tokens, ann, CorruptionConfig(), torch.Generator().manual_seed(1))
    return tokens, ann, c


def _time_steps(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def bare_loop(cfg: ModelConfig, batch_size: int, seq_len: int, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    model = ProteinBERT(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens, ann, c = _batch(cfg, batch_size, seq_len)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        pretraining_loss(model(c.tokens, c.annotations, pad_mask=c.pad_mask), tokens, ann).total.backward()
        opt.step()

    return _time_steps(step, warmup, steps)


def _ds_engine(cfg: ModelConfig, zero_stage: int, batch_size: int):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if not torch.distributed.is_initialized():
        os.environ.update(one_rank_env())
        deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = ProteinBERT(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ds = {
        "train_micro_batch_size_per_gpu": batch_size,
        "train_batch_size": batch_size * torch.distributed.get_world_size(),
        "zero_optimization": {"stage": zero_stage},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    return engine


def deepspeed_loop(cfg: ModelConfig, batch_size: int, seq_len: int, warmup: int, steps: int, zero_stage: int) -> float:
    engine = _ds_engine(cfg, zero_stage, batch_size)
    tokens, ann, c = _batch(cfg, batch_size, seq_len)

    def step() -> None:
        loss = pretraining_loss(engine(c.tokens, c.annotations, pad_mask=c.pad_mask), tokens, ann).total
        engine.backward(loss)
        engine.step()

    return _time_steps(step, warmup, steps)


def _ray_worker(config: dict[str, Any]) -> None:
    import ray.train

    cfg = from_dict(ModelConfig, config["model"])
    torch.set_num_threads(config["threads"])  # Ray pins OMP threads to the worker's CPUs; compare like with like
    t = deepspeed_loop(cfg, config["batch_size"], config["seq_len"], config["warmup"], config["steps"],
                       config["zero_stage"])  # fmt: skip
    with tempfile.TemporaryDirectory() as d:  # Train V2 attaches metrics to the result only with a checkpoint
        (Path(d) / "timing.txt").write_text(str(t))
        ray.train.report({"seconds_per_step": t}, checkpoint=ray.train.Checkpoint.from_directory(d))


def ray_deepspeed_loop(cfg: ModelConfig, batch_size: int, seq_len: int, warmup: int, steps: int, zero_stage: int,
                       cpus: float) -> float:  # fmt: skip
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pbp.train.launch import connect_ray

    connect_ray()
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={
            "model": to_dict(cfg),
            "batch_size": batch_size,
            "seq_len": seq_len,
            "warmup": warmup,
            "steps": steps,
            "zero_stage": zero_stage,
            "threads": torch.get_num_threads(),
        },
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
        run_config=ray.train.RunConfig(name=f"bench-train-{int(time.time())}", storage_path=tempfile.mkdtemp()),
    )
    result = trainer.fit()
    assert result.metrics is not None, result.error
    return float(result.metrics["seconds_per_step"])


def checkpoint_cost(cfg: ModelConfig, zero_stage: int) -> dict[str, float]:
    """DeepSpeed save + upload with sha256 + manifests (``checkpoint.upload``, what every save does), against a raw
    upload (``pyarrow.fs.copy_files``) of the same bytes; both to the stack's S3, medians of ``REPEATS`` alternating runs."""
    from pyarrow import fs as pafs

    from pbp.stack.endpoints import bucket_for, resolve
    from pbp.train import checkpoint as ckpt

    ep = resolve()
    bucket = bucket_for("runs", ep, "the checkpoint benchmark")
    fs = ep.pyarrow_fs(f"s3://{bucket}/")
    engine = _ds_engine(cfg, zero_stage, 2)
    runs = ckpt.StorageDir(fs, f"{bucket}/bench")
    save_times, raw_times, nbytes = [], [], 0
    for attempt in range(REPEATS):  # alternating; medians: one upload alone varies by 10-20 % here
        local = Path(tempfile.mkdtemp(prefix="pbp-bench-ckpt-"))
        stamp = f"{int(time.time() * 1000)}-{attempt}"
        t0 = time.perf_counter()
        up = ckpt.Upload(local / "c", runs, f"ckpt-{stamp}")  # what Checkpointer.save does
        with ckpt.upload_as_saved(engine, up):
            engine.save_checkpoint(str(local / "c"), tag=ckpt.DS_TAG)
        up.finish(0, 1, {}, {"world_size": 1, "schedule": {}})
        save_times.append(time.perf_counter() - t0)
        files = [p for p in (local / "c").rglob("*") if p.is_file()]
        nbytes = sum(p.stat().st_size for p in files)
        raw = local / "raw"
        raw.mkdir()
        for i, p in enumerate(files):
            shutil.copyfile(p, raw / f"f{i}")
        t0 = time.perf_counter()
        pafs.copy_files(str(raw), f"{runs.path}/raw-{stamp}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)  # fmt: skip
        raw_times.append(time.perf_counter() - t0)
        shutil.rmtree(local, ignore_errors=True)
        for prefix in (f"ckpt-{stamp}", f"raw-{stamp}"):
            fs.delete_dir(f"{runs.path}/{prefix}")
    save_s, raw_s = float(np.median(save_times)), float(np.median(raw_times))
    return {"checkpoint_bytes": nbytes, "save_commit_s": save_s, "raw_upload_s": raw_s, "ratio": save_s / raw_s}


def bench_train(cfg: ModelConfig, batch_size: int, seq_len: int, warmup: int, steps: int, zero_stage: int,
                with_ray: bool = True, cpus: float = 2.0) -> dict[str, Any]:  # fmt: skip
    a = bare_loop(cfg, batch_size, seq_len, warmup, steps)
    b = deepspeed_loop(cfg, batch_size, seq_len, warmup, steps, zero_stage)
    out: dict[str, Any] = {"batch_size": batch_size, "seq_len": seq_len, "zero_stage": zero_stage,
                           "bare_s_per_step": a, "deepspeed_s_per_step": b, "deepspeed_over_bare": b / a}  # fmt: skip
    if with_ray:
        c = ray_deepspeed_loop(cfg, batch_size, seq_len, warmup, steps, zero_stage, cpus)
        out.update(ray_deepspeed_s_per_step=c, ray_deepspeed_over_bare=c / a)
    return out

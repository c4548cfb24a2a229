"""``pbp pretrain`` / ``jobs/pretrain.py``: build the Ray Train TorchTrainer for a PretrainConfig and run it."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pbp.config import to_dict
from pbp.data.shards import load_manifest, manifest_digest
from pbp.stack.endpoints import resolve, set_ray_auth_env
from pbp.train.config import PretrainConfig
from pbp.train.tracking import check_tracking_server

log = logging.getLogger("pbp.train")


def git_commit() -> str:
    if os.environ.get("PBP_GIT_COMMIT"):
        return os.environ["PBP_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def resolve_config(cfg: PretrainConfig) -> tuple[PretrainConfig, dict[str, Any]]:
    """Fill what the config leaves to the environment: storage path, the model's annotation count from the data."""
    ep = resolve()
    if not cfg.data.url:
        raise ValueError("data.url is empty: point it at a dataset built by `pbp data build`")
    if cfg.tracking.enabled:
        check_tracking_server()
    manifest = load_manifest(cfg.data.url)
    n_terms = len(manifest["go_vocabulary"])
    if cfg.model.n_annotations != n_terms:
        log.warning("model.n_annotations=%d set to the dataset's %d GO terms", cfg.model.n_annotations, n_terms)
        cfg = replace(cfg, model=replace(cfg.model, n_annotations=n_terms))
    storage = cfg.checkpoint.storage_path or f"s3://{ep.buckets.get('runs', 'pbp-runs')}/pretrain"
    cfg = replace(cfg, checkpoint=replace(cfg.checkpoint, storage_path=storage))
    digest = manifest_digest(manifest)
    meta = {
        "run_url": f"{storage.rstrip('/')}/{cfg.run_name}",
        "tags": {
            "pbp.dataset_url": cfg.data.url,
            "pbp.dataset_manifest_sha256": digest,
            "pbp.git_commit": git_commit(),
        },
    }
    return cfg, meta


def torch_trainer(
    loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], *, run_name: str, storage_path: str,
    num_workers: int, use_gpu: bool, cpus_per_worker: float, max_failures: int, callbacks: list | None = None,
):  # fmt: skip
    """The TorchTrainer of a pbp job (pretraining, fine-tuning, a Tune trial's fine-tuning).

    ``RunConfig(name, storage_path)`` is the run's stable home: a re-run or a retried trial with the same name finds
    its checkpoints there. Retention is pbp's (checkpoint.prune): it keeps the newest COMPLETE checkpoints.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    forget_ray_snapshot(f"{storage_path.rstrip('/')}/{run_name}")
    fs = None
    if storage_path.startswith("s3://"):
        fs = resolve().pyarrow_fs()
        storage_path = storage_path[len("s3://") :]
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
        ),
    )


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
"""Ray Train's list of the checkpoints reported in a run directory, read when a run of the same name starts."""


def forget_ray_snapshot(run_url: str) -> None:
    """Delete Ray Train's checkpoint list in a run's directory before the run (re)starts.

    pbp resumes from its own newest complete checkpoint (``checkpoint.Checkpointer.restore``), never from Ray's list,
    and pbp's retention deletes checkpoints that the list still names; Ray Train then refuses to start a run of the
    same name ("The run snapshot contains a reference to a checkpoint that does not exist anymore"), so a re-run
    or a retried trial could not resume. Without the list Ray starts its bookkeeping afresh; pbp's resume is unchanged.
    """
    from pyarrow import fs as pafs

    from pbp.train.checkpoint import storage_dir

    run = storage_dir(run_url)
    path = f"{run.path}/{RAY_SNAPSHOT}"
    if run.fs.get_file_info(path).type == pafs.FileType.File:
        run.fs.delete_file(path)
        log.info("%s: Ray Train's checkpoint list removed (pbp resumes from its own complete checkpoints)", run.url())


def build_trainer(cfg: PretrainConfig, meta: dict[str, Any]):
    from pbp.train.loop import train_loop_per_worker

    s = cfg.scaling
    return torch_trainer(
        train_loop_per_worker, {"cfg": to_dict(cfg), "meta": meta}, run_name=cfg.run_name,
        storage_path=cfg.checkpoint.storage_path, num_workers=s.num_workers, use_gpu=s.use_gpu,
        cpus_per_worker=s.cpus_per_worker, max_failures=s.max_failures,
    )  # fmt: skip


def connect_ray(address: str | None = None) -> None:
    """Connect this driver to the cluster: ``address`` or RAY_ADDRESS (a GCS address), else the local stack's head.

    The token settings must be in the environment before Ray is imported (Ray reads them once).
    """
    ep = resolve()
    addr = address or os.environ.get("RAY_ADDRESS")
    if not addr or "://" in addr:  # a dashboard URL is for the Jobs API, not for a driver
        from pbp.stack.state import StackState, default_state_dir

        state = StackState.load(ep.state_dir or default_state_dir())
        addr = state.ray_gcs_address if state else "auto"
        os.environ.pop("RAY_ADDRESS", None)
    set_ray_auth_env(ep)
    import ray

    if not ray.is_initialized():
        ray.init(address=addr, log_to_driver=True)


def pretrain(cfg: PretrainConfig, meta_extra: dict[str, Any] | None = None, address: str | None = None):
    """Run pretraining on the Ray cluster; returns Ray Train's Result."""
    cfg, meta = resolve_config(cfg)
    meta.update(meta_extra or {})
    if os.environ.get("PBP_TEST_INJECT_NONFINITE"):  # test hook: NaN losses at these steps (a fault on cue)
        meta["inject_nonfinite_steps"] = [int(s) for s in os.environ["PBP_TEST_INJECT_NONFINITE"].split(",")]
    connect_ray(address)
    trainer = build_trainer(cfg, meta)
    result = trainer.fit()
    if result.error:
        raise result.error
    return result

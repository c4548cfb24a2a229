"""``pbp finetune`` / ``jobs/finetune.py``: check a FinetuneConfig on the driver, then run it with Ray Train.

Everything that can be checked before a worker starts is checked here (the task files' columns and labels, the
starting point), so a bad value fails in seconds naming the file, row or key.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbp.config import to_dict
from pbp.finetune.config import FinetuneConfig, TaskConfig
from pbp.finetune.data import TaskData, TaskDataError, load_task
from pbp.stack.endpoints import runs_storage

if TYPE_CHECKING:
    from pbp.train.checkpoint import CommitRecord, StorageDir

log = logging.getLogger("pbp.finetune")


def _absolute_paths(task: TaskConfig) -> TaskConfig:
    """Local task files made absolute: Ray workers run elsewhere (on a cloud cluster give s3:// URLs)."""
    for role in ("train", "valid", "test"):
        url = getattr(task, role)
        if url and not url.startswith(("s3://", "/")):
            path = Path(url).expanduser().resolve()
            if not url.startswith("~") and not path.is_file():
                raise TaskDataError(f"task.{role}={url}: no such file, {path} (a relative path is read from the "
                                    f"current directory, {Path.cwd()})")  # fmt: skip
            task = replace(task, **{role: str(path)})  # type: ignore[arg-type]
    return task


def with_storage(cfg: FinetuneConfig) -> FinetuneConfig:
    """The config with its runs' storage filled in (default: :func:`pbp.stack.endpoints.runs_storage`)."""
    storage = cfg.checkpoint.storage_path or runs_storage("finetune")
    return replace(cfg, checkpoint=replace(cfg.checkpoint, storage_path=storage))


def resolve_config(cfg: FinetuneConfig, tags: dict[str, str] | None = None, init_version: str | None = None
                   ) -> tuple[FinetuneConfig, dict[str, Any]]:  # fmt: skip
    """Fill the storage path; check the task and the starting point. -> (config, meta for the workers).

    ``init_version``: the version an alias ``init`` was pinned to when the run (or campaign) started, kept by a
    re-run or resume (None: the one the run's newest checkpoint records, if any); else the alias is pinned now
    (:func:`pbp.train.artifacts.pinned`)."""
    from pbp.data.storage import check_object_storage
    from pbp.finetune.export import load_body
    from pbp.train.artifacts import pinned
    from pbp.train.launch import git_commit
    from pbp.train.tracking import check_tracking_server

    if cfg.tracking.enabled:
        check_tracking_server()

    cfg = replace(cfg, task=_absolute_paths(cfg.task))
    check_object_storage(cfg.task.train, cfg.task.valid, cfg.task.test, cfg.init)  # inputs first, then the run's
    data: TaskData = load_task(cfg.task, cfg.seed)
    for role, n in data.dropped.items():
        log.warning("%s: %d rows left out, their class does not occur in the training file (task.unseen_labels=drop)",
                    getattr(cfg.task, role), n)  # fmt: skip
    cfg = with_storage(cfg)
    check_object_storage(cfg.checkpoint.storage_path)  # the task's inputs first (above), then where the run goes
    if init_version is None:  # a re-run keeps the version an alias init was pinned to when the run started
        from pbp.train.checkpoint import newest_commit, storage_dir

        newest = newest_commit(storage_dir(cfg.run_url))
        init_version = str(newest[1].config.get("init_version", "")) if newest else ""
    lineage: dict[str, str] = {"pbp.init": cfg.init}
    init = init_version or (pinned(cfg.init, "init") if cfg.init != "none" else "none")  # what the workers load
    if init != cfg.init:
        lineage["pbp.init_version"] = init
    if cfg.init != "none":
        body, meta = load_body(init)
        cfg = replace(cfg, model=body.config)
        if meta.get("run_name"):
            lineage["pbp.init_pretrain_run"] = str(meta["run_name"])
        if meta.get("pbp.dataset_manifest_sha256"):  # the pretraining data behind the starting point
            lineage["pbp.init_dataset_manifest_sha256"] = str(meta["pbp.dataset_manifest_sha256"])
    meta_out = {
        "init": init,
        "identity": run_identity(cfg, data.digests, init if init != cfg.init else ""),
        "tags": {
            **lineage,
            "pbp.git_commit": git_commit(),
            "pbp.task.kind": data.spec.kind.value,
            "pbp.task.rows": f"train={len(data.train)} valid={len(data.valid)} "
            f"test={len(data.test) if data.test else 0}"
            + "".join(f" ({role}: {n} left out, unseen class)" for role, n in data.dropped.items()),
            **(tags or {}),
        },
    }
    return cfg, meta_out


def run_identity(cfg: FinetuneConfig, digests: dict[str, str], init_version: str = "") -> dict[str, Any]:
    """What a re-run of the run name must keep (``pbp.train.run_identity``): the task files by their sha256, not
    their paths; the version an alias ``init`` was pinned to; not the stages' epoch budgets, workers, checkpoints,
    tracking or evaluation batching."""
    from pbp.train.run_identity import identity

    pinned_to = {"init_version": init_version} if init_version else {}
    return identity(cfg, ("seed", "init", "model", "task", "stages", "schedule", "head_dropout", "too_long"),
                    ("task.train", "task.valid", "task.test", "task.name", "stages.*.max_epochs"),
                    **{f"task.{role}_sha256": digest for role, digest in digests.items()}, **pinned_to)  # fmt: skip


def build_trainer(cfg: FinetuneConfig, meta: dict[str, Any], callbacks: list | None = None):
    from pbp.finetune.loop import finetune_loop_per_worker
    from pbp.train.launch import torch_trainer

    return torch_trainer(
        finetune_loop_per_worker, {"cfg": to_dict(cfg), "meta": meta}, run_name=cfg.run_name,
        storage_path=cfg.checkpoint.storage_path, scaling=cfg.scaling, callbacks=callbacks,
    )  # fmt: skip


@dataclass
class FinetuneResult:
    run_url: str
    """The run's directory in storage (checkpoints, ``final_model/``, ``final_metrics.json``)."""
    metrics: dict[str, float]
    """The final validation and test metrics, each beside its baseline (``final_metrics.json``)."""
    trained: bool = True
    """False for a re-run of a finished run: nothing left to train, nothing started."""
    mlflow_run_id: str | None = None
    """The run's MLflow run, as its newest checkpoint records it (None with tracking off)."""
    tracking_gaps: list[str] | None = None
    """With tracking on: what the MLflow run lacks (:func:`pbp.train.tracking.tracking_gaps`; [] when complete; else
    MLflow did not answer at the end, and the same command again logs the model and sends the metrics kept with the
    checkpoint, training nothing). None with tracking off."""

    @property
    def tracking_complete(self) -> bool | None:
        return None if self.tracking_gaps is None else not self.tracking_gaps


def finetune(cfg: FinetuneConfig, address: str | None = None) -> FinetuneResult:
    """Run fine-tuning on the Ray cluster (RAY_ADDRESS, else the local stack); a run that already finished every
    stage and exported its model is reported without starting any worker."""
    from pbp.train.checkpoint import newest_commit, storage_dir
    from pbp.train.launch import connect_ray, fit
    from pbp.train.run_identity import check_same_run
    from pbp.train.tracking import marked_if_unfinished, tracking_gaps

    cfg, meta = resolve_config(cfg)
    if os.environ.get("PBP_TEST_KILL_AFTER_EPOCH"):  # test hook: the worker exits after that epoch's checkpoint
        meta["kill_after_epoch"] = int(os.environ["PBP_TEST_KILL_AFTER_EPOCH"])
    run = storage_dir(cfg.run_url)
    newest = newest_commit(run)
    check_same_run(newest, meta["identity"], cfg.run_name)
    done = _finished(cfg, run, newest)
    if done is not None:
        return done
    connect_ray(address)
    with marked_if_unfinished(cfg.tracking.enabled, cfg.tracking.experiment, cfg.run_name):
        fit(build_trainer(cfg, meta), cfg.scaling, cfg.run_name)
    newest = newest_commit(run)
    run_id = newest[1].mlflow_run_id if newest else None
    return FinetuneResult(cfg.run_url, run.read_json("final_metrics.json") or {}, True, run_id,
                          tracking_gaps(run_id) if cfg.tracking.enabled else None)  # fmt: skip


def finished_run(cfg: FinetuneConfig) -> FinetuneResult | None:
    """The run, with its final metrics, if its newest checkpoint has every stage of ``cfg`` done (what a worker would
    skip) and its model is exported: in storage, and with tracking on, its MLflow run complete (the model logged, the
    run FINISHED). None when anything is left to do."""
    from pbp.train.checkpoint import newest_commit, storage_dir

    run = storage_dir(cfg.run_url)
    return _finished(cfg, run, newest_commit(run))


def _finished(cfg: FinetuneConfig, run: StorageDir, newest: tuple[str, CommitRecord] | None) -> FinetuneResult | None:
    from pbp.finetune.export import META, WEIGHTS
    from pbp.train.checkpoint import exported
    from pbp.train.tracking import tracking_gaps

    if newest is None:
        return None
    commit = newest[1]
    if commit.job.get("stage") != len(cfg.stages) - 1 or not commit.job.get("stage_done"):
        return None
    metrics = run.read_json("final_metrics.json")
    if metrics is None or not exported(run, (WEIGHTS, META)):
        return None
    if cfg.tracking.enabled and tracking_gaps(commit.mlflow_run_id):  # (MLflow not answering too: the workers resume
        return None  # the last checkpoint, training nothing, and report it)
    return FinetuneResult(cfg.run_url, metrics, trained=False, mlflow_run_id=commit.mlflow_run_id,
                          tracking_gaps=[] if cfg.tracking.enabled else None)  # fmt: skip

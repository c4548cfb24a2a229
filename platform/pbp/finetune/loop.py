"""The fine-tuning loop run by every Ray Train worker: stages of epochs, checkpoints each epoch, MLflow on rank 0.

``finetune_loop_per_worker(config)`` is importable: Ray Train calls it on each worker; Ray Tune's trials build a
TorchTrainer around it. A step of the shared driver (``pbp.train.driver``) is one epoch; each stage is one
``drive`` call with early stopping; the stage's best weights (lowest validation loss) are restored at its end.
Data parallelism averages gradients over ranks after backward (``average_gradients``), so the set of trainable
parameters may change between stages.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbp import telemetry
from pbp.config import from_dict
from pbp.finetune.batching import eval_batches, fitting_rows, train_batches
from pbp.finetune.config import FinetuneConfig, ScheduleConfig, StageConfig
from pbp.finetune.data import Split, TaskData, load_task
from pbp.finetune.export import TaskInfo, load_body, save_finetuned
from pbp.finetune.features import PROGRESS_EVERY_S, FeatureCache, build_cache
from pbp.finetune.scoring import by_length, row_predictions, score
from pbp.model import ProteinBERT
from pbp.model.finetune import IGNORE_INDEX, FinetuneModel, task_loss
from pbp.train.checkpoint import Checkpointer, CommitRecord, Restored, Upload
from pbp.train.dist import (
    DistContext,
    all_gather_objects,
    announce_worker,
    average_gradients,
    broadcast,
    quiet_ray_train_reports,
)
from pbp.train.driver import Cadence, drive
from pbp.train.metrics import WORKER_SECONDS, WORKER_STARTED, baseline_reference
from pbp.train.tracking import Tracker, finish_on_error

log = logging.getLogger("pbp.finetune")
STATE_FILE = "state.pt"
KILLED_ON_CUE = 86
"""The exit code of a worker the ``kill_after_epoch`` test hook ends (a crash's would be 1)."""


@dataclass
class Patience:
    """Reduce-on-plateau and early stopping on the validation loss (Keras' callbacks, as the original used)."""

    lr: float
    best: float = math.inf
    best_epoch: int = 0
    since_best: int = 0
    since_cut: int = 0

    def observe(self, epoch: int, loss: float, cfg: ScheduleConfig) -> bool:
        """-> True when this epoch's weights are the best so far."""
        if loss < self.best - cfg.min_delta:
            self.best, self.best_epoch, self.since_best, self.since_cut = loss, epoch, 0, 0
            return True
        self.since_best += 1
        self.since_cut += 1
        if cfg.plateau_patience and self.since_cut >= cfg.plateau_patience:
            self.lr, self.since_cut = max(self.lr * cfg.plateau_factor, cfg.min_lr), 0
        return False

    def should_stop(self, cfg: ScheduleConfig) -> bool:
        return bool(cfg.early_stopping_patience) and self.since_best >= cfg.early_stopping_patience


@dataclass
class Progress:
    """Where the run is (saved in the commit record): stage, epochs done in it and in all, the stage's patience."""

    stage: int = 0
    epoch_in_stage: int = 0
    epochs_done: int = 0
    patience: dict[str, Any] = field(default_factory=dict)
    stage_done: bool = False
    best_metric: float = math.nan


class Trainer:
    """One worker's fine-tuning state; methods are the driver's step/evaluate/save and the stage bookkeeping."""

    def __init__(self, cfg: FinetuneConfig, meta: dict[str, Any], ctx: DistContext) -> None:
        self.started, self.started_at = time.perf_counter(), time.time()
        """When this worker started: its reports' ``worker_seconds`` (a campaign's cost ledger, which must not count
        the time a trial waited for a free slot before its workers started)."""
        self.cfg, self.meta, self.ctx = cfg, meta, ctx
        self.device = torch.device(f"cuda:{ctx.local_rank}" if cfg.scaling.use_gpu and torch.cuda.is_available()
                                   else "cpu")  # fmt: skip
        self.data: TaskData = load_task(cfg.task, cfg.seed)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        init = meta.get("init", cfg.init)  # an alias pinned to its version on the driver
        body = ProteinBERT(cfg.model) if init == "none" else load_body(init)[0]
        self.model = FinetuneModel(body, self.data.spec, cfg.head_dropout).to(self.device)
        self.flat = self.data.spec.flattened()
        self.train_ref = self._flat_labels(self.data.train)
        self.progress = Progress()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.restored_optimizer: dict[str, Any] | None = None
        """The optimizer state of a restored checkpoint, loaded when its stage's optimizer is built."""
        self.patience = Patience(lr=cfg.stages[0].lr)
        self.caches: dict[str, FeatureCache | None] = {}
        self.rows = np.arange(len(self.data.train))
        self.tracker: Tracker | None = None
        self.ckpt = Checkpointer(cfg.run_url, ctx, cfg.checkpoint.keep_last)
        self.resumed = False
        """This worker continued from a checkpoint."""
        self.tracking_backlog: list[list[Any]] = []
        """The restored checkpoint's undelivered metrics (``TRACKING_BACKLOG``), for rank 0's tracker."""

    # ---- resume -----------------------------------------------------------------------------------------------

    def restore(self) -> str | None:
        """Load the newest complete checkpoint, if any. -> the MLflow run id it recorded."""
        restored: Restored | None = self.ckpt.restore()
        if restored is None:
            return None
        state = torch.load(restored.local / STATE_FILE, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.best_state = state.get("best")
        self.progress = Progress(**restored.commit.job)
        self.restored_optimizer = state.get("optimizer")
        self.tracking_backlog = restored.tracking_backlog
        restored.cleanup()
        self.resumed = True
        if self.ctx.is_main:
            log.warning("resuming %s from %s (stage %d, epoch %d)", self.cfg.run_name, restored.url,
                        self.progress.stage, self.progress.epoch_in_stage)  # fmt: skip
        return restored.commit.mlflow_run_id

    # ---- a stage ----------------------------------------------------------------------------------------------

    def begin_stage(self, stage: StageConfig, resuming: bool) -> None:
        m = self.model
        m.freeze_body() if stage.freeze_body else m.unfreeze_body()
        params = [p for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=stage.lr)
        self.patience = Patience(lr=stage.lr)
        if resuming:
            self.patience = Patience(**self.progress.patience)
            if self.restored_optimizer:
                self.optimizer.load_state_dict(self.restored_optimizer)
            self.restored_optimizer = None
        else:
            self.best_state = None
        self.rows, dropped = fitting_rows(self.data.train, stage.seq_len, self.cfg.too_long)
        if dropped and self.ctx.is_main:
            log.warning("stage %s: %d training sequences longer than seq_len=%d dropped (too_long=drop)",
                        stage.name, dropped, stage.seq_len)  # fmt: skip
        if not len(self.rows):
            raise ValueError(f"stage {stage.name}: every training sequence is longer than seq_len={stage.seq_len}; "
                             "raise it or set too_long=crop")  # fmt: skip
        self.caches = {}
        fc = self.cfg.feature_cache
        if stage.freeze_body and fc.enabled and self.cfg.too_long == "drop" and m.body.config.padding_mask:
            mb, disk = fc.max_memory_mb, fc.max_disk_mb
            train_rows = self.data.train.subset(self.rows)
            for name, split in (("train", train_rows), ("valid", self.data.valid)):
                self.caches[name] = build_cache(m, split, self.cfg.eval_batch_tokens, mb, disk, self.device,
                                                show_progress=self.ctx.is_main, ctx=self.ctx)  # fmt: skip
                if self.caches[name] is not None:
                    mb = max(0.0, mb - _mib(self.caches[name]))

    def train_epoch(self, stage: StageConfig) -> dict[str, float]:
        assert self.optimizer is not None
        m, ctx = self.model, self.ctx
        # Dropout's draws seeded by the epoch (and rank), as the batch order is: an epoch run after a resume draws
        # what it would have drawn in an uninterrupted run (with one seed for the whole run, a resumed epoch drew
        # the masks of the run's first epoch after initialisation, and trained to other weights).
        torch.manual_seed(int(np.random.SeedSequence([self.cfg.seed, self.progress.epochs_done, ctx.rank])
                              .generate_state(1)[0]))  # fmt: skip
        for g in self.optimizer.param_groups:
            g["lr"] = self.patience.lr
        rng = np.random.default_rng([self.cfg.seed, self.progress.epochs_done])
        m.train()
        if stage.freeze_body:
            m.body.eval()  # the body has no dropout; kept in eval mode all the same
        losses, n = 0.0, 0
        cache = self.caches.get("train")
        if cache is not None:
            order = rng.permutation(len(cache))
            batches = [order[i : i + stage.batch_size] for i in range(0, len(order), stage.batch_size)]
            if ctx.world_size > 1:
                batches = batches[: len(batches) // ctx.world_size * ctx.world_size]
            pairs = (cache.batch(b) for b in batches[ctx.rank :: ctx.world_size])
        else:
            pairs = ((b.tokens, b.labels) for b in train_batches(
                self.data.train, self.rows, stage.seq_len, stage.batch_size, rng, ctx.rank, ctx.world_size))  # fmt: skip
        shown = time.perf_counter()
        for i, (x, y) in enumerate(pairs, 1):
            if cache is not None and m.task.kind.per_residue:  # the cache holds <START>/<END> positions too
                keep = y != IGNORE_INDEX
                x, y = x[keep], y[keep]
            x, y = x.to(self.device), y.to(self.device)
            logits = self._head(x) if cache is not None else m(x)
            loss = task_loss(self.flat if cache is not None else m.task, logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients((p for p in m.parameters() if p.requires_grad), ctx)
            self.optimizer.step()
            losses += float(loss.detach()) * len(y)
            n += len(y)
            if ctx.is_main and time.perf_counter() - shown > PROGRESS_EVERY_S:  # long epochs (the base model)
                shown = time.perf_counter()
                print(f"[{self.cfg.run_name}] stage {stage.name} epoch {self.progress.epochs_done + 1}: batch {i}, "
                      f"train_loss so far {losses / max(n, 1):.4g}", flush=True)  # fmt: skip
        total = sum(all_gather_objects(n, ctx))
        mean = sum(all_gather_objects(losses, ctx)) / max(total, 1)
        return {"train_loss": mean, "lr": self.patience.lr, "train_items": float(total)}

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model.head(self.model.dropout(x))
        return logits.squeeze(-1) if self.model.task.n_outputs == 1 else logits

    @torch.no_grad()
    def predict(self, split: Split, cache: FeatureCache | None = None) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """-> per example (row, logits over its labelled positions or of the protein, labels), all ranks merged."""
        m, ctx = self.model.eval(), self.ctx
        out: list[tuple[int, np.ndarray, np.ndarray]] = []
        if cache is not None:  # every rank holds the whole cache: no exchange needed
            if m.task.kind.per_residue:
                for i in range(len(cache)):
                    x, y = cache.batch(np.array([i]))
                    out.append(row_predictions(i, self._head(x.to(self.device)).float().cpu(), y.numpy(), True))
                return out
            for lo in range(0, len(cache), 4096):
                idx = np.arange(lo, min(lo + 4096, len(cache)))
                x, y = cache.batch(idx)
                logits = self._head(x.to(self.device)).float().cpu().numpy()
                out.extend((int(i), logits[j : j + 1], y.numpy()[j : j + 1]) for j, i in enumerate(idx))
            return out
        for b in eval_batches(split, self.cfg.eval_batch_tokens, ctx.rank, ctx.world_size):
            logits = m(b.tokens.to(self.device)).float().cpu()
            per_residue = m.task.kind.per_residue
            for j, i in enumerate(b.index):
                labels = b.labels[j].numpy() if per_residue else b.labels[j : j + 1].numpy()
                out.append(
                    row_predictions(int(i), logits[j] if per_residue else logits[j : j + 1], labels, per_residue)
                )
        merged = [x for part in all_gather_objects(out, ctx) for x in part]
        return sorted(merged, key=lambda t: t[0])

    def score(self, preds: list[tuple[int, np.ndarray, np.ndarray]], prefix: str) -> dict[str, float]:
        return score(self.flat, preds, prefix, self.train_ref)

    def validate(self) -> dict[str, float]:
        cache = self.caches.get("valid")
        return self.score(self.predict(self.data.valid, cache), "valid")

    def held(self) -> dict[str, float]:
        """For a report: this worker's start (wall clock: it tells one attempt of a retried trial from the next) and
        the seconds since."""
        return {WORKER_STARTED: self.started_at, WORKER_SECONDS: time.perf_counter() - self.started}

    def _flat_labels(self, split: Split) -> np.ndarray:
        if isinstance(split.labels, list):
            flat = np.concatenate(split.labels)
            return flat[flat != IGNORE_INDEX]
        return np.asarray(split.labels)

    def test(self) -> dict[str, float]:
        """Test metrics overall and per length bucket (tokens), as the original reported them."""
        split = self.data.test
        if split is None:
            return {}
        preds = self.predict(split)
        return {**self.score(preds, "test"),
                **by_length(self.flat, preds, split.lengths(), self.cfg.length_buckets, "test", self.train_ref)}  # fmt: skip

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def save(self, metrics: dict[str, float], run_id: str | None) -> None:
        assert self.optimizer is not None
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "best": self.best_state}

        def write(d: Path, up: Upload) -> None:
            if self.ctx.is_main:
                with up.open(d / STATE_FILE) as f:  # uploaded as it is written
                    torch.save(state, f)

        p = self.progress
        p.patience = asdict(self.patience)
        commit = CommitRecord(step=p.epochs_done, world_size=self.ctx.world_size, run_name=self.cfg.run_name,
                              mlflow_run_id=run_id, job=asdict(p), config=self.meta.get("identity", {}))  # fmt: skip
        report = {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        t0 = time.perf_counter()
        self.ckpt.save(write, commit, {**report, **self.held(), "epoch": p.epochs_done, "stage": p.stage, "finished": 0},
                       tracking_backlog=self.tracker.backlog() if self.tracker else None)  # fmt: skip
        if self.ctx.is_main:
            telemetry.checkpoint_saved("finetune", self.cfg.run_name, time.perf_counter() - t0)


def _mib(cache: FeatureCache | None) -> float:
    if cache is None or cache.storage == "disk-float16":
        return 0.0
    return float(cache.features.nbytes) / 2**20


def run_stage(tr: Trainer, si: int, run_id: str | None) -> None:
    cfg, stage, p = tr.cfg, tr.cfg.stages[si], tr.progress
    resuming = p.stage == si and p.epoch_in_stage > 0
    if p.stage != si:
        tr.progress = p = Progress(stage=si, epochs_done=p.epochs_done, best_metric=p.best_metric)
    if p.stage_done:
        return
    tr.begin_stage(stage, resuming)
    headline = f"valid_{tr.flat.kind.metric_name}"

    def step(_: int) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics = tr.train_epoch(stage)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        return metrics

    def evaluate(done: int) -> dict[str, float]:
        p.epoch_in_stage, p.epochs_done = done, p.epochs_done + 1
        metrics = tr.validate()
        if tr.patience.observe(done, metrics["valid_loss"], cfg.schedule):
            tr.best_state = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
            p.best_metric = metrics.get(headline, math.nan)
        metrics["best_" + headline] = p.best_metric
        return metrics

    def log_fn(done: int, metrics: dict[str, float]) -> None:
        if tr.tracker is not None:
            tr.tracker.log_metrics(p.epochs_done, {**metrics, "stage": float(si)})
        if tr.ctx.is_main:
            seconds = metrics.get("epoch_seconds", math.nan)
            telemetry.training("finetune", cfg.run_name, p.epochs_done, {"loss": metrics.get("train_loss", math.nan)},
                               {"samples_per_s": metrics.get("train_items", 0.0) / seconds}, seconds, 0)  # fmt: skip
            shown = _shown(metrics, ("train_loss", "valid_loss", headline, "lr"))
            print(f"[{cfg.run_name}] stage {stage.name} epoch {done}/{stage.max_epochs} {shown}", flush=True)

    def stop(_: int, __: dict[str, float]) -> bool:
        return tr.patience.should_stop(cfg.schedule)

    def save(done: int, metrics: dict[str, float]) -> None:
        if done == stage.max_epochs or tr.patience.should_stop(cfg.schedule):
            _finish_stage(tr)
            if tr.best_state is not None:
                metrics = {**metrics, **tr.validate()}  # what the stage keeps: its best epoch's weights
                kept = tr.patience.best_epoch
                if tr.ctx.is_main and kept != done:  # the epoch line above showed other weights' figures
                    print(f"[{cfg.run_name}] stage {stage.name}: kept epoch {kept}'s weights (lowest valid_loss) "
                          f"{_shown(metrics, ('valid_loss', headline))}", flush=True)  # fmt: skip
        tr.save(metrics, run_id)
        if tr.meta.get("kill_after_epoch") == p.epochs_done and not tr.resumed:  # test hook: a worker lost on cue
            os._exit(KILLED_ON_CUE)

    drive(p.epoch_in_stage, stage.max_epochs, step, Cadence(evaluate=1, log=1, save=1), evaluate=evaluate,
          log=log_fn, save=save, should_stop=stop)  # fmt: skip


def _shown(metrics: dict[str, float], keys: tuple[str, ...]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in keys)


def _finish_stage(tr: Trainer) -> None:
    """End of a stage: its best weights back (Keras' restore_best_weights), marked done for a resume."""
    if tr.best_state is not None:
        tr.model.load_state_dict(tr.best_state)
    tr.progress.stage_done = True


def finetune_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's worker function: :func:`run_finetuning`, its final metrics reported to Ray Train."""
    import ray.train

    quiet_ray_train_reports()
    cfg = from_dict(FinetuneConfig, config["cfg"])
    announce_worker(cfg.run_name)
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    tr, final = run_finetuning(cfg, config["meta"], DistContext.from_ray())
    report = {k: v for k, v in final.items() if math.isfinite(v)}
    ray.train.report({**report, **tr.held(), "epoch": tr.progress.epochs_done, "finished": 1})
    if tr.tracker is not None:
        tr.tracker.finish()


def run_finetuning(cfg: FinetuneConfig, meta: dict[str, Any], ctx: DistContext) -> tuple[Trainer, dict[str, float]]:
    """One worker's whole fine-tuning run (resumed from the newest complete checkpoint, if any), in this process:
    stages, final validation and test metrics, the model exported to the run's storage (and MLflow) by rank 0.
    -> (the trainer, its final metrics); the caller finishes the tracker once it has reported."""
    tr = Trainer(cfg, meta, ctx)
    run_id = tr.restore()
    if ctx.is_main:
        tr.tracker = Tracker(cfg.tracking.experiment, cfg.run_name, run_id, cfg.tracking.enabled,
                             progress_metric="train_loss", backlog=tr.tracking_backlog)  # fmt: skip
        tags = {**meta.get("tags", {}), **{f"pbp.task.{k}_sha256": v for k, v in tr.data.digests.items()}}
        tr.tracker.log_config(cfg, tags)
    run_id = broadcast(tr.tracker.run_id if tr.tracker else None, ctx) or None
    with finish_on_error(tr.tracker):
        for si in range(tr.progress.stage, len(cfg.stages)):
            run_stage(tr, si, run_id)
        final = {**tr.validate(), **tr.test()}
        if ctx.is_main:
            _export(tr, final)  # the driver prints the final metrics (``final_metrics.json``)
    return tr, final


def _export(tr: Trainer, final: dict[str, float]) -> None:
    """The fine-tuned model as an MLflow model (pyfunc, safetensors + JSON) and in the run's storage dir."""

    from pbp.train.checkpoint import scratch_dir

    cfg, data = tr.cfg, tr.data
    info = TaskInfo(data.spec.kind, data.spec.n_classes, data.classes, cfg.task.seq_column, cfg.task.label_column)
    # The test split as the registry's gate identifies it: file, digest, columns and the row limit it was read with.
    test_split = (
        {
            "path": cfg.task.test,
            "sha256": data.digests.get("test", ""),
            "max_rows": cfg.task.max_rows if "test" in data.cut_short else 0,  # 0: the whole file was read
            "seq_column": cfg.task.seq_column,
            "label_column": cfg.task.label_column,
        }
        if cfg.task.test
        else {}
    )
    lineage = {"run_name": cfg.run_name, "init": cfg.init, "task_name": cfg.task.name, "task_digests": data.digests,
               "test_split": test_split, "baseline_reference": baseline_reference(tr.flat, tr.train_ref),
               **{k: v for k, v in tr.meta.get("tags", {}).items()}}  # fmt: skip
    local = save_finetuned(tr.model.cpu(), info, scratch_dir() / "model", lineage)
    try:
        run = tr.ckpt.run
        with run.fs.open_output_stream(f"{run.path}/final_metrics.json") as f:
            f.write(json.dumps(final, indent=1).encode())
        run.put_dir(local, "final_model")
        if tr.tracker is not None:
            # The shipped weights' validation metrics as final_valid_* (valid_* holds one point per epoch).
            shipped = {(f"final_{k}" if k.startswith("valid_") else k): v for k, v in final.items() if math.isfinite(v)}
            tr.tracker.log_metrics(tr.progress.epochs_done, shipped)
            if tr.tracker.enabled:
                from pbp.finetune.pyfunc import log_pyfunc
                from pbp.model.tokenizer import decode

                examples = [decode(t) for t in data.train.tokens[:3]]
                if tr.tracker.try_send(lambda: log_pyfunc(tr.tracker.run_id, local, examples, cfg.task.seq_column)):
                    tr.tracker.mark_model_logged()
                else:
                    again = ("the campaign logs its best trial's model from there as it ends" if "pbp.trial_id" in
                             tr.meta.get("tags", {}) else "the same command tries again, training nothing")  # fmt: skip
                    log.warning("the MLflow model of %s was not logged (MLflow did not take it: the warning above says "
                                "why); the model is in %s/final_model: %s", cfg.run_name, run.path, again)  # fmt: skip
    finally:
        shutil.rmtree(local.parent, ignore_errors=True)  # the model's local copy: in storage (and MLflow) now
    tr.model.to(tr.device)

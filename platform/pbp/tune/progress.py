"""What a campaign shows while it runs (one line per trial epoch with the best so far) and when it stops early or is
interrupted."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from ray import tune

from pbp import telemetry
from pbp.train.launch import mute_stopped_run
from pbp.tune.config import TuneConfig
from pbp.tune.report import CampaignSummary, format_params
from pbp.tune.search import EPOCH, FINISHED


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


class LiveProgress(tune.Callback):
    def __init__(self, campaign: str, metric: str, mode: str, num_samples: int) -> None:
        self.campaign, self.metric, self.mode, self.num_samples = campaign, metric, mode, num_samples
        self.best: tuple[float, str] | None = None

    def _line(self, text: str) -> None:
        print(f"[{self.campaign}] {text}", flush=True)

    def _export(self, trials: list, ending: Any = None, as_status: str = "") -> None:
        """Trials by state to Prometheus (through Ray's metrics): ended trials count as completed when their last
        result was the final one, else as pruned (stopped by ASHA)."""
        states = {"running": 0, "completed": 0, "pruned": 0, "failed": 0}
        for t in trials:
            status = as_status if t is ending else t.status  # Tune updates the status after its callbacks
            if status == "RUNNING":
                states["running"] += 1
            elif status == "ERROR":
                states["failed"] += 1
            elif status == "TERMINATED":
                states["completed" if (t.last_result or {}).get(FINISHED) else "pruned"] += 1
        telemetry.campaign(self.campaign, states, self.metric, self.best[0] if self.best else None)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"trial {trial.trial_id} started: {format_params(trial.config)}")
        self._export(trials)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        if result.get(FINISHED) and (self.best is None or _better(value, self.best[0], self.mode)):
            self.best = (value, trial.trial_id)
        best = f"best so far {self.best[0]:.4f} ({self.best[1]})" if self.best else "no finished trial yet"
        what = "finished" if result.get(FINISHED) else f"epoch {result.get(EPOCH)}"
        self._line(f"trial {trial.trial_id} {what}: {self.metric}={value:.4f}; {best}")
        self._export(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = 1 + sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)
        last = trial.last_result or {}
        value = last.get(self.metric)
        shown = f" ({self.metric}={value:.4f})" if isinstance(value, int | float) and math.isfinite(value) else ""
        # As the closing summary counts them: completed when the last result was the final one, else pruned.
        how = "completed" if last.get(FINISHED) else f"pruned at epoch {last.get(EPOCH, '?')}{shown}"
        if not last.get(FINISHED):  # its workers are being ended: what they print now is not the campaign's news
            from pbp.tune.campaign import trial_run_name

            mute_stopped_run(trial_run_name(self.campaign, trial.trial_id))
        # Out of the campaign's trials, not of those Tune has created so far (it creates them one by one).
        self._line(f"trial {trial.trial_id} ended: {how}; {done}/{max(self.num_samples, len(trials))} trials ended")
        self._export(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"trial {trial.trial_id} FAILED (after its retries): {trial_error(trial)}")
        self._export(trials, trial, "ERROR")


def trial_error(trial: Any) -> str:
    """A failed trial's error in one line (the traceback's last line) and where the whole one is in storage."""
    text = ""
    try:  # the driver's staging copy first: storage gets the file only at the next sync
        local = trial.error_file
        text = Path(local).read_text() if local and Path(local).is_file() else str(trial.get_error() or "")
    except Exception:  # the error file unreadable: say where it should be
        pass
    last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
    fs = getattr(getattr(trial, "storage", None), "storage_filesystem", None)
    scheme = "s3://" if getattr(fs, "type_name", "") == "s3" else ""  # Tune keeps the path without its scheme
    where = f"{scheme}{trial.path}/error.txt" if getattr(trial, "path", None) else "the trial's directory in storage"
    return f"{last or 'no error text'} (the whole error: {where})"


class CampaignStopper(tune.Stopper):
    """Stops the whole campaign when a trial reaches ``target``, or after ``patience`` finished trials in a row
    without a new best."""

    def __init__(self, metric: str, mode: str, target: float | None, patience: int) -> None:
        self.metric, self.mode, self.target, self.patience = metric, mode, target, patience
        self.best: float | None = None
        self.since_best = 0
        self.reached = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        value = result.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        if self.target is not None and (value >= self.target if self.mode == "max" else value <= self.target):
            self.reached = True
        if result.get(FINISHED):
            if self.best is None or _better(value, self.best, self.mode):
                self.best, self.since_best = value, 0
            else:
                self.since_best += 1
        return False

    def stop_all(self) -> bool:
        return self.reached or (self.patience > 0 and self.since_best >= self.patience)


class _DropStopSignalNote(logging.Filter):
    """Tune's note on the stop signal pbp sends ("Stop signal received (e.g. via SIGINT/Ctrl+C) ... Press CTRL+C to
    skip"), which would tell the user of a Ctrl-C nobody pressed: dropped once, then the filter removes itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Stop signal received"):
            return True
        logging.getLogger("ray.tune.tune").removeFilter(self)
        return False


class TrackingWatch(tune.Callback):
    """A trial that fails (or is about to be retried) while MLflow does not answer interrupts the campaign as Ctrl-C
    does: every trial started then would fail at once (its fine-tuning must find or create its MLflow run), burning
    the campaign's remaining trials and their retries in a minute (a chaos run: 4 of 6 FAILED, then a traceback).
    Tune's own stop signal (SIGUSR1, handled like SIGINT during ``Tuner.fit``) saves the experiment with the running
    trials unfinished, so ``--resume`` continues them and runs the ones not started; stopping the campaign instead
    ended those trials for good (a resumed campaign "finished" with 4 of 6 trials). The driver then says that MLflow
    does not answer and how to resume (``pbp.tune.campaign``)."""

    def __init__(self) -> None:
        self.lost = ""

    def _check(self) -> None:
        import signal

        from pbp.train.tracking import tracking_unanswered

        if self.lost:
            return
        self.lost = tracking_unanswered() or ""
        if self.lost and callable(signal.getsignal(signal.SIGUSR1)):  # Tune's handler (never SIG_DFL: that kills)
            print(f"{self.lost}: stopping the campaign, its state saved", file=sys.stderr, flush=True)
            logging.getLogger("ray.tune.tune").addFilter(_DropStopSignalNote())
            signal.raise_signal(signal.SIGUSR1)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check()


class ResumeState(tune.Callback):
    """What Tune's experiment snapshot does not hold, kept with it: the ASHA scheduler's rungs, the stopper's counts
    and the best so far. Tune saves every callback's ``get_state`` beside the trial states of each snapshot and hands
    it back on ``Tuner.restore``, but rebuilds the scheduler and stopper as the campaign first made them: a resumed
    campaign had empty rungs, so its first trials at each rung always went on (one that the interrupted driver had
    announced as pruned ran to the end and became the best) and the two campaigns differed. With this state, a trial
    resumed from a snapshot taken before its stop meets the same rung values again. The objects are the campaign's
    own (one pickle, ``tuner.pkl``, holds them and this callback, so they are the same objects after a restore)."""

    ASHA_KEYS = ("_trial_info", "_brackets", "_counter", "_num_stopped")

    def __init__(self, scheduler: Any, stopper: CampaignStopper, progress: LiveProgress) -> None:
        self.scheduler, self.stopper, self.progress = scheduler, stopper, progress

    def get_state(self) -> dict[str, Any]:
        from ray.tune.schedulers import AsyncHyperBandScheduler

        state: dict[str, Any] = {"stopper": (self.stopper.best, self.stopper.since_best, self.stopper.reached),
                                 "best": self.progress.best}  # fmt: skip
        if isinstance(self.scheduler, AsyncHyperBandScheduler):
            state["asha"] = {k: getattr(self.scheduler, k) for k in self.ASHA_KEYS}
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.stopper.best, self.stopper.since_best, self.stopper.reached = state["stopper"]
        self.progress.best = state["best"]
        for k, v in (state.get("asha") or {}).items():
            setattr(self.scheduler, k, v)


def stop_reason(cfg: TuneConfig, summary: CampaignSummary, seconds: float) -> str:
    """Why a campaign ended with fewer trials than ``num_samples`` (empty when it ran them all), by the rules of
    ``CampaignStopper`` and Tune's time budget; ``seconds``: its wall time in this session."""
    if len(summary.trials) >= cfg.num_samples:
        return ""
    stop, mode = cfg.stop, summary.mode
    head = f"stopped after {len(summary.trials)} of {cfg.num_samples} trials"
    if stop.target is not None:
        values = [v for t in summary.trials for v in [t.value, *(c[1] for c in t.curve)] if v is not None]
        if any(v == stop.target or _better(v, stop.target, mode) for v in values):
            return f"{head}: {summary.metric} reached stop.target={stop.target:g}"
    if stop.time_budget_s and seconds >= 0.95 * stop.time_budget_s:
        return f"{head}: stop.time_budget_s={stop.time_budget_s:g} spent (running trials were stopped)"
    if stop.patience_trials:
        return f"{head}: {stop.patience_trials} finished trials in a row without a new best (stop.patience_trials)"
    return head


class TuneInterruption(logging.Filter):
    """Ctrl-C (SIGINT) during ``Tuner.fit``: Tune saves the experiment state and returns its results as if the
    campaign had ended (the interrupted trials looked pruned, the parent run FINISHED, exit 0), saying only, in its
    log, "Experiment has been interrupted ... Resume experiment with: Tuner.restore(...)", advice that is not pbp's.
    That warning is the one sign Tune gives: around the fit, this filter takes it off Tune's logger and records it."""

    MESSAGE = "has been interrupted, but the most recent state was saved"

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.MESSAGE in record.getMessage():
            self.seen = True
            return False
        return True

    def __enter__(self) -> TuneInterruption:
        logging.getLogger("ray.tune.tune").addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("ray.tune.tune").removeFilter(self)


def resume_command(cfg: TuneConfig) -> str:
    """The command that continues the campaign: as a job where this driver is one (``pbp submit tune``), else
    ``pbp tune``."""
    how = "pbp submit tune" if os.environ.get("PBP_SUBMISSION_ID") else "pbp tune"
    return f"{how} --resume {cfg.name}" + (f" storage_path={cfg.storage_path}" if cfg.storage_path else "")


def interrupted_message(cfg: TuneConfig, trials: int | None = None) -> str:
    created = (
        "" if trials is None else f" with {trials} of {cfg.num_samples} trials created (the running ones unfinished)"
    )
    return f"campaign {cfg.name} stopped{created}; `{resume_command(cfg)}` continues it from storage"

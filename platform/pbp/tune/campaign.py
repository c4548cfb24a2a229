"""``pbp tune``: a search campaign. Ray Tune's ``Tuner`` over a trial function that builds and fits the fine-tuning
TorchTrainer (Train V2), TPE (Optuna) + ASHA over epochs, state in storage, one MLflow parent run.

Layout of a campaign in storage (``<storage_path>/<name>/``): Tune's experiment state (what ``--resume`` restores),
``trials/<name>-<trial id>/`` (each trial's fine-tuning run: checkpoints, final_model), and at the end
``study.db`` (the Optuna study, SQLite: ``optuna-dashboard study.db``; also what ``--warm-start`` reads),
``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pbp.config import to_dict
from pbp.finetune.config import FinetuneConfig
from pbp.scratch import make, scratch
from pbp.train.metrics import BASELINE_SUFFIX, WORKER_SECONDS, WORKER_STARTED
from pbp.tune.config import TuneConfig
from pbp.tune.report import CampaignSummary, TrialRecord, best_trial, quiet_optuna, summary_to_json, write_report
from pbp.tune.search import (
    EPOCH,
    FINISHED,
    base_finetune_dict,
    check_space,
    distributions,
    make_searcher,
    trial_finetune_config,
)

log = logging.getLogger("pbp.tune")
EPOCH_SECONDS = "epoch_seconds"  # reported by every fine-tuning epoch (pbp.finetune.loop.run_stage)


class CampaignError(ValueError):
    """A campaign that cannot start or continue; the message says why and what to do."""


TRIALS_DIR = "trials"
"""The trials' ``checkpoint.storage_path`` under the campaign's own directory."""


def trial_run_url(campaign_url: str, campaign: str, trial_id: str) -> str:
    """A trial's fine-tuning run directory (its checkpoints, ``final_model/``), as its ``FinetuneConfig.run_url``."""
    return f"{campaign_url}/{TRIALS_DIR}/{trial_run_name(campaign, trial_id)}"


def trial_run_name(campaign: str, trial_id: str) -> str:
    return f"{campaign}-{trial_id}"


def run_trial(config: dict[str, Any], base: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One trial: the sampled values on top of the base fine-tuning config, fitted by a TorchTrainer whose run name
    and storage stay the same across retries (so a retried trial resumes from its checkpoint)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pbp.finetune.launch import build_trainer
    from pbp.train.launch import TRIAL_KEYS, fit

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_finetune_config(base, config, trial_run_name(ctx["campaign"], trial_id), ctx["trials_url"])
    meta = {
        "init": ctx["init"],  # every trial starts from the version the campaign's driver pinned an alias to
        "tags": {**ctx["tags"], "mlflow.parentRunId": ctx["parent_run_id"], "pbp.trial_id": trial_id},
    }
    fit(build_trainer(cfg, meta, callbacks=[TuneReportCallback()]), cfg.scaling, keys=TRIAL_KEYS)


@dataclass
class CampaignResult:
    summary: CampaignSummary
    report: Path
    parent_run_id: str
    best: TrialRecord | None
    train_seconds: dict[str, float] = field(default_factory=dict)
    """Per trial id: seconds in its training epochs (the sum of the ``epoch_seconds`` its fine-tuning reported)."""
    finished_before: bool = False
    """A ``--resume`` of a campaign that had nothing left to run (no trial started)."""
    best_model_logged: bool = True
    """The best trial's model is in MLflow (its child run's ``model``, copied to the parent's ``best_model``)."""


def _metric_and_mode(cfg: TuneConfig, base: FinetuneConfig) -> tuple[str, str]:
    from pbp.model.finetune import TaskSpec

    kind = TaskSpec(base.task.kind, 2).flattened().kind
    metric = cfg.metric or f"valid_{kind.metric_name}"
    return metric, cfg.resolved_mode(metric)


def run_campaign(cfg: TuneConfig, *, resume: bool = False, warm_start: str | None = None, address: str | None = None):
    """Run (or, with ``resume``, continue) a campaign; everything checkable is checked before any trial starts."""
    from pbp.data.storage import check_object_storage
    from pbp.finetune.launch import resolve_config
    from pbp.names import check_name
    from pbp.train.config import ScalingConfig
    from pbp.train.launch import (
        TRIAL_KEYS,
        alive_nodes,
        concurrency_note,
        connect_ray,
        git_commit,
        quiet_trial_starts,
        require_room,
    )
    from pbp.train.tracking import Tracker

    # Every file the campaign needs is read before it connects: a submitted job runs in Ray's unpacked copy of the
    # project, which Ray was seen to delete while the job ran (the linked fine-tuning config was then "not found").
    base_doc = base_finetune_dict(cfg)
    base_cfg = check_space(cfg, base_doc)
    url = campaign_url(cfg.name, cfg.storage_path)
    check_object_storage(url)
    _check_campaign_state(cfg, url, resume)
    # task files and starting point checked, paths made absolute; a resumed campaign keeps its pinned init version
    base_cfg, ft_meta = resolve_config(base_cfg, init_version=_saved_init(url) if resume else "")
    metric, mode = _metric_and_mode(cfg, base_cfg)
    storage = url.rsplit("/", 1)[0]
    warm = warm_start_trials(cfg, f"{storage}/{check_name(warm_start, '--warm-start')}") if warm_start else []
    base = to_dict(replace(base_cfg, tracking=replace(base_cfg.tracking, experiment=cfg.experiment)))
    base["scaling"].update(num_workers=cfg.trial_workers, cpus_per_worker=cfg.cpus_per_trial_worker,
                           use_gpu=cfg.use_gpu, max_failures=cfg.max_failures,
                           resource_wait_s=cfg.trial_resource_wait())  # fmt: skip
    trial = ScalingConfig(**base["scaling"])  # each trial's workers
    connect_ray(address)
    quiet_trial_starts()
    nodes = alive_nodes()
    require_room(nodes, trial, TRIAL_KEYS)
    if not resume:  # saved once nothing can refuse the start: a refused start leaves no campaign behind
        _save_config(url, cfg, base_doc, ft_meta["init"] if ft_meta["init"] != base_cfg.init else "")
    parent = Tracker(cfg.experiment, cfg.name, None, progress_metric="best_value")
    tags = {"pbp.campaign": cfg.name, "pbp.git_commit": git_commit(), "pbp.metric": metric, "pbp.mode": mode}
    parent.log_config(cfg, {**tags, **{k: v for k, v in ft_meta["tags"].items() if k.startswith("pbp.task")}})
    note = concurrency_note(nodes, trial, min(cfg.max_concurrent_trials, cfg.num_samples))
    if note:
        print(f"[{cfg.name}] {note}", flush=True)
    ctx = {"campaign": cfg.name, "trials_url": f"{url}/{TRIALS_DIR}", "parent_run_id": parent.run_id,
           "tags": {**ft_meta["tags"], "pbp.campaign": cfg.name}, "init": ft_meta["init"]}  # fmt: skip
    t0 = time.time()
    tuner = _tuner(cfg, base_cfg, base, ctx, metric, mode, url, resume, warm_start, warm)
    grid, finished_before = _fit(tuner, cfg, parent.run_id, resume)
    from pbp.tune.progress import stop_reason

    summary = summarize(grid, cfg, metric, mode)
    summary.stopped = stop_reason(cfg, summary, time.time() - t0)
    with _tracking_lost_says_resume(cfg, check=any(t.status == "failed" for t in summary.trials)):
        report, best_logged = finish_campaign(cfg, summary, parent, url, time.time() - t0)
    return CampaignResult(summary, report, parent.run_id, best_trial(summary), train_seconds(grid), finished_before,
                          best_logged)  # fmt: skip


def _check_campaign_state(cfg: TuneConfig, url: str, resume: bool) -> None:
    """A new campaign must not exist in storage yet; a resumed one must."""
    exists = campaign_exists(url)
    if exists and not resume:
        from pbp.tune.progress import resume_command

        raise CampaignError(f"campaign {cfg.name!r} already exists at {url}: `{resume_command(cfg)}` "
                            "continues it, or choose another name")  # fmt: skip
    if resume and not exists:
        raise CampaignError(f"campaign {cfg.name!r}: nothing to resume at {url}")


def _lost_error(cfg: TuneConfig, said: str) -> Exception:
    """One line saying MLflow does not answer (``said``) and how to continue."""
    from pbp.train.tracking import TrackingUnavailableError
    from pbp.tune.progress import resume_command

    return TrackingUnavailableError(
        f"{said}; campaign {cfg.name} stopped without its report and parent run: `{resume_command(cfg)}` continues "
        "it once MLflow answers (unfinished and failed trials are run again)"
    )


@contextmanager
def _tracking_lost_says_resume(cfg: TuneConfig, check: bool) -> Iterator[None]:
    """MLflow not answering at a campaign's end (its trials failed for it, or the parent run cannot be written) is
    one line saying so and how to continue, not a traceback: ``--resume`` tries the failed trials again and writes
    the report and parent run."""
    from pbp.train.tracking import tracking_unanswered, unanswered

    said = tracking_unanswered() if check else None
    if said:
        raise _lost_error(cfg, said)
    try:
        yield
    except Exception as e:
        said = unanswered(e, advice=False)
        if said is None:
            raise
        raise _lost_error(cfg, said) from None


def _fit(tuner, cfg: TuneConfig, parent_run_id: str, resume: bool):
    """``tuner.fit()`` (none for a resumed campaign with nothing left to run) -> (its results, whether it had
    finished before). A stop, a failure or an interruption marks the parent run and says how to continue; either
    way the placement groups the trials left held are released."""
    from pbp.console import quiet_logger
    from pbp.train.tracking import TrackingUnavailableError, ended_status, mark_family_unfinished
    from pbp.tune.progress import TuneInterruption, interrupted_message

    with _quiet_analysis():
        grid = _finished_results(tuner, cfg) if resume else None
    interruption = TuneInterruption()
    try:
        # Tune's INFO line "Wrote the latest version of all result files and experiment state to ..." is off too.
        with _quiet_analysis(), quiet_logger("ray.tune.tune"), interruption:
            finished_before = grid is not None
            if grid is None:
                grid = tuner.fit()
        if interruption.seen:  # Ctrl-C, or MLflow lost (``TrackingWatch`` interrupts the fit as Ctrl-C does)
            lost = _watch_verdict(tuner)
            raise _lost_error(cfg, lost) if lost else KeyboardInterrupt(interrupted_message(cfg, len(grid)))
    except BaseException as e:  # stopped (--resume continues it) or failed: no run left RUNNING in MLflow
        if not isinstance(e, TrackingUnavailableError):  # (MLflow does not answer: nothing can be marked)
            mark_family_unfinished(parent_run_id, ended_status(e))
        _release_placement_groups()
        if isinstance(e, SystemExit):  # `pbp jobs stop` (SIGTERM, which Ray's driver turns into SystemExit)
            print(f"pbp: stopped: {interrupted_message(cfg)}", file=sys.stderr, flush=True)
        elif isinstance(e, KeyboardInterrupt) and not str(e):  # a Ctrl-C outside Tune's own handling
            raise KeyboardInterrupt(interrupted_message(cfg)) from None
        raise
    _release_placement_groups()
    return grid, finished_before


def _quiet_analysis():
    """Tune's warning "Failed to fetch metrics for N trial(s): ... FileNotFoundError(...)" off (its errors still
    show), on the restore, the results and the fit alike: it names every trial stopped before its first report (a
    time budget, a stop criterion, the driver's own stop), which read as lost data; the summary counts such a trial
    as pruned with no value, and a resumed campaign runs it again."""
    from pbp.console import quiet_logger

    return quiet_logger("ray.tune.analysis.experiment_analysis", logging.ERROR)


def _watch_verdict(tuner) -> str:
    """What the campaign's ``TrackingWatch`` saw (MLflow not answering), '' if nothing or no watch (a campaign an
    older pbp started). Ray's Tuner has no public accessor for its run config."""
    from pbp.tune.progress import TrackingWatch

    callbacks = tuner._local_tuner.get_run_config().callbacks or []
    return next((c.lost for c in callbacks if isinstance(c, TrackingWatch)), "")


def _release_placement_groups() -> None:
    """No CPUs left taken by the campaign's trials (see ``pbp.train.launch.release_placement_groups``)."""
    from pbp.train.launch import release_placement_groups

    try:
        held = release_placement_groups()
    except Exception as e:  # the cluster unreachable: nothing to release from here
        log.debug("placement groups not checked: %s", e)
        return
    if held:
        log.warning("released %d placement group(s) left held by stopped trials: %s", len(held), ", ".join(held))


def _finished_results(tuner, cfg: TuneConfig):
    """A resumed campaign's results when nothing is left to run (its num_samples trials ended, none failed: Tune
    would retry a failed one), else None. Its report and parent run are then written again from them. A trial the
    interrupted driver had started counts among the num_samples but has not ended (RUNNING or PENDING in Tune's
    saved state): the campaign is not finished (it was taken for finished, and the trial reported as pruned)."""
    try:
        grid = tuner.get_results()
        statuses = [t.status for t in grid._experiment_analysis.trials]  # Ray's ResultGrid keeps no public status
    except Exception:  # no results to read yet: let Tune continue the campaign
        return None
    ended = all(s == "TERMINATED" for s in statuses)
    return grid if len(grid) >= cfg.num_samples and ended and not grid.errors else None


def campaign_url(name: str, storage_path: str = "") -> str:
    from pbp.stack.endpoints import runs_storage

    storage = (storage_path or runs_storage("tune")).rstrip("/")
    return f"{storage}/{name}"


BASE_FILE = "finetune_base.yaml"
INIT_FILE = "init_version.txt"
"""The fine-tuning config a campaign's trials start from, with its overrides applied, as the campaign started."""


def _save_config(url: str, cfg: TuneConfig, base: dict[str, Any], init_version: str = "") -> None:
    """What ``pbp tune --resume NAME`` reads: the campaign's config and its trials' base fine-tuning config ``base``
    (:func:`pbp.tune.search.base_finetune_dict`; the file ``cfg.finetune`` may change before a resume), and the
    version an alias ``init`` was pinned to."""
    from pbp.config import dump_yaml
    from pbp.data.storage import Store

    store = Store(url)
    store.put_bytes(BASE_FILE, yaml.safe_dump(base, sort_keys=False).encode())
    if init_version:
        store.put_bytes(INIT_FILE, init_version.encode())
    store.put_bytes("tune_config.yaml", dump_yaml(cfg).encode())  # last: the campaign exists once this is there


def _saved_init(url: str) -> str:
    """The version an alias ``init`` was pinned to when the campaign started ('' for none)."""
    from pbp.data.storage import Store

    store = Store(url)
    return store.get_bytes(INIT_FILE).decode() if store.exists(INIT_FILE) else ""


def load_campaign_config(name: str, storage_path: str = "") -> TuneConfig:
    """The config a campaign was started with (saved in its storage), for ``pbp tune --resume NAME``: its trials
    start from the fine-tuning config saved with it (a local copy), whatever ``cfg.finetune`` holds now; a change
    since is said."""
    from pbp.config import from_dict
    from pbp.data.storage import Store
    from pbp.names import check_name
    from pbp.train.run_identity import changed_keys, flatten

    url = campaign_url(check_name(name, "--resume"), storage_path)
    store = Store(url)
    try:
        cfg = from_dict(TuneConfig, yaml.safe_load(store.get_bytes("tune_config.yaml")))
    except FileNotFoundError:
        raise CampaignError(f"campaign {name!r}: no tune_config.yaml at {url}; nothing to resume") from None
    if not store.exists(BASE_FILE):  # a campaign started before the base was saved: the file as it is now
        return cfg
    saved = store.get_bytes(BASE_FILE)
    try:
        now = flatten(base_finetune_dict(cfg))
    except (OSError, ValueError):  # the file is gone or broken: the saved copy is all there is
        now = {}
    then = flatten(yaml.safe_load(saved))
    changed = changed_keys(then, now)
    if now and changed:
        print(f"[{name}] {cfg.finetune} changed since the campaign started ({', '.join(changed[:6])}"
              f"{' ...' if len(changed) > 6 else ''}): its trials continue from the config it started with", flush=True)  # fmt: skip
    local = make("campaign") / BASE_FILE  # read by the trials while the driver lives
    local.write_bytes(saved)
    return replace(cfg, finetune=str(local), finetune_overrides=[])


def campaign_exists(url: str) -> bool:
    """A campaign was started at ``url`` (:func:`campaign_url`): ``pbp tune --resume`` continues it."""
    from pbp.train.checkpoint import storage_dir

    return storage_dir(url).size("tune_config.yaml") is not None


def _tuner(cfg: TuneConfig, base_cfg: FinetuneConfig, base: dict, ctx: dict, metric: str, mode: str, url: str,
           resume: bool, warm_start: str | None, warm: list):  # fmt: skip
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from pbp.stack.endpoints import resolve
    from pbp.tune.progress import CampaignStopper, LiveProgress, ResumeState, TrackingWatch

    fs, path = None, url
    if url.startswith("s3://"):
        fs, path = resolve().pyarrow_fs(url), url[len("s3://") :]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, ctx=ctx), {"CPU": 0, "memory": 64 * 2**20}
    )
    if resume:
        with _quiet_analysis():
            return tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=fs)
    with quiet_optuna():  # no "A new study created in memory" line
        searcher = make_searcher(cfg, metric, mode)
    for t in warm:
        searcher.study.add_trial(t)
    if warm:
        print(f"[{cfg.name}] warm start: {len(warm)} evaluated points from campaign {warm_start}", flush=True)
    total_epochs = sum(s.max_epochs for s in base_cfg.stages)
    scheduler = (
        ASHAScheduler(time_attr=EPOCH, metric=metric, mode=mode, max_t=(cfg.asha.max_t or total_epochs) + 1,
                      grace_period=cfg.asha.grace_period, reduction_factor=cfg.asha.reduction_factor)
        if cfg.asha.enabled else FIFOScheduler()
    )  # fmt: skip
    stopper = CampaignStopper(metric, mode, cfg.stop.target, cfg.stop.patience_trials)
    progress = LiveProgress(cfg.name, metric, mode, cfg.num_samples)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials, time_budget_s=cfg.stop.time_budget_s or None,
        ),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=path.rsplit("/", 1)[0], storage_filesystem=fs, verbose=0,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            stop=stopper,
            callbacks=[progress, ResumeState(scheduler, stopper, progress), TrackingWatch()],
        ),
    )  # fmt: skip


def summarize(grid, cfg: TuneConfig, metric: str, mode: str) -> CampaignSummary:
    """Tune's results -> plain records: status completed (fine-tuning finished), pruned (stopped early), failed."""
    trials: list[TrialRecord] = []
    baseline: float | None = None
    for r in grid:
        m = r.metrics or {}
        trial_id = _trial_id(r)
        df = r.metrics_dataframe
        curve: list[tuple[int, float]] = []
        if df is not None and metric in df and EPOCH in df:
            rows = df[df[FINISHED] != 1] if FINISHED in df else df
            curve = [(int(e), float(v)) for e, v in zip(rows[EPOCH], rows[metric], strict=True) if v == v]
        status = "failed" if r.error else ("completed" if m.get(FINISHED) else "pruned")
        if status == "completed" and baseline is None and m.get(metric + BASELINE_SUFFIX) is not None:
            baseline = float(m[metric + BASELINE_SUFFIX])
        value = m.get(metric) if status == "completed" else (curve[-1][1] if curve else None)
        trials.append(TrialRecord(trial_id=trial_id, number=_number(str(m.get("experiment_tag", "")), len(trials)), params=dict(r.config or {}),
                                  status=status, value=None if status == "failed" else value, curve=curve,
                                  seconds=float(m.get("time_total_s", 0.0)), worker_seconds=worker_seconds(df)))  # fmt: skip
    trials.sort(key=lambda t: t.number)
    return CampaignSummary(cfg.name, metric, mode, trials, baseline)


def worker_seconds(df) -> float | None:
    """A trial's seconds holding its workers, from its reports: each attempt's (a retry or a resumed campaign starts
    one) last ``worker_seconds``, summed. Tune's ``time_total_s`` also counts the wait for a free slot before the
    workers started, hours for a trial queued behind its siblings. Not counted: an attempt's time after its last
    report (a failed one's, up to an epoch). None where a report lacks it (never reported; reports of an older pbp)."""
    if df is None or WORKER_SECONDS not in df or WORKER_STARTED not in df or not len(df):
        return None
    held = df[[WORKER_STARTED, WORKER_SECONDS]]
    if held.isna().any().any():
        return None
    return float(held.groupby(WORKER_STARTED)[WORKER_SECONDS].max().sum())


def train_seconds(grid) -> dict[str, float]:
    """Per trial id: the sum of the per-epoch ``epoch_seconds`` in its reports (its time in training epochs)."""
    out: dict[str, float] = {}
    for r in grid:
        df = r.metrics_dataframe
        out[_trial_id(r)] = float(df[EPOCH_SECONDS].sum()) if df is not None and EPOCH_SECONDS in df else 0.0
    return out


def _trial_id(result) -> str:
    return str((result.metrics or {}).get("trial_id") or Path(result.path).name)


def _number(experiment_tag: str, fallback: int) -> int:
    """Tune's experiment tag starts with the trial's 1-based creation number ("3_head_dropout=0.2,...")."""
    head = experiment_tag.split("_", 1)[0]
    return int(head) - 1 if head.isdigit() else fallback


def study_db(summary: CampaignSummary, cfg: TuneConfig, out: Path) -> Path:
    """The campaign as an Optuna study in SQLite (optuna-dashboard opens it; --warm-start reads it)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    out.unlink(missing_ok=True)
    with quiet_optuna():
        study = optuna.create_study(study_name=cfg.name, storage=f"sqlite:///{out}",
                                    direction="maximize" if summary.mode == "max" else "minimize")  # fmt: skip
    dists = distributions(cfg.space)
    state = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    for t in summary.trials:
        if t.status not in state or set(t.params) != set(dists):
            continue
        complete = t.status == "completed" and t.value is not None
        study.add_trial(create_trial(
            state=state[t.status] if t.status != "completed" or complete else TrialState.FAIL,
            value=t.value if complete else None, params=t.params, distributions=dists,
            intermediate_values={e: v for e, v in t.curve}, user_attrs={"ray_trial_id": t.trial_id,
                                                                        "seconds": t.seconds,
                                                                        "worker_seconds": t.worker_seconds},
        ))  # fmt: skip
    return out


def warm_start_trials(cfg: TuneConfig, other_url: str) -> list:
    """The completed and pruned trials of an earlier campaign on the same space (its study.db), to seed a new
    campaign's study with; another space is refused naming both."""
    import optuna
    from optuna.trial import TrialState

    from pbp.data.storage import Store

    with scratch("warm") as tmp:  # the other study's copy: gone once read
        local = Path(tmp) / "study.db"
        try:
            local.write_bytes(Store(other_url).get_bytes("study.db"))
        except FileNotFoundError:
            raise CampaignError(
                f"--warm-start: {other_url}/study.db not found (the campaign must have finished)"
            ) from None
        with quiet_optuna():  # no "Study name was omitted but trying to load" line
            trials = optuna.load_study(study_name=None, storage=f"sqlite:///{local}").get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
            )
    dists = distributions(cfg.space)
    found = []
    for t in trials:
        if t.distributions != dists:
            raise CampaignError(f"--warm-start: {other_url} searched another space: "
                                f"{space_difference(t.distributions, dists)}")  # fmt: skip
        found.append(t)
    return found


def space_difference(then: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between two spaces of Optuna distributions, key by key: ``head_dropout: UniformDistribution(
    high=0.6, low=0.0) there, UniformDistribution(high=0.3, low=0.0) here; stages.1.lr: only there``."""
    parts = []
    for key in sorted(set(then) | set(now)):
        if key not in now:
            parts.append(f"{key}: only there")
        elif key not in then:
            parts.append(f"{key}: only here")
        elif then[key] != now[key]:
            parts.append(f"{key}: {then[key]} there, {now[key]} here")
    return "; ".join(parts)


def finish_campaign(cfg: TuneConfig, summary: CampaignSummary, parent, url: str,
                    wall_s: float) -> tuple[Path, bool]:  # fmt: skip
    """Child run statuses, cost ledger, study, summary and report: to MLflow (parent run) and to storage. -> (the
    report, whether the best trial's model is in MLflow)."""
    from pbp.data.storage import Store

    out = Path(cfg.report_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    cpus = cfg.trial_workers * cfg.cpus_per_trial_worker
    units = cfg.trial_workers if cfg.use_gpu else cpus
    per_trial = {t.trial_id: t.worker_seconds * units for t in summary.trials if t.worker_seconds is not None}
    ledger: dict[str, Any] = {
        "unit": "GPU-seconds" if cfg.use_gpu else "CPU-seconds", "wall_seconds": wall_s, "trials": per_trial,
        "total": sum(per_trial.values()),
        # failed: their time after their last report (up to an epoch) is not counted
        "lower_bounds": [t.trial_id for t in summary.trials if t.status == "failed" and t.trial_id in per_trial],
        # never reported (failed or stopped before their first epoch ended): their time is not known, not in the total
        "unmeasured": [t.trial_id for t in summary.trials if t.worker_seconds is None],
    }  # fmt: skip
    (out / "ledger.json").write_text(json.dumps(ledger, indent=1))
    (out / "summary.json").write_text(summary_to_json(summary))
    study_db(summary, cfg, out / "study.db")
    report = write_report(summary, out)
    store = Store(url)
    for name in ("study.db", "summary.json", "ledger.json", "report.html"):
        store.put_file(name, out / name)
    best = best_trial(summary)
    return report, _log_parent(parent, cfg, summary, best, ledger, out, url)


def _log_parent(parent, cfg: TuneConfig, summary: CampaignSummary, best: TrialRecord | None, ledger: dict,
                out: Path, url: str) -> bool:  # fmt: skip
    """-> whether the best trial's model is in MLflow."""
    from pbp.train.tracking import BEST_MODEL_TAG, find_run

    if not parent.enabled:
        return True
    logged = True
    client = parent.client
    exp = client.get_experiment_by_name(cfg.experiment)
    counts = {s: sum(t.status == s for t in summary.trials) for s in ("completed", "pruned", "failed")}
    for t in summary.trials:
        child = find_run(client, exp.experiment_id, trial_run_name(cfg.name, t.trial_id))
        if child is None:
            continue
        client.set_tag(child, "pbp.trial_status", t.status)
        if t.status != "completed":
            client.set_terminated(child, status="KILLED" if t.status == "pruned" else "FAILED")
    if summary.stopped:
        client.set_tag(parent.run_id, "pbp.stopped_early", summary.stopped)
    metrics = {f"trials_{k}": float(v) for k, v in counts.items()}
    metrics["cost_total"] = float(ledger["total"])
    if best is not None and best.value is not None:
        metrics["best_value"] = float(best.value)
        if summary.baseline is not None:
            metrics["best_value" + BASELINE_SUFFIX] = summary.baseline
        for k, v in best.params.items():
            client.set_tag(parent.run_id, f"best.{k}", str(v))
        child = find_run(client, exp.experiment_id, trial_run_name(cfg.name, best.trial_id))
        logged = bool(child)  # no child run: no model to hand on
        if child:
            client.set_tag(parent.run_id, "pbp.best_trial", best.trial_id)
            stored = f"{trial_run_url(url, cfg.name, best.trial_id)}/final_model"
            logged = _copy_best_model(client, child, parent.run_id, stored)
            if logged:
                client.set_tag(parent.run_id, BEST_MODEL_TAG, f"runs:/{child}/model")
    parent.log_metrics(len(summary.trials), metrics)
    client.log_artifacts(parent.run_id, str(out), "campaign")
    parent.finish("FINISHED" if best is not None or not counts["failed"] else "FAILED")
    return logged


def _copy_best_model(client, child_run: str, parent_run: str, stored: str) -> bool:
    """The best trial's model to the parent run (``best_model``). A trial that ended while MLflow did not answer has
    its model in storage only (``stored``, its ``final_model/``): it is logged to the trial's run first, so that
    ``pbp registry register PARENT`` finds it (it failed: 'Failed to download artifacts'). -> whether it is there."""
    import mlflow

    def download(dst: Path) -> str:
        return mlflow.artifacts.download_artifacts(run_id=child_run, artifact_path="model", dst_path=str(dst))

    with scratch("best") as tmp:  # a model's copy: gone once logged
        try:
            local = download(tmp)
        except Exception as missing:  # not logged by its trial
            try:
                _log_stored_model(client, child_run, stored)
                local = download(tmp)
            except Exception as e:
                log.warning("the best trial's model is not in its MLflow run (%s) and could not be logged from %s "
                            "(%s)", missing, stored, e)  # fmt: skip
                return False
        client.log_artifacts(parent_run, local, "best_model")
    return True


def _log_stored_model(client, child_run: str, stored: str) -> None:
    from pbp.finetune.export import load_finetuned
    from pbp.finetune.pyfunc import log_pyfunc
    from pbp.predict.pyfunc_model import EXAMPLE_SEQUENCES
    from pbp.train.artifacts import model_files
    from pbp.train.tracking import MODEL_LOGGED_TAG

    with model_files(stored) as d:
        seq_column = load_finetuned(d)[1].seq_column
        log_pyfunc(child_run, d, EXAMPLE_SEQUENCES, seq_column)
    client.set_tag(child_run, MODEL_LOGGED_TAG, "true")
    log.warning("the best trial's model was not in its MLflow run (MLflow did not answer as it ended): logged it "
                "from %s", stored)  # fmt: skip

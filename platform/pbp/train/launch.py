"""``pbp pretrain`` / ``jobs/pretrain.py``: build the Ray Train TorchTrainer for a PretrainConfig and run it."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pbp.config import to_dict
from pbp.data.shards import load_manifest, manifest_digest
from pbp.data.storage import check_object_storage
from pbp.errors import UserError
from pbp.stack.endpoints import resolve, runs_storage, set_ray_auth_env
from pbp.train.config import PretrainConfig, ScalingConfig
from pbp.train.dist import WORKER_OF_RUN
from pbp.train.tracking import check_tracking_server, marked_if_unfinished

if TYPE_CHECKING:
    from pbp.train.checkpoint import CommitRecord

log = logging.getLogger("pbp.train")


def git_commit() -> str:
    """The code's commit (``pbp.provenance.code_commit``), or the submitter's for a submitted job (its copy of the
    project travels without ``.git``)."""
    from pbp.provenance import code_commit

    return os.environ.get("PBP_GIT_COMMIT") or code_commit()


def resolve_config(cfg: PretrainConfig) -> tuple[PretrainConfig, dict[str, Any]]:
    """Fill what the config leaves to the environment: storage path, the model's annotation count from the data."""
    ep = resolve()
    if not cfg.data.url:
        raise ValueError("data.url is empty: point it at a dataset built by `pbp data build`")
    if cfg.tracking.enabled:
        check_tracking_server()
    check_object_storage(cfg.data.url)  # inputs first, then what the data says, then where the run goes
    manifest = load_manifest(cfg.data.url)
    n_terms = len(manifest["go_vocabulary"])
    if n_terms == 0:
        raise ValueError(
            f"data.url={cfg.data.url}: the dataset has no GO vocabulary (built without annotations, or no term on >= "
            f"{manifest.get('build', {}).get('min_go_records', '?')} proteins), and pretraining needs at least one term: "
            "rebuild it with --go-table (or a lower --min-go-records)"
        )
    if cfg.model.n_annotations != n_terms:
        log.warning("model.n_annotations=%d set to the dataset's %d GO terms", cfg.model.n_annotations, n_terms)
        cfg = replace(cfg, model=replace(cfg.model, n_annotations=n_terms))
    storage = cfg.checkpoint.storage_path or runs_storage("pretrain", ep)
    check_object_storage(storage)
    cfg = replace(cfg, checkpoint=replace(cfg.checkpoint, storage_path=storage))
    digest = manifest_digest(manifest)
    meta = {
        "run_url": f"{storage.rstrip('/')}/{cfg.run_name}",
        "identity": run_identity(cfg, digest),
        "tags": {
            "pbp.dataset_url": cfg.data.url,
            "pbp.dataset_manifest_sha256": digest,
            "pbp.git_commit": git_commit(),
        },
    }
    return cfg, meta


def run_identity(cfg: PretrainConfig, manifest_sha256: str) -> dict[str, Any]:
    """What a re-run of the run name must keep (``pbp.train.run_identity``): the dataset by its manifest's digest,
    not its URL; not the budget, workers, checkpoint cadence or tracking."""
    from pbp.train.run_identity import identity

    return identity(cfg, ("seed", "model", "data", "corruption", "loss", "optim", "deepspeed"),
                    ("data.url", "data.num_workers", "data.on_shard_error"),
                    **{"data.manifest_sha256": manifest_sha256})  # fmt: skip


def torch_trainer(
    loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], *, run_name: str, storage_path: str,
    scaling: ScalingConfig, callbacks: list | None = None,
):  # fmt: skip
    """The TorchTrainer of a pbp job (pretraining, fine-tuning, a Tune trial's fine-tuning).

    ``RunConfig(name, storage_path)`` is the run's stable home: a re-run or a retried trial with the same name finds
    its checkpoints there. Retention is pbp's (checkpoint.prune): it keeps the newest COMPLETE checkpoints.
    Waiting for resources is bounded by ``scaling.resource_wait_s`` (see :func:`resource_wait`).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    forget_ray_snapshot(f"{storage_path.rstrip('/')}/{run_name}")
    fs = None
    if storage_path.startswith("s3://"):
        fs = resolve().pyarrow_fs(storage_path)
        storage_path = storage_path[len("s3://") :]
    per_try, tries = resource_wait(wait_budget(scaling))
    os.environ[START_TIMEOUT_ENV] = str(per_try)  # Ray Train passes these on to its controller
    os.environ[POLL_INTERVAL_ENV] = str(scaling.report_poll_s)
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(  # type: ignore[call-arg]  # Train V2's FailureConfig
                max_failures=scaling.max_failures, controller_failure_limit=tries - 1
            ),
            callbacks=callbacks,
        ),
    )


START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRY_S = 60.0
MAX_TRIES = 10
LOCAL_STACK_WAIT_S = 300.0
CLUSTER_WAIT_S = 1800.0


def wait_budget(scaling: ScalingConfig) -> float:
    """``scaling.resource_wait_s``, or its default for the connected cluster (see the field)."""
    if scaling.resource_wait_s is not None:
        return scaling.resource_wait_s
    return LOCAL_STACK_WAIT_S if on_local_stack() else CLUSTER_WAIT_S


def resource_wait(total_s: float) -> tuple[float, int]:
    """``scaling.resource_wait_s`` as Ray Train's (worker group start timeout, number of tries).

    Ray Train V2 retries a worker group that cannot be placed without limit (``controller_failure_limit=-1``), each
    try waiting ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (60 s): with a node gone, a run waits forever. pbp bounds
    the tries so that they add up to the configured wait (counted over the whole run, not per incident): tries of
    60 s, or of a tenth of a longer wait. Ray Train prints a traceback and a failure-policy block at the end of each
    try, so a campaign's trial waiting hours for its siblings' slots would print one a minute.
    """
    per_try = min(total_s, max(TRY_S, total_s / MAX_TRIES))
    return per_try, max(1, math.ceil(total_s / per_try))


class ClusterCapacityError(UserError, RuntimeError):
    """The cluster did not have room for the run's workers within ``scaling.resource_wait_s``."""


@dataclass(frozen=True)
class CapacityKeys:
    """What a message about room for the workers names: a run's config keys and how to go on, or a campaign's for its
    trials."""

    wait: str = "scaling.resource_wait_s"
    size: str = "scaling.num_workers / scaling.cpus_per_worker"
    again: str = "run the same command again: it resumes from its newest complete checkpoint, if it wrote one"


RUN_KEYS = CapacityKeys()
TRIAL_KEYS = CapacityKeys("slot_wait_s", "trial_workers / cpus_per_trial_worker",
                          "`pbp tune --resume NAME` runs the campaign's failed trials again, each from its newest "
                          "complete checkpoint")  # fmt: skip


def fit(trainer, scaling: ScalingConfig, run_name: str = "", keys: CapacityKeys = RUN_KEYS):
    """``trainer.fit()``, with Ray Train's errors that users can act on turned into messages that say what to do.

    When the cluster's nodes as they are cannot hold the workers, it says so first (Ray Train's own retries print
    only tracebacks while it waits). Ctrl-C: Ray Train's own handler aborts the run and exits the process (status 1,
    no word of what was kept); it becomes a KeyboardInterrupt that says how to continue the run ``run_name``."""
    nodes = alive_nodes()
    if run_name:  # (a campaign checks its trials' room once, on its driver)
        require_room(nodes, scaling)
    note = capacity_note(nodes, scaling, keys)
    if note:
        print(f"pbp: {note}", flush=True)
    try:
        result = trainer.fit()
        if result.error:
            raise result.error
    except SystemExit:
        if not run_name:
            raise
        raise KeyboardInterrupt(f"run {run_name} stopped: the same command (the same run_name) continues it from "
                                "its newest complete checkpoint, if it wrote one") from None  # fmt: skip
    except Exception as e:
        better = capacity_error(e, scaling, keys) or failed_run_error(e, scaling, run_name)
        if better is None:
            raise
        raise better from e
    return result


class RunFailedError(UserError, RuntimeError):
    """A run's workers failed more often than ``scaling.max_failures``; the message names each rank's cause."""


def failed_run_error(error: BaseException, scaling: ScalingConfig, run_name: str) -> RunFailedError | None:
    """One message for Ray Train's ``WorkerGroupError`` (the workers failed on every allowed try): each rank's cause
    in a line, what is kept and how to continue, in place of 60 lines of the driver's and Ray's tracebacks (the
    workers' own tracebacks are printed above it as they failed). None for another error."""
    from ray.train import WorkerGroupError

    if not isinstance(error, WorkerGroupError) or not run_name:  # a campaign's trial: the campaign reports the error
        return None
    by_cause: dict[str, list[int]] = {}
    for rank, exc in sorted(error.worker_failures.items()):
        by_cause.setdefault(worker_cause(exc), []).append(rank)
    causes = "; ".join(f"rank{'s' if len(r) > 1 else ''} {', '.join(map(str, r))}: {c}" for c, r in by_cause.items())
    tries = f"{scaling.max_failures + 1} tr{'y' if scaling.max_failures == 0 else 'ies'}"
    return RunFailedError(
        f"run {run_name} failed on {tries} (scaling.max_failures={scaling.max_failures}); "
        f"{causes or 'no worker said why'}. Its newest complete checkpoint is kept: once the cause is fixed, the same "
        "command continues from it (each worker's traceback is above)"
    )


def worker_cause(exc: BaseException, width: int = 240) -> str:
    """A worker's failure in one line: a dead process with Ray's reason (a signal, the OOM killer, a lost node), or
    the exception's type and first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    died = next((ln for ln in lines if "Worker exit type:" in ln), None)
    if died is not None:  # Ray's reason, without its list of usual causes
        detail = died.split("Worker exit detail:", 1)[-1].split(" Some common causes include", 1)[0].strip()
        text = f"its process died ({detail} Usually the OOM killer, a signal or a crash in native code)"
    else:
        text = f"{type(exc).__name__}: {lines[0] if lines else '(no message)'}"
    return text if len(text) <= width else text[: width - 3] + "..."


def _request(scaling: ScalingConfig) -> str:
    gpu = " + 1 GPU" if scaling.use_gpu else ""
    return f"{scaling.num_workers} worker(s) x {scaling.cpus_per_worker:g} CPU{gpu}"


def alive_nodes() -> list[dict[str, Any]]:
    """``ray.nodes()``'s alive ones (none when this process is not connected)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else []


def _worker_slots(nodes: list[dict[str, Any]], scaling: ScalingConfig) -> int:
    """How many of ``scaling``'s workers ``nodes`` (``ray.nodes()``'s alive ones) hold, by their total resources."""
    slots = 0
    for n in nodes:
        res = n.get("Resources", {})
        fits = math.floor(res.get("CPU", 0.0) / scaling.cpus_per_worker + 1e-9)
        slots += min(fits, math.floor(res.get("GPU", 0.0))) if scaling.use_gpu else fits
    return slots


def _cluster(nodes: list[dict[str, Any]], scaling: ScalingConfig) -> str:
    cpus = sum(n.get("Resources", {}).get("CPU", 0.0) for n in nodes)
    gpus = sum(n.get("Resources", {}).get("GPU", 0.0) for n in nodes)
    return f"{len(nodes)} node(s) with {cpus:g} CPU" + (f" and {gpus:g} GPU" if scaling.use_gpu else "")


def capacity_note(nodes: list[dict[str, Any]], scaling: ScalingConfig,
                  keys: CapacityKeys = RUN_KEYS) -> str | None:  # fmt: skip
    """A line saying that ``nodes`` (``ray.nodes()``'s alive ones), counted by their total resources, cannot hold
    ``scaling``'s workers and what the run does about it (naming ``keys``); None when they can."""
    if scaling.cpus_per_worker <= 0:
        return None
    slots = _worker_slots(nodes, scaling)
    if slots >= scaling.num_workers:
        return None
    return (f"the Ray cluster has {_cluster(nodes, scaling)}: room for {slots} of {_request(scaling)}. Waiting up to "
            f"{keys.wait}={wait_budget(scaling):g}s for nodes to join (an autoscaler, or `pbp stack up "
            f"--workers N` on the local stack); or lower {keys.size}")  # fmt: skip


def on_local_stack() -> bool:
    """Whether this process's Ray connection is the local stack's cluster (whose nodes join only by `pbp stack up`)."""
    import ray

    from pbp.stack.state import StackState, default_state_dir

    if not ray.is_initialized():
        return False
    try:
        state = StackState.load(resolve().state_dir or default_state_dir())
    except (OSError, ValueError):  # an unreadable or old state file: not known to be the stack's cluster
        return False
    if state is None:
        return False
    # Ray names its GCS by this machine's address, the stack by 127.0.0.1: the same port on this machine
    host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
    here = {"127.0.0.1", "localhost", ray.util.get_node_ip_address()}
    return host in here and port == state.ray_gcs_address.rpartition(":")[2]


def require_room(nodes: list[dict[str, Any]], scaling: ScalingConfig, keys: CapacityKeys = RUN_KEYS) -> None:
    """On the local stack, whose nodes never join by themselves, a run its nodes cannot hold fails at once (a
    ClusterCapacityError naming the fix and ``keys``) instead of waiting ``keys.wait`` for nothing.
    Elsewhere (an autoscaler may add nodes) the run waits, as :func:`capacity_note` says."""
    if scaling.cpus_per_worker <= 0 or _worker_slots(nodes, scaling) >= scaling.num_workers or not on_local_stack():
        return
    gpus = sum(n.get("Resources", {}).get("GPU", 0.0) for n in nodes)
    fix = (
        "its nodes have no GPU: run on CPUs (use_gpu false) or on a cluster with GPUs" if scaling.use_gpu and not gpus
        else f"add worker nodes (`pbp stack up --workers N` adds them; `--worker-cpus` sets the new ones' CPUs) or "
        f"lower {keys.size}"
    )  # fmt: skip
    raise ClusterCapacityError(f"the local stack's Ray cluster has {_cluster(nodes, scaling)}: room for "
                               f"{_worker_slots(nodes, scaling)} of {_request(scaling)}, and it has no autoscaler: "
                               f"{fix}")  # fmt: skip


def concurrency_note(nodes: list[dict[str, Any]], trial: ScalingConfig, concurrent: int) -> str | None:
    """For a campaign: a line saying that ``nodes`` hold fewer than ``concurrent`` trials of ``trial``'s workers at
    once (the others wait for a free slot), or none (:func:`capacity_note`); None when they hold them all."""
    groups = _worker_slots(nodes, trial) // trial.num_workers
    if groups >= concurrent:
        return None
    if groups == 0:
        return capacity_note(nodes, trial, TRIAL_KEYS)  # a campaign's trial waits its slot_wait_s
    return (f"the Ray cluster has {_cluster(nodes, trial)}: room for {groups} of max_concurrent_trials={concurrent} "
            f"trials of {_request(trial)}; the others start as slots free up (or as nodes join)")  # fmt: skip


def capacity_error(error: BaseException, scaling: ScalingConfig,
                   keys: CapacityKeys = RUN_KEYS) -> ClusterCapacityError | None:  # fmt: skip
    """A ClusterCapacityError naming the lost nodes and the fix, if ``error`` is Ray Train giving up on placing
    the workers; else None."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError

    if not (
        isinstance(error, ControllerError) and isinstance(error.controller_failure, WorkerGroupStartupTimeoutError)
    ):
        return None
    need = _request(scaling)
    lost = lost_nodes()
    where = f"node(s) lost: {', '.join(lost)}" if lost else "no node was lost: the cluster is too small or busy"
    fix = (
        "`pbp stack up` restarts the local stack's nodes" if any("ray-worker" in n or "ray-head" in n for n in lost)
        else f"add nodes (or let the autoscaler) or lower {keys.size}"
    )  # fmt: skip
    return ClusterCapacityError(
        f"the Ray cluster had no room for {need} for {keys.wait}={wait_budget(scaling):g}s; {where}. "
        f"Fix: {fix}, then {keys.again}."
    )


def lost_nodes() -> list[str]:
    """Dead Ray nodes, named by the local stack's service where it is one (else ip:port)."""
    import ray

    from pbp.stack.state import StackState, default_state_dir

    ep = resolve()
    state = StackState.load(ep.state_dir or default_state_dir())
    by_port = {}
    if state is not None:
        by_port = {rec.ports.get("node_manager"): name for name, rec in state.services.items()}
    out = []
    for n in ray.nodes():
        if n.get("Alive"):
            continue
        port = n.get("NodeManagerPort")
        label = by_port.get(port) or f"{n.get('NodeManagerAddress')}:{port}"
        out.append(f"{label} (Ray node {str(n.get('NodeID', ''))[:8]})")
    return sorted(set(out))


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

    return torch_trainer(
        train_loop_per_worker, {"cfg": to_dict(cfg), "meta": meta}, run_name=cfg.run_name,
        storage_path=cfg.checkpoint.storage_path, scaling=cfg.scaling,
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
    set_ray_auth_env(ep, addr)
    import ray

    if not ray.is_initialized():
        if addr != "auto":
            check_ray_answers(addr)
        ray.init(address=addr, log_to_driver=True)
    if os.environ.get("PBP_RAY_NOISE", "") not in ("1", "true"):
        drop_ray_noise()
    keep_pbp_lines_whole()
    if not sys.stdout.isatty():  # a log file (a submitted job's, `> run.log`): no colour codes around the prefixes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


class RayUnavailableError(UserError, ConnectionError):
    """The Ray cluster's GCS does not answer; the message names the address and the way out."""


def check_ray_answers(addr: str, timeout: float = 5.0) -> None:
    """The GCS at ``addr`` (host:port) accepts a connection: Ray's own connect retries for minutes, printing a
    warning every few seconds, when the head is down."""
    import socket

    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
    raise RayUnavailableError(f"the Ray cluster at {addr} does not answer ({why}): start it (`pbp stack up` for the "
                              "local stack) or check RAY_ADDRESS / --address")  # fmt: skip


RAY_NOISE = (
    # Ray Train V2's controller, once per run: about Ray's own actor, nothing a user can act on (ray#53727)
    re.compile(
        r"Actor with class name: 'PreemptionWatcher' and ID: '\w+' has constructor arguments in the object "
        r"store and max_restarts > 0"
    ),
    # after every run (every campaign trial): the normal end of a run, worded as a failure
    re.compile(r"Detected that the Ray Train controller actor \(\w+\) is dead\. Cleaning up placement group"),
    # the raylet, when a campaign starts trials: a few actors per trial on a small machine, as designed
    re.compile(r"PYTHON worker processes have been started on node: .* maximum expected startup concurrency"),
    # DeepSpeed's op builder, once per rank; Ray's deduplication held rank 0's copy until after the closing lines
    re.compile(r"^DeepSpeed deepspeed\.ops\.[\w.]+ built successfully$"),
)
STOPPED_TRIAL_CONTROLLER = re.compile(
    r"class_name: _QueueActor\b"
    r"|The actor is dead because its owner has died\. .*Owner worker exit type: INTENDED_SYSTEM_EXIT"
)
"""A campaign trial stopped by ASHA: Tune removes the trial's placement group, and with it the queue through which the
trial's Ray Train controller hands reports to Tune, and ends the trial's actor, whose controller Ray then ends in
turn. A controller that polls its workers in between logs tracebacks (about 100 lines) and a failure-policy block
(even "RETRY") for a trial that ended as designed: either it failed to put the next report on the queue, or it found
its worker gone because the worker's owner, the controller itself, is exiting (``INTENDED_SYSTEM_EXIT``; seen in a
submitted campaign, 2026-11-27). A batch saying either mutes its process (the controller, about to end) for the rest
of the session. A trial that really fails is still said by the campaign's own FAILED line, with its error."""


TRIAL_START_NOISE = (
    re.compile(r"^Requesting resources: "),
    re.compile(r"^Attempting to start training worker group of size "),
    re.compile(r"^Started training worker group of size "),
    re.compile(r"^- \(ip=\S+, pid=\d+\) world_rank=\d+, local_rank=\d+, node_rank=\d+"),
    re.compile(r"^Setting up process group for: "),
)
"""Ray Train's five lines as each run's workers start. A campaign leaves them out (:func:`quiet_trial_starts`): its
live lines say when a trial starts, and these were most of its log, folded by Ray into "[repeated Nx across cluster]"
when trials start together. Ray Train's other lines (its failure policy's RETRY with the error, say) still print."""
_quiet: dict[str, bool] = {"trial_starts": False}

_WORKER_OF_RUN = re.compile(rf"^{WORKER_OF_RUN}([\w.-]+)$")
_STOPPED_RUNS: set[str] = set()


def quiet_trial_starts() -> None:
    """On this driver (a campaign's), leave out ``TRIAL_START_NOISE``."""
    _quiet["trial_starts"] = True


def mute_stopped_run(run_name: str) -> None:
    """From now on, drop what the workers of run ``run_name`` print (:func:`drop_ray_noise`): a campaign's trial that
    ASHA stopped. Its worker went on printing its next epoch's line after the campaign said the trial ended, and a
    worker ended in the middle of a native call printed a fatal-signal stack dump (about 40 lines). Every rank is
    known by its :func:`announce_worker` line; lines on their way when the trial was stopped are dropped too."""
    _STOPPED_RUNS.add(run_name)


def drop_ray_noise() -> None:
    """Drop the lines of ``RAY_NOISE`` (Ray's own chatter, and DeepSpeed's op-build line) from what Ray prints on this
    driver (every other line, warnings included, still prints; ``PBP_RAY_NOISE=1`` keeps these too). Wraps Ray's
    (private) ``print_worker_logs``, which every line passes through: worker logs, and the raylet's warnings, which
    Ray prints without its log dispatcher. Another Ray layout is left as it is."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    original: Callable[..., None] = ray_worker.print_worker_logs
    if getattr(original, "pbp_filtered", False):
        return

    muted: set[tuple[Any, Any]] = set()
    run_of: dict[tuple[Any, Any], str] = {}

    def filtered(data: dict[str, Any], print_file: Any, ignore_prefix: bool = False) -> None:
        source = (data.get("ip"), data.get("pid"))
        lines = []
        for line in data.get("lines", []):
            if m := _WORKER_OF_RUN.match(line):
                run_of[source] = m.group(1)  # (a process id used again by a new worker: its own line comes first)
            else:
                lines.append(line)
        if source in muted or run_of.get(source) in _STOPPED_RUNS:
            return
        if any(STOPPED_TRIAL_CONTROLLER.search(x) for x in data.get("lines", [])):
            muted.add(source)
            return
        noise = RAY_NOISE + (TRIAL_START_NOISE if _quiet["trial_starts"] else ())
        lines = [x for x in lines if not any(p.search(x) for p in noise)]
        if lines:
            original({**data, "lines": lines}, print_file, ignore_prefix)

    filtered.pbp_filtered = True  # type: ignore[attr-defined]
    ray_worker.print_worker_logs = filtered


PBP_WORKER_LINE = r"^\[[\w.-]+\] |^feature cache: "
"""pbp's own lines from workers: a run's or trial's progress (``[NAME] ...``) and the feature cache's summary."""


def keep_pbp_lines_whole() -> None:
    """Exempt pbp's own worker lines (``PBP_WORKER_LINE``) from Ray's log deduplication. Ray folds lines that differ
    only in their numbers from different processes into one ``[repeated 3x across cluster]`` line printed up to 5 s
    later: in a campaign, concurrent trials' epoch lines (and their figures) were folded together, and arrived after
    the campaign's closing lines. Library lines repeated by every rank stay folded."""
    try:
        from ray._private import ray_logging
    except ImportError:
        return
    for dedup in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        allow = getattr(dedup, "allow_re", None)
        if allow is not None and PBP_WORKER_LINE in allow.pattern:
            continue
        dedup.allow_re = re.compile(PBP_WORKER_LINE if allow is None else f"{allow.pattern}|{PBP_WORKER_LINE}")


def release_placement_groups() -> list[str]:
    """Remove the placement groups that this driver's job created and that are still held -> their ids.

    After a campaign, every one is a leak: when Tune stops a trial (ASHA) while its Ray Train controller is starting
    the worker group, the group's placement group can outlive both the controller and Ray Train's cleaner, and its
    CPUs stay taken from every later run on the cluster (seen once in a clean-clone CI run: the next 2-worker runs
    waited for a CPU held by the demo campaign's pruned trial). A placement group's id ends with its job's id."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    held = [pg for pg, info in placement_group_table().items() if info["state"] != "REMOVED" and pg.endswith(job)]
    for pg in held:
        remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(pg)))
    return held


class RayShardMap:
    """``pbp data build --ray-workers N``: writes the dataset's shards (sort, shuffle, tar, sha256, upload) as Ray
    tasks of one CPU, N at a time, on whichever nodes have room; a task lost with its node is retried (the upload is
    the same bytes). The rows travel through Ray's object store, so workers need no shared disk, only the S3."""

    def __init__(self, workers: int, address: str | None = None) -> None:
        if workers < 1:
            raise ValueError(f"ray workers must be >= 1, got {workers}")
        connect_ray(address)
        import ray

        from pbp.data.shards import write_shard

        self.window = workers
        self._task = ray.remote(num_cpus=1, max_retries=3)(write_shard)

    def __call__(self, jobs: list) -> list[dict]:
        import ray

        return ray.get([self._task.remote(job) for job in self.for_tasks(jobs)])

    @staticmethod
    def for_tasks(jobs: list) -> list:
        """The jobs without the driver's S3 credentials: a task's arguments are kept in the cluster's object store
        and GCS, so each task resolves storage on its node, as training workers do (environment, instance role or
        ServiceAccount, the local stack's state dir)."""
        return [replace(job, endpoints=None) for job in jobs]


@dataclass
class PretrainResult:
    run_url: str
    """The run's directory in storage (checkpoints, ``final_model/``)."""
    metrics: dict[str, Any]
    """The last step's metrics as rank 0 reported them (``step``, ``loss``, ``token_loss``, ``annotation_loss``)."""
    checkpoint_url: str | None
    """The newest complete checkpoint."""
    trained: bool = True
    """False for a re-run of a finished run (nothing left to train; ``metrics`` holds only the ``step``)."""
    mlflow_run_id: str | None = None
    """The run's MLflow run, as its newest checkpoint records it (None with tracking off)."""
    tracking_gaps: list[str] | None = None
    """With tracking on: what that MLflow run lacks (:func:`pbp.train.tracking.tracking_gaps`; [] when complete; else
    MLflow did not answer at the end, and the same command again logs the model and the values kept with the
    checkpoint, training nothing). None with tracking off."""

    @property
    def tracking_complete(self) -> bool | None:
        return None if self.tracking_gaps is None else not self.tracking_gaps


def pretrain(
    cfg: PretrainConfig, meta_extra: dict[str, Any] | None = None, address: str | None = None
) -> PretrainResult:
    """Run pretraining on the Ray cluster; a run that already reached ``max_steps`` and exported its model is
    reported without starting any worker. With tracking on, the result says whether its MLflow run is complete."""
    res = _pretrain(cfg, meta_extra, address)
    return _with_tracking(res) if cfg.tracking.enabled else res


def _with_tracking(res: PretrainResult) -> PretrainResult:
    from pbp.train.checkpoint import newest_commit, storage_dir
    from pbp.train.tracking import tracking_gaps

    newest = newest_commit(storage_dir(res.run_url))
    run_id = newest[1].mlflow_run_id if newest else None  # as the run recorded it: no lookup by name
    return replace(res, mlflow_run_id=run_id, tracking_gaps=tracking_gaps(run_id))


def _pretrain(cfg: PretrainConfig, meta_extra: dict[str, Any] | None, address: str | None) -> PretrainResult:
    from pbp.train.checkpoint import newest_commit, storage_dir
    from pbp.train.run_identity import check_same_run

    cfg, meta = resolve_config(cfg)
    meta.update(meta_extra or {})
    newest = newest_commit(storage_dir(meta["run_url"]))
    check_same_run(newest, meta["identity"], cfg.run_name)
    done = _finished(meta["run_url"], cfg.max_steps, newest)
    if done is not None and not _tracking_unfinished(cfg, newest):
        return done
    check_same_world_size(newest, cfg)
    if os.environ.get("PBP_TEST_INJECT_NONFINITE"):  # test hook: NaN losses at these steps (a fault on cue)
        meta["inject_nonfinite_steps"] = [int(s) for s in os.environ["PBP_TEST_INJECT_NONFINITE"].split(",")]
    connect_ray(address)
    with marked_if_unfinished(cfg.tracking.enabled, cfg.tracking.experiment, cfg.run_name):
        result = fit(build_trainer(cfg, meta), cfg.scaling, cfg.run_name)
    ckpt = result.checkpoint  # in the run's directory (Ray's path has no scheme)
    if ckpt is not None or result.metrics:
        where = None if ckpt is None else f"{meta['run_url']}/{ckpt.path.rstrip('/').rsplit('/', 1)[-1]}"
        return PretrainResult(meta["run_url"], dict(result.metrics or {}), where)
    return _finished_before(meta["run_url"], newest_commit(storage_dir(meta["run_url"])))


def _tracking_unfinished(cfg: PretrainConfig, newest: tuple[str, CommitRecord] | None) -> bool:
    """A finished run whose MLflow run is not complete (:func:`pbp.train.tracking.missing_from_run`: RUNNING, MLflow
    did not answer at its end; KILLED or FAILED, stopped as it ended; or its model not logged), so the model and the
    values its last checkpoint kept (``TRACKING_BACKLOG``) never reached it. Its workers then resume that checkpoint,
    training nothing: they send those values, log the model and finish the MLflow run."""
    from pbp.train.tracking import missing_from_run

    if not (cfg.tracking.enabled and newest is not None and newest[1].mlflow_run_id):
        return False
    missing = missing_from_run(newest[1].mlflow_run_id)
    if not missing:  # (None: MLflow cannot say; the run's start checks that it answers)
        return False
    print(f"run {cfg.run_name}: trained to step {newest[1].step}, but its MLflow run is not complete "
          f"({'; '.join(missing)}: MLflow did not answer at its end, or the run was stopped as it ended): resuming "
          "its last checkpoint to log what MLflow lacks, training nothing", flush=True)  # fmt: skip
    return True


def finished_run(run_url: str, max_steps: int) -> PretrainResult | None:
    """The run at ``run_url`` if it reached ``max_steps`` and exported its model (a re-run has nothing to do), else
    None."""
    from pbp.train.checkpoint import newest_commit, storage_dir

    return _finished(run_url, max_steps, newest_commit(storage_dir(run_url)))


def check_same_world_size(newest: tuple[str, CommitRecord] | None, cfg: PretrainConfig) -> None:
    """ZeRO stages 1-3 partition the optimizer state over the workers, and DeepSpeed cannot re-partition a
    checkpoint for another count: refused here, before any worker starts (each retried worker failed with
    DeepSpeed's ZeRORuntimeException)."""
    from pbp.train.run_identity import RunConfigChangedError

    if newest is None or cfg.deepspeed.zero_stage == 0 or newest[1].world_size == cfg.scaling.num_workers:
        return
    url, commit = newest
    raise RunConfigChangedError(
        f"run {cfg.run_name!r}: its newest checkpoint ({url}) holds DeepSpeed ZeRO-{cfg.deepspeed.zero_stage} "
        f"optimizer state partitioned over {commit.world_size} workers, which DeepSpeed cannot re-partition for "
        f"{cfg.scaling.num_workers}: continue it with scaling.num_workers={commit.world_size}, or start a new run "
        f"(run_name={cfg.run_name}-2)"
    )


def _finished(run_url: str, max_steps: int, newest: tuple[str, CommitRecord] | None) -> PretrainResult | None:
    from pbp.model.proteinbert import CONFIG_FILE, WEIGHTS_FILE
    from pbp.train.checkpoint import exported, storage_dir

    done = _finished_before(run_url, newest)
    if done.metrics.get("step", 0) >= max_steps and exported(storage_dir(run_url), (WEIGHTS_FILE, CONFIG_FILE)):
        return done
    return None


def _finished_before(run_url: str, newest: tuple[str, CommitRecord] | None) -> PretrainResult:
    """A re-run of a finished run reports nothing: its newest checkpoint says where it ended."""
    if newest is None:
        return PretrainResult(run_url, {}, None, trained=False)
    url, commit = newest
    return PretrainResult(run_url, {"step": commit.step}, url, trained=False)

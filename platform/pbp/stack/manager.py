"""``pbp stack up|down|status|env``: start, stop and inspect the local stack.

``up`` is idempotent: healthy services are left alone, services that are down (crashed, killed, never started)
are started again on their remembered ports with their remembered data. A failure names the service, prints the
tail of its log, and leaves every other service and all data as they were.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbp.stack import procs
from pbp.stack.services import (
    PROMETHEUS_HINT,
    Service,
    ServiceError,
    check,
    command,
    ensure_private_tmp,
    prometheus_binary,
    ray_temp_dir,
    service_env,
    services_for,
    with_prometheus,
    write_service_files,
)
from pbp.stack.state import (
    LAYOUT,
    RAY_TOKEN_FILE,
    SECRETS_FILE,
    STATE_FILE,
    Secrets,
    ServiceRecord,
    StackState,
    StackStateError,
    make_private,
    ray_token,
)

Log = Callable[[str], None]


@dataclass
class ServiceStatus:
    name: str
    running: bool
    healthy: bool
    detail: str
    pid: int | None
    ports: dict[str, int]


def _allocate_ports(state: StackState, services: list[Service]) -> None:
    used = {p for rec in state.services.values() for p in rec.ports.values()}
    for svc in services:
        rec = state.services.setdefault(svc.name, ServiceRecord())
        missing = [n for n in svc.ports if n not in rec.ports]
        if not missing:
            continue
        for name in missing:
            while True:
                (port,) = procs.free_ports(1, state.host, avoid=used)
                used.add(port)
                # SeaweedFS' plugin worker dials the admin port + 10000: keep that one free too.
                if name != "admin" or (port + 10000 not in used and procs.port_is_free(port + 10000, state.host)):
                    break
            rec.ports[name] = port
            if name == "admin":
                used.add(port + 10000)


def load_or_init(state_dir: Path, workers: int | None, buckets: dict[str, str] | None) -> StackState:
    state_dir = state_dir.resolve()
    state = StackState.load(state_dir)
    if state is None:
        state = StackState(state_dir=str(state_dir))
        if workers is not None:
            state.workers = workers
        if buckets:
            state.buckets.update(buckets)
        return state
    if workers is not None and workers != state.workers:
        if workers > state.workers:
            state.workers = workers  # more nodes: the new ones get ports below
        else:
            raise StackStateError(
                f"{state_dir / STATE_FILE}: the stack has {state.workers} workers; `pbp stack down` first to "
                f"shrink it to {workers}"
            )
    if buckets and any(state.buckets.get(k) != v for k, v in buckets.items()):
        raise StackStateError(
            f"{state_dir / STATE_FILE}: bucket names are fixed at first start ({state.buckets}); "
            "use a new --state-dir for other names"
        )
    return state


def status(state_dir: Path) -> tuple[StackState | None, list[ServiceStatus]]:
    state = StackState.load(state_dir.resolve())
    if state is None:
        return None, []
    secrets = Secrets.load(state.dir) if (state.dir / SECRETS_FILE).exists() else None
    out = []
    for svc in services_for(state.workers, with_prometheus(state)):
        rec = state.services.get(svc.name, ServiceRecord())
        running = procs.group_alive(rec.pid, svc.marker)
        reason = None
        if running and secrets is not None:
            reason = check(svc, state, secrets)
        healthy = running and reason is None
        detail = "healthy" if healthy else ("not running" if not running else f"unhealthy: {reason}")
        out.append(ServiceStatus(svc.name, running, healthy, detail, rec.pid if running else None, dict(rec.ports)))
    return state, out


def up(state_dir: Path, **kwargs: Any) -> StackState:
    """Start (or repair) the stack; see ``_up``. Everything it creates in the state dir is private to this user
    (umask 077 here and in every service; the state dir and its subdirectories 0700)."""
    previous = os.umask(0o077)
    try:
        state = _up(state_dir, **kwargs)
    finally:
        os.umask(previous)
    make_private(state.dir)  # what the services wrote while starting, with modes of their own choosing
    return state


def _up(
    state_dir: Path,
    *,
    workers: int | None = None,
    buckets: dict[str, str] | None = None,
    object_store_mb: int = 512,
    worker_cpus: int = 1,
    timeout: float = 120.0,
    log: Log = print,
) -> StackState:
    state = load_or_init(state_dir, workers, buckets)
    make_private(state.dir)
    (state.dir / "logs").mkdir(exist_ok=True, mode=0o700)
    secrets = Secrets.load_or_create(state.dir)
    ray_token(state.dir, create=True)
    services = services_for(state.workers, prometheus_binary() is not None)
    if prometheus_binary() is None:
        log(f"  {'prometheus':14} {PROMETHEUS_HINT}")
    _allocate_ports(state, services)
    state.save()
    write_service_files(state, secrets)

    lock = threading.Lock()

    def ensure(svc: Service, force_restart: bool = False) -> bool:
        """Leave a healthy service alone, else (re)start it. -> was it started?"""
        rec = state.services[svc.name]
        alive = procs.group_alive(rec.pid, svc.marker)
        if alive and rec.layout != LAYOUT:  # started by an older pbp: it runs without what this one set up
            log(f"  {svc.name:14} started by an older pbp (before its security and paths changed); restarting")
            force_restart = True
        if alive and not force_restart:
            reason = check(svc, state, secrets)
            if reason is None:
                log(f"  {svc.name:14} already running (pid {rec.pid})")
                return False
            try:  # running but unhealthy: it may still be starting
                _wait_healthy(svc, state, secrets, None, min(timeout, 20.0))
                log(f"  {svc.name:14} already running (pid {rec.pid})")
                return False
            except ServiceError:
                log(f"  {svc.name:14} unhealthy ({reason}); restarting")
        if alive and rec.pid:
            _stop(svc, rec.pid)
        _start(svc, state, secrets, object_store_mb, worker_cpus, timeout, log, lock)
        return True

    errors = _ensure_in_order(services, ensure, state)
    if errors:
        raise errors[0]
    return state


def _ensure_in_order(services: list[Service], ensure: Callable[..., bool], state: StackState) -> list[Exception]:
    """``ensure`` every service in the order they depend on each other -> the errors met (every service is tried).

    Storage, tracking and the Ray head do not depend on each other: they start together; then the workers, one at a
    time (raylets registering at once on a small machine time out in Ray's start-up), restarted with a new head;
    Prometheus last: it watches the service-discovery file in the Ray head's session dir, which must exist."""
    results: dict[str, bool] = {}
    core = [s for s in services if not s.name.startswith("ray-worker") and s.name != "prometheus"]
    workers_ = [s for s in services if s.name.startswith("ray-worker")]
    late = [s for s in services if s.name == "prometheus"]
    errors: list[Exception] = []
    with ThreadPoolExecutor(max_workers=len(core)) as pool:
        futures = {svc.name: pool.submit(ensure, svc) for svc in core}
        for name, fut in futures.items():
            try:
                results[name] = fut.result()
            except Exception as e:
                errors.append(e)
    if "ray-head" in results:
        head_restarted = results["ray-head"]  # workers must join a new head
        for svc in workers_:
            try:
                ensure(svc, head_restarted)
            except Exception as e:
                errors.append(e)
    for svc in late:
        try:
            if not ensure(svc) and (pid := state.services[svc.name].pid):
                os.kill(pid, signal.SIGHUP)  # already running: reload the rewritten config (a new Ray session dir)
        except Exception as e:
            errors.append(e)
    return errors


def _start(
    svc: Service,
    state: StackState,
    secrets: Secrets,
    object_store_mb: int,
    worker_cpus: int,
    timeout: float,
    log: Log,
    lock: threading.Lock,
) -> None:
    rec = state.services[svc.name]
    for name, port in rec.ports.items():
        if not procs.port_is_free(port, state.host):
            raise ServiceError(
                f"{svc.name}: port {port} ({name}) on {state.host} is in use by {procs.who_listens(port)}; "
                f"stop that process or start a stack with another --state-dir. Other services and data are untouched."
            )
    if svc.name == "ray-head":
        ensure_private_tmp(state)  # before Ray creates its session dir in it
    cmd = command(svc, state, secrets, object_store_mb, worker_cpus)
    logfile = state.dir / "logs" / f"{svc.name}.log"
    t0 = time.monotonic()
    proc = procs.start(cmd, logfile, service_env(svc, state, secrets), cwd=state.dir)
    with lock:
        rec.pid, rec.cmd, rec.started_at, rec.layout = proc.pid, cmd, time.time(), LAYOUT
        state.save()
    try:
        _wait_healthy(svc, state, secrets, proc, timeout)
    except ServiceError:
        procs.stop_group(proc.pid, grace=5)
        with lock:
            rec.pid = None
            state.save()
        raise
    log(f"  {svc.name:14} started (pid {proc.pid}) in {time.monotonic() - t0:.1f}s")


def _wait_healthy(svc: Service, state: StackState, secrets: Secrets, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    reason: str | None = "not checked"
    logfile = state.dir / "logs" / f"{svc.name}.log"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"{svc.name}: exited with code {proc.returncode} during start-up. Last lines of {logfile}:\n"
                + procs.tail(logfile)
            )
        reason = check(svc, state, secrets)
        if reason is None:
            return
        time.sleep(0.25)
    raise ServiceError(
        f"{svc.name}: not healthy after {timeout:.0f}s ({reason}). Last lines of {logfile}:\n" + procs.tail(logfile)
    )


def _stop(svc: Service, pid: int) -> None:
    if svc.name.startswith("ray-"):
        procs.stop_group(pid, grace=1.0, leader_signal=signal.SIGINT, leader_grace=6.0)
    else:
        procs.stop_group(pid, grace=15.0)


def down(state_dir: Path, log: Log = print) -> int:
    """Stop the process groups this stack started, all at once. -> number stopped. Data is kept."""
    state = StackState.load(state_dir.resolve())
    if state is None:
        log(f"no stack in {state_dir}")
        return 0
    running = [
        (svc, rec.pid)
        for svc in services_for(state.workers, with_prometheus(state))
        if (rec := state.services.get(svc.name)) is not None and procs.group_alive(rec.pid, svc.marker)
    ]

    def stop(item: tuple[Service, int]) -> None:
        svc, pid = item
        t0 = time.monotonic()
        _stop(svc, pid)
        log(f"  {svc.name:14} stopped (pid {pid}) in {time.monotonic() - t0:.1f}s")

    with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
        list(pool.map(stop, running))
    for rec in state.services.values():
        rec.pid = None
    state.save()
    return len(running)


def env_lines(state_dir: Path) -> list[str]:
    """``export`` lines for a shell: the same values the library reads from the state dir."""
    state = StackState.load(state_dir.resolve())
    if state is None:
        raise StackStateError(f"{state_dir}: no stack here; run `pbp stack up` first")
    secrets = Secrets.load(state.dir)
    values = {
        "PBP_STACK_DIR": str(state.dir),
        "AWS_ENDPOINT_URL": state.s3_endpoint,
        "AWS_ENDPOINT_URL_S3": state.s3_endpoint,  # botocore reads it first, pbp too: a shell's own would win
        "AWS_ACCESS_KEY_ID": secrets.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": secrets.s3_secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_TRACKING_URI": state.mlflow_uri,
        "MLFLOW_TRACKING_USERNAME": secrets.mlflow_admin_user,
        "MLFLOW_TRACKING_PASSWORD": secrets.mlflow_admin_password,
        # Ray's own split: RAY_ADDRESS the GCS (ray status, ray.init, pbp's drivers), RAY_API_SERVER_ADDRESS the
        # Jobs API (ray job ..., pbp submit / jobs); an http URL in RAY_ADDRESS made `ray status` fail.
        "RAY_ADDRESS": state.ray_gcs_address,
        "RAY_API_SERVER_ADDRESS": state.ray_dashboard_url,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(state.dir / RAY_TOKEN_FILE),
    }
    if state.prometheus_url:  # what dashboards/provisioning/datasources/prometheus.yaml points Grafana at
        values["PBP_PROMETHEUS_URL"] = state.prometheus_url
    return [f"export {k}={shlex.quote(v)}" for k, v in values.items()]


def pbp_command() -> str:
    """How a user types this ``pbp``: ``pbp`` when that is the one on PATH, else its path (``.venv/bin/pbp`` from
    the project, as the README has it)."""
    import shutil
    import sys

    mine = Path(sys.executable).with_name("pbp")
    on_path = shutil.which("pbp")
    if not mine.is_file() or (on_path and Path(on_path).resolve() == mine.resolve()):
        return "pbp"  # (an install whose scripts are elsewhere: the pbp on PATH)
    try:
        rel = mine.relative_to(Path.cwd())
    except ValueError:
        return shlex.quote(str(mine))
    return shlex.quote(str(rel) if len(rel.parts) > 1 else f"./{rel}")


def describe(state: StackState) -> list[str]:
    return [
        f"state dir:   {state.dir}",
        f"S3:          {state.s3_endpoint}   buckets: {', '.join(state.buckets.values())}",
        f"MLflow:      {state.mlflow_uri}   (basic auth; user admin)",
        f"Ray:         {state.ray_dashboard_url}   (GCS {state.ray_gcs_address}; {state.workers} worker nodes; token auth)",
        f"Prometheus:  {state.prometheus_url}   (scrapes Ray's metrics agents; dashboards/ for Grafana)"
        if state.prometheus_url
        else f"Prometheus:  {PROMETHEUS_HINT}",
        f"credentials: {state.dir / SECRETS_FILE} and {state.dir / RAY_TOKEN_FILE} (mode 600)",
        f"logs:        {state.dir / 'logs'}   Ray session: {ray_temp_dir(state)}",
        f'shell:       eval "$({pbp_command()} stack env --state-dir {shlex.quote(str(state.dir))})"',
    ]

"""The jobs and drivers running on the local stack's own Ray cluster, through its Jobs API with bounded requests
(Ray's client waits for ever on a dashboard that hangs), for ``pbp stack down``."""

from __future__ import annotations

import time
from contextlib import suppress
from pathlib import Path
from typing import Any

LIVE = ("PENDING", "RUNNING")
STOP_WAIT_S = 30.0
"""How long ``stop_submitted`` waits for stopped jobs to end (Ray sends SIGTERM, then SIGKILL after a few seconds)."""


def _api(state_dir: Path) -> tuple[str, dict[str, str]] | None:
    """The stack's Jobs API address and headers; None without a stack."""
    from pbp.stack.endpoints import resolve
    from pbp.stack.state import StackState

    if StackState.load(state_dir.resolve()) is None:
        return None
    ep = resolve(state_dir, env={})  # the stack's own cluster, whatever RAY_ADDRESS names
    if not ep.stack_ray:
        return None
    addr = ep.stack_ray[0]
    return addr.rstrip("/"), ep.ray_headers(addr)


def live_jobs(state_dir: Path) -> list[dict[str, Any]]:
    """The submitted jobs and direct drivers still running (or pending) on the stack's Ray cluster; none when it does
    not answer."""
    return listed_jobs(state_dir) or []


def head_running(state_dir: Path) -> bool:
    """The stack's Ray head process is alive (its Jobs API may still be silent)."""
    from pbp.stack import manager

    return any(r.name == "ray-head" and r.running for r in manager.status(state_dir)[1])


def listed_jobs(state_dir: Path) -> list[dict[str, Any]] | None:
    """The live jobs; None when the Jobs API does not answer (or there is no stack)."""
    import requests

    api = _api(state_dir)
    if api is None:
        return None
    try:
        reply = requests.get(f"{api[0]}/api/jobs/", headers=api[1], timeout=10)
        reply.raise_for_status()
        jobs = reply.json()
    except (requests.RequestException, ValueError):  # Ray down or not answering
        return None
    return [j for j in jobs if isinstance(j, dict) and j.get("status") in LIVE]


def job_line(job: dict[str, Any]) -> str:
    """A running job in one line: its submission id (a direct driver: its job id), status and entrypoint."""
    who = job.get("submission_id") or f"driver {job.get('job_id')}"
    return f"{who} ({job.get('status')}): {job.get('entrypoint')}"


def stop_submitted(state_dir: Path, jobs: list[dict[str, Any]], wait_s: float = STOP_WAIT_S) -> list[dict[str, Any]]:
    """Stop the submitted ones of ``jobs`` as ``pbp jobs stop`` does (their drivers get SIGTERM and mark their MLflow
    runs KILLED) and wait about ``wait_s`` for them to end. -> those of ``jobs`` still live after it, or not known to
    have ended (the Jobs API silent): direct drivers, which it cannot stop, among them."""
    import requests

    api = _api(state_dir)
    ids = {_key(j) for j in jobs if j.get("submission_id")}
    if api is None or not ids:
        return jobs
    for sid in sorted(ids):
        with suppress(requests.RequestException):  # not stopped: still live below, and killed with the stack
            if not requests.post(f"{api[0]}/api/jobs/{sid}/stop", headers=api[1], timeout=10).ok:
                ids.discard(sid)  # refused (gone, or not stoppable): nothing to wait for
    deadline = time.monotonic() + wait_s
    live: set[str] | None = None  # the last answer's live jobs
    while True:
        listed = listed_jobs(state_dir)
        if listed is not None:
            live = {_key(j) for j in listed}
        if (live is not None and not ids & live) or time.monotonic() > deadline:
            return jobs if live is None else [j for j in jobs if _key(j) in live]
        time.sleep(0.5)


def _key(job: dict[str, Any]) -> str:
    return str(job.get("submission_id") or job.get("job_id"))

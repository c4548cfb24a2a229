"""Submit ``jobs/*.py`` to a Ray cluster (the local stack or a cloud one) through Ray's Jobs API.

* The entrypoint is ``python jobs/NAME.py [--config FILE] [key=value ...]``; the runtime_env ships the project as
  ``working_dir`` (without venvs, build outputs, state or data) and ``platform/pbp`` as a ``py_module``, so the
  cluster runs exactly the submitted code.
* The Ray token travels as an ``Authorization`` header, never in the runtime_env; no secret is put in the
  runtime_env's ``env_vars`` (they show in Ray's dashboard): nodes read credentials from their own environment
  or the stack's state dir.
* Submission ids are stable: ``pbp-<job>-<config>-<digest of job, config text and overrides>``. Submitting the same
  thing while it runs reports the running job instead of starting a second; after it ended, a suffix ``-rN``
  makes the next id.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pbp.errors import UserError
from pbp.stack.endpoints import Endpoints, require, resolve

# gitignore-style. Ray applies them to the working_dir AND to each py_module with that module as the root, so no
# pattern may match a folder of platform/pbp (a plain "data" would drop pbp/data). Ray also honours .gitignore.
EXCLUDES = [
    "/.git",
    "/.venv",
    "/.venv-*",
    "/build",
    "/dist",
    "/.pbp",
    "/mlruns",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "*.safetensors",
    "*.tar",
    "*.pkl",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitError(UserError, RuntimeError):
    """A job that cannot be submitted or followed; the message says why."""


def project_root(start: Path | None = None) -> Path:
    """The directory holding ``jobs/`` and ``platform/pbp`` (searched upwards from ``start`` or the cwd)."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "jobs").is_dir() and (d / "platform" / "pbp").is_dir():
            return d
    raise SubmitError(f"{here}: not inside a pbp project (no jobs/ and platform/pbp/ above it)")


def available_jobs(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "jobs").glob("*.py") if not p.name.startswith("_"))


def client(address: str | None = None, endpoints: Endpoints | None = None):
    from ray.job_submission import JobSubmissionClient

    ep = endpoints or resolve()
    addr = require(address or ep.ray_address, "Ray address (RAY_ADDRESS)")
    return JobSubmissionClient(addr, headers=ep.ray_headers())


def submission_id(job: str, config: Path | None, overrides: Sequence[str]) -> str:
    h = hashlib.sha256(job.encode())
    if config is not None:
        h.update(config.read_bytes())
    for o in overrides:
        h.update(b"\0" + o.encode())
    stem = re.sub(r"[^A-Za-z0-9_-]", "-", config.stem) if config is not None else "default"
    return f"pbp-{job}-{stem}-{h.hexdigest()[:10]}"


def submit(
    job: str,
    config: Path | None = None,
    overrides: Sequence[str] = (),
    *,
    address: str | None = None,
    root: Path | None = None,
    entrypoint_resources: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Submit ``jobs/<job>.py``; returns the submission id (an already running identical job's id, if any)."""
    root = root or project_root()
    if job not in available_jobs(root):
        raise SubmitError(f"no job {job!r} in {root / 'jobs'} (available: {', '.join(available_jobs(root))})")
    if config is not None:
        config = config.resolve()
        if not config.is_file():
            raise SubmitError(f"{config}: config file not found")
        try:
            rel_config = config.relative_to(root)
        except ValueError:
            raise SubmitError(
                f"{config}: the config must be inside the project ({root}) to travel with the job"
            ) from None
    args = ["python", f"jobs/{job}.py"]
    if config is not None:
        args += ["--config", str(rel_config)]
    args += list(overrides)
    entrypoint = shlex.join(args)

    c = client(address)
    base = submission_id(job, config, overrides)
    sid = base
    for attempt in range(2, 1000):
        try:
            info = c.get_job_info(sid)
        except RuntimeError:
            break  # no such job: this id is free
        if str(info.status) not in TERMINAL and info.status.name not in TERMINAL:
            log(f"{sid} is already {info.status.name}: not submitting it twice")
            return sid
        sid = f"{base}-r{attempt}"
    runtime_env = {
        "working_dir": str(root),
        "excludes": EXCLUDES,
        "py_modules": [str(root / "platform" / "pbp")],
        "env_vars": {"PBP_SUBMISSION_ID": sid, "PYTHONUNBUFFERED": "1", "PBP_GIT_COMMIT": _git_commit(root)},
    }
    c.submit_job(
        entrypoint=entrypoint,
        submission_id=sid,
        runtime_env=runtime_env,
        metadata={"pbp_job": job, "config": str(rel_config) if config is not None else ""},
        entrypoint_resources=entrypoint_resources,
    )
    log(f"submitted {sid}: {entrypoint}")
    return sid


def _git_commit(root: Path) -> str:
    """The submitted code's commit (the working_dir travels without .git); 'unknown' outside a checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def wait(sid: str, *, address: str | None = None, timeout: float | None = None, log: Callable[[str], None] = print):
    """Follow a job's logs until it ends; returns its final status name."""
    c = client(address)
    printed = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = c.get_job_status(sid).name
        logs = c.get_job_logs(sid)
        if len(logs) > printed:
            log(logs[printed:].rstrip("\n"))
            printed = len(logs)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise SubmitError(f"{sid}: still {status} after {timeout:.0f}s")
        time.sleep(1.0)

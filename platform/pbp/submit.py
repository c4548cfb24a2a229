"""Submit ``jobs/*.py`` to a Ray cluster (the local stack or a cloud one) through Ray's Jobs API.

* The entrypoint is ``python jobs/NAME.py [--config FILE] [key=value ...]``; the runtime_env ships the project as
  ``working_dir`` (without venvs, build outputs, state or data) and ``platform/pbp`` as a ``py_module``, so the
  cluster runs exactly the submitted code.
* The Ray token travels as an ``Authorization`` header, never in the runtime_env; no secret is put in the
  runtime_env's ``env_vars`` (they show in Ray's dashboard): nodes read credentials from their own environment
  or the stack's state dir.
* Local paths in the job's config: on the local stack (its own Ray address) the job runs in the project
  directory (``PBP_SUBMIT_DIR``), so relative paths mean what they mean for ``pbp finetune`` run there. For a cluster
  elsewhere, a relative path that leaves the project or a file the project does not ship (git-ignored or excluded)
  cannot reach the job: it is refused before submitting, naming the key and the fix (an s3:// URL); an absolute
  local path is accepted with a warning (it must exist on the nodes: a shared filesystem). See :mod:`pbp.job_paths`.
* Submission ids are stable: ``pbp-<job>-<config>-<digest of job, config text and overrides>``. Submitting the same
  thing while it runs reports the running job instead of starting a second; after it ended, a suffix ``-rN``
  makes the next id.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pbp.errors import UserError
from pbp.job_paths import EXCLUDES, excludes_spec, unreachable_paths
from pbp.provenance import code_commit
from pbp.stack.endpoints import Endpoints, require, resolve, same_host_port, scoped_environ

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


T = TypeVar("T")


class SubmitError(UserError, RuntimeError):
    """A job that cannot be submitted or followed; the message says why."""


def project_root(start: Path | None = None) -> Path:
    """The directory holding ``jobs/`` and ``platform/pbp`` (searched upwards from ``start`` or the cwd)."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "jobs").is_dir() and (d / "platform" / "pbp").is_dir():
            return d
    installed = Path(__file__).resolve().parents[2]  # platform/pbp/submit.py -> the project it runs from
    hint = ""
    if (installed / "jobs").is_dir() and installed != here:
        hint = (f": run it from the project (cd {installed}; it ships as the job's working_dir) and give the job's "
                "files as s3:// URLs, or as paths inside the project or absolute paths every node can read")  # fmt: skip
    raise SubmitError(f"{here}: not inside a pbp project (no jobs/ and platform/pbp/ above it){hint}")


def available_jobs(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "jobs").glob("*.py") if not p.name.startswith("_"))


def client(address: str | None = None, endpoints: Endpoints | None = None):
    import json

    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    ep = endpoints or resolve()
    gcs = os.environ.get("RAY_ADDRESS", "")
    if not address and gcs and "://" not in gcs and gcs != "auto" and not ep.is_stack_ray(gcs):
        # a bare host:port is a cluster's GCS (for drivers): falling back to the local stack's Jobs API sent work
        # meant for that cluster to this machine
        raise SubmitError(f"RAY_ADDRESS={gcs} is a cluster's GCS address; pbp submit and pbp jobs talk to its Jobs API: "
                          "give --address http://HEAD:8265 (or RAY_API_SERVER_ADDRESS)")  # fmt: skip
    addr = require(address or ep.ray_address, "Ray address (RAY_ADDRESS)")
    try:
        # Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address given to the client: --address was
        # ignored whenever the shell had one (`pbp jobs stop ID --address A` stopped the job on RAY_ADDRESS's cluster).
        with scoped_environ(RAY_API_SERVER_ADDRESS=addr, **ep.ray_env_for(addr)):
            return JobSubmissionClient(addr, headers=ep.ray_headers(addr))
    except AuthenticationError as e:  # a 28-line traceback whose advice named the file the token already was in
        raise SubmitError(f"no access to the Ray cluster's Jobs API at {addr}: {e.message.splitlines()[0]} "
                          f"(pbp sent {_token_sent(ep, addr)}); give that cluster's token in RAY_AUTH_TOKEN or "
                          "RAY_AUTH_TOKEN_PATH") from None  # fmt: skip
    except (RuntimeError, requests.exceptions.HTTPError, ValueError) as e:  # MLflow's or S3's port given, say
        if not isinstance(e, requests.exceptions.HTTPError | json.JSONDecodeError) and "Version check" not in str(e):
            raise
        raise SubmitError(f"{addr} does not answer as a Ray Jobs API ({str(e).splitlines()[0]}): give the cluster "
                          "dashboard's address (http://HEAD:8265; `pbp stack status` shows the local stack's)"
                          ) from None  # fmt: skip
    except ConnectionError as e:  # Ray's "Failed to connect to Ray at address: ..." after a traceback per retry
        raise SubmitError(f"the Ray cluster's Jobs API at {addr} does not answer ({e}): start it (`pbp stack up` for "
                          "the local stack) or check RAY_ADDRESS / --address") from None  # fmt: skip


def _token_sent(ep: Endpoints, address: str) -> str:
    if not ep.ray_headers(address):
        return "no token of its own; Ray's lookup (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) found none or a wrong one"
    return (
        "the local stack's token" if ep.ray_token_from_stack else "the token RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH gave"
    )


def is_local_stack(address: str, endpoints: Endpoints) -> bool:
    """Whether ``address`` is the local stack's own Ray (its state dir says which): its jobs share this machine's
    filesystem. Any other address counts as elsewhere, also a loopback one (``kubectl port-forward`` to KubeRay)."""
    return bool(endpoints.stack_ray) and same_host_port(address, endpoints.stack_ray[0])  # its dashboard's


def submission_id(job: str, config: Path | None, overrides: Sequence[str]) -> str:
    h = hashlib.sha256(job.encode())
    if config is not None:
        h.update(config.read_bytes())
    for o in overrides:
        h.update(b"\0" + o.encode())
    # the run's or campaign's own name where an override gives it (two campaigns of one config read apart)
    named = [o.split("=", 1)[1] for o in overrides if o.startswith(("name=", "run_name=", "--resume="))]
    stem = named[-1] if named else config.stem if config is not None else "default"
    return f"pbp-{job}-{re.sub(r'[^A-Za-z0-9_-]', '-', stem)}-{h.hexdigest()[:10]}"


def submit(
    job: str,
    config: Path | None = None,
    overrides: Sequence[str] = (),
    *,
    address: str | None = None,
    root: Path | None = None,
    entrypoint_resources: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
    resume: str = "",
    warm_start: str = "",
) -> str:
    """Submit ``jobs/<job>.py``; returns the submission id (an already running identical job's id, if any).
    ``resume`` / ``warm_start``: a campaign's name, for ``tune`` only (``pbp tune --resume`` / ``--warm-start``)."""
    root = root or project_root()
    if job not in available_jobs(root):
        raise SubmitError(f"no job {job!r} in {root / 'jobs'} (available: {', '.join(available_jobs(root))})")
    job_args = _campaign_args(job, config, overrides, resume, warm_start)
    config = config.resolve() if config is not None else None
    rel_config = _inside_project(config, root) if config is not None else None
    loaded = None if resume else check_job_config(job, config, overrides, root)  # a resumed one's is saved with it
    campaign = _campaign_resume(job, loaded, resume, overrides)  # for `pbp jobs stop`
    pkg = _package_within_limit(root)
    entrypoint = shlex.join(["python", f"jobs/{job}.py", *(["--config", str(rel_config)] if rel_config else []),
                             *job_args, *overrides])  # fmt: skip
    ep = resolve()
    addr = require(address or ep.ray_address, "Ray address (RAY_ADDRESS)")
    local = is_local_stack(addr, ep)
    if not local:
        _check_paths_travel(job, config, overrides, root, addr, log)
    c = client(addr, ep)
    named_args = [f"{k}={v}" for k, v in zip(job_args[::2], job_args[1::2], strict=True)]  # --resume=NAME
    sid, running = _free_submission_id(c, submission_id(job, config, [*named_args, *overrides]))
    if running:
        log(
            f"{sid} is already {running}: not submitting it twice (a submission is named by its job, config and "
            f"overrides, not its code: to run changed code, `pbp jobs stop {sid}` first)"
        )
        return sid
    _announce(pkg, root, log)
    with _quiet_ray_packaging():
        c.submit_job(
            entrypoint=entrypoint,
            submission_id=sid,
            runtime_env=_runtime_env(root, sid, local),
            metadata={
                "pbp_job": job,
                "config": str(rel_config or ""),
                **({RESUME_KEY: campaign} if campaign else {}),
            },
            entrypoint_resources=entrypoint_resources,
        )
    log(f"submitted {sid} to {c.get_address()}: {entrypoint}")
    return sid


def _runtime_env(root: Path, sid: str, local: bool) -> dict[str, Any]:
    """The job's runtime_env: the project as working_dir, ``platform/pbp`` as a py_module, no secret in env_vars."""
    env_vars = {"PBP_SUBMISSION_ID": sid, "PYTHONUNBUFFERED": "1", "PBP_GIT_COMMIT": code_commit(root)}
    if local:  # the job's driver shares this filesystem: it runs in the project, as the direct command would
        env_vars["PBP_SUBMIT_DIR"] = str(root)
    return {"working_dir": str(root), "excludes": EXCLUDES, "py_modules": [str(root / "platform" / "pbp")],
            "env_vars": env_vars}  # fmt: skip


PACKAGE_WARN_BYTES = 50 * 2**20
PACKAGE_REFUSE_BYTES = 512 * 2**20
"""Ray refuses a runtime_env package of its max gRPC message size (512 MiB by default) after zipping it."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@dataclass
class PackageContents:
    """What ``pbp submit`` ships as the job's working_dir (before Ray zips it)."""

    files: list[tuple[str, int]]
    """(path relative to the project, bytes), largest first."""

    @property
    def total(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> str:
        return f"{len(self.files)} files, {_mib(self.total)}"

    def largest(self, n: int = 3) -> str:
        return ", ".join(f"{rel} ({_mib(size)})" for rel, size in self.files[:n])


def _package_within_limit(root: Path) -> PackageContents:
    """The job's package, refused before any request when Ray would refuse it after zipping and uploading."""
    pkg = package_contents(root)
    if pkg.total >= PACKAGE_REFUSE_BYTES:
        raise SubmitError(f"{root}: the job's package would be {pkg.describe()}, over Ray's upload limit of "
                          f"{_mib(PACKAGE_REFUSE_BYTES)}; the largest: {pkg.largest()}. Add them to .gitignore (or "
                          "move them out of the project) and give the job their s3:// URLs")  # fmt: skip
    return pkg


def _announce(pkg: PackageContents, root: Path, log: Callable[[str], None]) -> None:
    log(f"uploading {root}: {pkg.describe()} (pbp's excludes and .gitignore apply; Ray skips a package the cluster "
        "already has)")  # fmt: skip
    if pkg.total >= PACKAGE_WARN_BYTES:
        log(f"pbp: the package is large, every node downloads it; the largest: {pkg.largest()} (add data and "
            "checkpoints to .gitignore and give the job their s3:// URLs)")  # fmt: skip


def package_contents(root: Path) -> PackageContents:
    """The files of ``root`` the job's package holds: git's tracked and untracked-but-not-ignored files (where
    ``root`` is a git work tree; else every file), less pbp's ``EXCLUDES``, as Ray applies them."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, timeout=30, check=True).stdout  # fmt: skip
        rels = [r for r in out.decode("utf-8", "replace").split("\0") if r]
    except (OSError, subprocess.SubprocessError):
        rels = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    files = []
    for rel in dict.fromkeys(rels):
        path = root / rel
        if excludes_spec().match_file(rel) or not path.is_file():  # (a file git lists may have been deleted since)
            continue
        files.append((rel, path.stat().st_size))
    return PackageContents(sorted(files, key=lambda f: -f[1]))


RAY_PACKAGING_LOGGERS = ("ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir",
                         "ray.dashboard.modules.dashboard_sdk")  # fmt: skip
"""Ray's loggers that print a dozen lines per submission: each nested .gitignore it honours ("Ignoring upload to
cluster for these files"), that '.git' and '.venv' are "now ignored by default" (pbp's EXCLUDES name them anyway),
each package uploaded or already there. Their errors still show."""


@contextlib.contextmanager
def _quiet_ray_packaging() -> Iterator[None]:
    from pbp.console import quiet_logger

    with contextlib.ExitStack() as stack:
        for name in RAY_PACKAGING_LOGGERS:
            stack.enter_context(quiet_logger(name, logging.ERROR))
        yield


JOB_CONFIGS = {"pretrain": ("pbp.train.config", "PretrainConfig"), "finetune": ("pbp.finetune.config", "FinetuneConfig"),
               "tune": ("pbp.tune.config", "TuneConfig")}  # fmt: skip
"""The typed config each of pbp's jobs loads (``jobs/<job>.py`` runs ``pbp <job>``)."""


RESUME_KEY = "pbp_resume"
"""A tune job's ``--resume`` arguments (its campaign's name and storage), in the job's Ray metadata: `pbp jobs stop`
says how to continue it."""


def _campaign_resume(job: str, loaded: Any, resume: str, overrides: Sequence[str]) -> str:
    """``NAME [storage_path=...]``: what ``pbp submit tune --resume`` takes to continue this job's campaign."""
    if job != "tune":
        return ""
    if resume:
        from pbp.tune.config import resume_storage

        storage = resume_storage(False, "", overrides)
        name = resume
    else:
        name, storage = loaded.name, loaded.storage_path
    return name + (f" storage_path={storage}" if storage else "")


NO_CONFIG_JOBS = ("smoke",)
"""pbp's jobs that take no config."""


def job_config_class(job: str) -> type | None:
    """The config class of one of pbp's jobs (None for another job in jobs/)."""
    import importlib

    if job not in JOB_CONFIGS:
        return None
    module, name = JOB_CONFIGS[job]
    return getattr(importlib.import_module(module), name)


def _campaign_args(job: str, config: Path | None, overrides: Sequence[str], resume: str, warm_start: str
                   ) -> list[str]:  # fmt: skip
    """``--resume NAME`` / ``--warm-start NAME`` for the tune job, checked as ``pbp tune`` checks them."""
    from pbp.names import check_name

    if not (resume or warm_start):
        return []
    if job != "tune":
        raise SubmitError(f"--resume and --warm-start are for the tune job (a campaign's name), not {job}")
    if resume:
        from pbp.tune.config import resume_storage

        resume_storage(config is not None, warm_start, overrides)  # as `pbp tune --resume` checks it
        return ["--resume", check_name(resume, "--resume")]
    return ["--warm-start", check_name(warm_start, "--warm-start")]


def check_job_config(job: str, config: Path | None, overrides: Sequence[str], root: Path) -> Any:
    """Before anything is uploaded: the job's config loads, with its overrides, as the job will load it (in the
    project's root: a tune config's ``finetune:`` link is read from there), every key known and every value checked
    (a tune config's space too, against the fine-tuning config it links); else a SubmitError with the config's own
    message. The job would fail the same way, seconds after it started on the cluster. Jobs pbp does not know (a
    user's own ``jobs/*.py``) are not checked. -> the loaded config (None for those)."""
    if job not in JOB_CONFIGS:
        if job in NO_CONFIG_JOBS and (config is not None or overrides):
            raise SubmitError(f"job {job} takes no config or overrides (it would ignore them)")
        return None
    if config is None:
        raise SubmitError(f"job {job} needs its config: pbp submit {job} --config configs/{job}/<name>.yaml")
    from pbp.config import load_config

    cls = job_config_class(job)
    assert cls is not None
    try:
        with contextlib.chdir(root):
            loaded: Any = load_config(cls, config, overrides)
            if job == "tune":  # its space against its fine-tuning config, as the campaign checks before any trial
                from pbp.tune.search import check_space

                check_space(loaded)
    except (ValueError, TypeError, OSError) as e:
        raise SubmitError(f"{e}\nnothing submitted: fix the config or the override") from None
    return loaded


def _inside_project(config: Path, root: Path) -> Path:
    """The (resolved) config file's path relative to the project, which it must be inside to travel with the job."""
    if not config.is_file():
        raise SubmitError(f"{config}: config file not found")
    try:
        return config.relative_to(root)
    except ValueError:
        raise SubmitError(f"{config}: the config must be inside the project ({root}) to travel with the job") from None


def _check_paths_travel(job: str, config: Path | None, overrides: Sequence[str], root: Path, addr: str,
                        log: Callable[[str], None]) -> None:  # fmt: skip
    """For a cluster elsewhere: print the warnings of :func:`unreachable_paths`, raise on its errors."""
    errors, warnings = unreachable_paths(config, overrides, root, job_config_class(job))
    for w in warnings:
        log(f"warning: {w}")
    if errors:
        fixes = [f"{k.replace(' -> ', '.')}=s3://..." for k in (e.split("=", 1)[0] for e in errors) if " -> " in k]
        how = (
            "\n(a key of a linked config, shown as 'finetune -> task.train', takes a dotted override through the "
            "linking key, which adds it to that key's overrides list; here, with your URLs for s3://...:\n  "
            + " ".join(fixes)
            + ")"
            if fixes
            else ""
        )
        raise SubmitError(f"the job's config names local paths the cluster at {addr} cannot reach:\n  "
                          + "\n  ".join(errors) + how)  # fmt: skip


def _free_submission_id(c: Any, base: str) -> tuple[str, str]:
    """-> (the id to use, '' ) or (a running identical job's id, its status): ``base``, else ``base-rN`` after the
    jobs with the earlier ids ended."""
    sid = base
    for attempt in range(2, 1000):
        try:
            info = c.get_job_info(sid)
        except RuntimeError:
            break  # no such job: this id is free
        if str(info.status) not in TERMINAL and info.status.name not in TERMINAL:
            return sid, info.status.name
        sid = f"{base}-r{attempt}"
    return sid, ""


def wait(sid: str, *, address: str | None = None, timeout: float | None = None, log: Callable[[str], None] = print):
    """Follow a job's log as it is written until the job ends (``pbp.job_logs``: streamed, or polled where the
    stream cannot be opened); returns its final status name. Giving up (``timeout``, Ctrl-C) stops the following, not
    the job: the message says so and how to follow or stop it (a timeout is an error, Ctrl-C an interruption)."""
    from pbp.job_logs import LogPrinter, poll_pause, stream

    c = client(address)
    out = LogPrinter(log)
    deadline = None if timeout is None else time.monotonic() + timeout
    still = f"it keeps running: `pbp jobs logs {sid} --follow` follows it again, `pbp jobs stop {sid}` stops it"
    tail = ""  # how the last tail ended ("" before the first)
    try:
        while True:
            status = job_call(sid, lambda: c.get_job_status(sid)).name
            left = None if deadline is None else deadline - time.monotonic()
            if status in TERMINAL and tail == "ended":  # the tail sent every line
                out.flush()
                return status
            if status in TERMINAL or tail == "unavailable":
                out.whole_log(c.get_job_logs(sid))  # the end, or a poll: only what was not printed yet
                if status in TERMINAL:
                    return status
            if left is not None and left <= 0:
                raise SubmitError(f"{sid}: still {status} after {timeout:.0f}s; {still}")
            if tail == "unavailable":
                time.sleep(poll_pause(out.printed))
            else:
                tail = stream(c, sid, out, left)
    except KeyboardInterrupt:  # a user's detach, not an error: "pbp: interrupted: ...", exit 130
        raise KeyboardInterrupt(f"stopped following {sid}; {still}") from None


def job_call(sid: str, fn: Callable[[], T]) -> T:
    """A Jobs API call about job ``sid``; an unknown id is a SubmitError naming it (Ray raises a bare RuntimeError
    with the server's 404)."""
    try:
        return fn()
    except RuntimeError as e:
        if "does not exist" in str(e) or "404" in str(e):
            raise SubmitError(f"no job {sid!r} on this cluster (`pbp jobs list` lists them)") from None
        if "submission type jobs" in str(e):  # Ray's 400 for a driver that connected directly
            raise SubmitError(f"{sid} is a driver that connected directly (a `pbp` command run against the "
                              "cluster), not a submitted job: its output went to that command's terminal") from None  # fmt: skip
        raise

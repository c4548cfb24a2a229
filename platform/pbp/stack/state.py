"""The local stack's state directory: what runs where, and the generated credentials.

Layout of a state dir (default ``$PBP_STACK_DIR`` or ``~/.pbp/stack``):

    stack.json         ports, bucket names, pids and start commands of every service (no secrets; 0644)
    secrets.json       S3 keys, MLflow admin password and Flask secret (0600, generated on first start)
    ray_token          Ray's auth token (0600; RAY_AUTH_TOKEN_PATH points here)
    seaweedfs-s3.json  SeaweedFS' S3 identity config (holds the keys: 0600)
    mlflow-auth.ini    MLflow basic-auth config (no password in it)
    data/seaweedfs/    object storage volumes         data/mlflow/   SQLite stores (runs, registry, users)
    logs/<service>.log one log per service

Every write is atomic (temp file + rename), so a crash never leaves a half-written state file; a corrupt one is
reported naming the file, and nothing under ``data/`` is touched.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pbp.errors import UserError

STATE_FILE = "stack.json"
SECRETS_FILE = "secrets.json"
RAY_TOKEN_FILE = "ray_token"
STATE_VERSION = 1
DEFAULT_BUCKETS = {"data": "pbp-data", "runs": "pbp-runs", "mlflow": "pbp-mlflow"}


class StackStateError(UserError, RuntimeError):
    """A state file that cannot be read; the message names the file and what to do."""


def default_state_dir() -> Path:
    env = os.environ.get("PBP_STACK_DIR")
    return Path(env).expanduser().resolve() if env else (Path.home() / ".pbp" / "stack").resolve()


def make_private(root: Path) -> None:
    """The state dir and everything in it readable by this user only (dirs 0700, files 0600, executables 0700):
    it holds the MLflow auth database, object data and logs. Fixes stacks made before this was enforced; the
    services themselves run with umask 077 (``pbp.stack.procs.start``), so what they create is private too."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for d, dirs, files in os.walk(root):
        os.chmod(d, 0o700)
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                mode = os.stat(p).st_mode
                os.chmod(p, 0o700 if mode & 0o100 else 0o600)
        dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x))]


def atomic_write(path: Path, content: str | bytes, mode: int = 0o600) -> None:
    """Write via a temp file + rename in the same directory: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StackStateError(
            f"{path}: corrupt state file ({e}). Move it aside and run `pbp stack up` again; "
            "data under data/ is not touched."
        ) from None
    if not isinstance(data, dict):
        raise StackStateError(f"{path}: corrupt state file (expected a JSON object)")
    return data


@dataclass
class ServiceRecord:
    """One started process group: what was started, and where it listens."""

    pid: int | None = None
    """Leader of the process group started by pbp (None: never started or stopped cleanly)."""
    cmd: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    started_at: float | None = None
    layout: int = 0
    """:data:`LAYOUT` of the pbp that started it (0: before layouts were recorded)."""


LAYOUT = 1
"""How pbp starts the services (their security files, session paths): raised when a change needs running services
restarted; `pbp stack up` restarts those an older pbp started. 1: SeaweedFS with mutual TLS and JWTs, Ray's session
in /tmp/pbp-UID-HASH."""


@dataclass
class StackState:
    """``stack.json``: everything about a stack except secrets."""

    state_dir: str
    host: str = "127.0.0.1"
    workers: int = 2
    buckets: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_BUCKETS))
    services: dict[str, ServiceRecord] = field(default_factory=dict)
    version: int = STATE_VERSION

    @property
    def dir(self) -> Path:
        return Path(self.state_dir)

    def port(self, service: str, name: str = "http") -> int:
        return self.services[service].ports[name]

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.port('seaweedfs', 's3')}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.port('mlflow')}"

    @property
    def ray_gcs_address(self) -> str:
        return f"{self.host}:{self.port('ray-head', 'gcs')}"

    @property
    def ray_dashboard_url(self) -> str:
        return f"http://{self.host}:{self.port('ray-head', 'dashboard')}"

    @property
    def prometheus_url(self) -> str | None:
        """None where the stack runs without Prometheus (its binary is not installed)."""
        rec = self.services.get("prometheus")
        return f"http://{self.host}:{rec.ports['http']}" if rec and "http" in rec.ports else None

    def save(self) -> None:
        atomic_write(self.dir / STATE_FILE, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        raw = _read_json(path)
        try:
            if raw.get("version") != STATE_VERSION:
                raise StackStateError(f"{path}: state version {raw.get('version')} is not {STATE_VERSION}")
            services = {k: ServiceRecord(**v) for k, v in raw.pop("services", {}).items()}
            state = cls(**raw, services=services)
        except (TypeError, KeyError) as e:
            raise StackStateError(
                f"{path}: corrupt state file ({e}). Move it aside and run `pbp stack up` again; "
                "data under data/ is not touched."
            ) from None
        if Path(state.state_dir).resolve() != state_dir.resolve():
            state.state_dir = str(state_dir.resolve())  # the directory was moved; paths follow it
        return state


@dataclass
class Secrets:
    """``secrets.json`` (0600): generated once, kept across restarts so data stays reachable."""

    s3_access_key: str
    s3_secret_key: str
    mlflow_admin_user: str
    mlflow_admin_password: str
    flask_secret_key: str
    mlflow_reader_user: str = "reader"
    """A second, read-only MLflow user (default permission READ): what a colleague who may look but not promote has."""
    mlflow_reader_password: str = ""
    seaweedfs_jwt_secret: str = ""
    """From which SeaweedFS's JWT signing keys are derived (``pbp.stack.seaweedfs_security``)."""

    @classmethod
    def generate(cls) -> Secrets:
        return cls(
            s3_access_key="PBP" + secrets.token_hex(8).upper(),
            s3_secret_key=secrets.token_urlsafe(30),
            mlflow_admin_user="admin",
            mlflow_admin_password=secrets.token_urlsafe(18),
            flask_secret_key=secrets.token_hex(32),
            mlflow_reader_password=secrets.token_urlsafe(18),
            seaweedfs_jwt_secret=secrets.token_hex(32),
        )

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Secrets:
        path = state_dir / SECRETS_FILE
        if path.exists():
            return cls.load(state_dir)
        s = cls.generate()
        atomic_write(path, json.dumps(asdict(s), indent=2) + "\n", mode=0o600)
        return s

    @classmethod
    def load(cls, state_dir: Path) -> Secrets:
        path = state_dir / SECRETS_FILE
        if not path.exists():
            raise StackStateError(f"{path}: no credentials; start the stack with `pbp stack up`")
        raw = _read_json(path)
        try:
            s = cls(**raw)
        except TypeError as e:
            raise StackStateError(f"{path}: corrupt credentials file ({e})") from None
        # A stack made before a secret existed (the read-only user, SeaweedFS's JWTs): add it, keep the rest.
        if not s.mlflow_reader_password or not s.seaweedfs_jwt_secret:
            s.mlflow_reader_password = s.mlflow_reader_password or secrets.token_urlsafe(18)
            s.seaweedfs_jwt_secret = s.seaweedfs_jwt_secret or secrets.token_hex(32)
            atomic_write(path, json.dumps(asdict(s), indent=2) + "\n", mode=0o600)
        return s


def ray_token(state_dir: Path, create: bool = False) -> str:
    path = state_dir / RAY_TOKEN_FILE
    if not path.exists():
        if not create:
            raise StackStateError(f"{path}: no Ray token; start the stack with `pbp stack up`")
        atomic_write(path, secrets.token_hex(32) + "\n", mode=0o600)
    token = path.read_text().strip()
    if not token:
        raise StackStateError(f"{path}: empty Ray token file")
    return token

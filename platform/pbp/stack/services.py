"""The services of the local stack: how each is started and how its health is checked.

    seaweedfs   ``weed mini`` (master, volume, filer, S3 gateway) with pbp's S3 identity; buckets created
    mlflow      ``mlflow server`` with SQLite stores, S3 artifacts (proxied) and basic-auth
    ray-head    ``ray start --head --num-cpus 0 --block`` with token auth (runs drivers, not training)
    ray-worker-N ``ray start --address ... --block``, one per simulated node, each tagged with a custom
                resource ``pbp-node-worker-N`` so work can be pinned to it
    prometheus  the Prometheus server (Debian's ``prometheus`` package) scraping every Ray node's metrics agent
                through Ray's service discovery file; started only where the binary is installed

SeaweedFS, MLflow, the Ray dashboard and Prometheus bind 127.0.0.1; Ray's GCS, raylets and agents listen on every
interface whatever ``--node-ip-address`` says (token auth guards them, not the metrics export; README). Secrets
reach the services through their own process environment or 0600 files in the state dir, never through command
lines (visible in ``ps``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pbp.errors import UserError
from pbp.stack.seaweedfs_security import jwt_env, write_security
from pbp.stack.state import RAY_TOKEN_FILE, Secrets, StackState, atomic_write

S3_IDENTITY_FILE = "seaweedfs-s3.json"
MLFLOW_AUTH_FILE = "mlflow-auth.ini"
PROMETHEUS_CONFIG = "prometheus.yml"
SCRAPE_INTERVAL_S = 5
RAY_SD_FILE = "prom_metrics_service_discovery.json"


class ServiceError(UserError, RuntimeError):
    """A service that cannot start or is unhealthy; the message names it (and carries its log tail)."""


@dataclass(frozen=True)
class Service:
    name: str
    ports: tuple[str, ...]
    """Named ports the service needs (allocated once, remembered in stack.json)."""
    marker: str
    """A string in the group leader's command line, to recognise our process after a crash."""


SEAWEEDFS_PORTS = ("s3", "master", "volume", "filer", "admin", "s3_grpc", "master_grpc", "volume_grpc", "filer_grpc")
RAY_NODE_PORTS = ("agent_listen", "agent_grpc", "runtime_env", "metrics", "node_manager", "object_manager")
RAY_HEAD_PORTS = ("gcs", "dashboard", "client", *RAY_NODE_PORTS)


PROMETHEUS = Service("prometheus", ("http",), "prometheus")
PROMETHEUS_HINT = (
    "not installed, so Ray's and pbp's metrics are not stored: `sudo apt-get install -y --no-install-recommends "
    "prometheus` (or any Prometheus 2.x on PATH, or PBP_PROMETHEUS=/path/to/prometheus), then `pbp stack up`"
)


def prometheus_binary() -> str | None:
    """Prometheus from PBP_PROMETHEUS, else on PATH (Debian installs /usr/bin/prometheus)."""
    explicit = os.environ.get("PBP_PROMETHEUS")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("prometheus") or (
        str(Path("/usr/bin/prometheus")) if Path("/usr/bin/prometheus").exists() else None
    )


def services_for(workers: int, prometheus: bool = False) -> list[Service]:
    """The stack's services in start order; ``prometheus`` where its binary is installed (see ``with_prometheus``)."""
    out = [
        Service("seaweedfs", SEAWEEDFS_PORTS, "weed"),
        Service("mlflow", ("http",), "mlflow"),
        Service("ray-head", RAY_HEAD_PORTS, "ray"),
    ]
    out += [PROMETHEUS] if prometheus else []
    out += [Service(f"ray-worker-{i}", RAY_NODE_PORTS, "ray") for i in range(1, workers + 1)]
    return out


def with_prometheus(state: StackState) -> bool:
    """Does this stack run Prometheus: its binary is installed now, or it was started before (so it is stopped)."""
    return prometheus_binary() is not None or state.services.get("prometheus", None) is not None


def _bin(name: str) -> str:
    """An executable next to this Python (the venv), else on PATH."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"{name}: executable not found next to {sys.executable} or on PATH (is pbp installed?)")
    return found


def private_tmp(state: StackState) -> str:
    """A folder of the stack's in /tmp that only its user may enter: /tmp/pbp-<uid>-<hash of the state dir>."""
    digest = hashlib.sha256(str(state.dir).encode()).hexdigest()[:10]
    return f"/tmp/pbp-{os.getuid()}-{digest}"


def ray_temp_dir(state: StackState) -> str:
    """Ray's session dir: short (unix socket paths are limited to 107 bytes), so not in the state dir, and inside
    :func:`private_tmp` (Ray makes its own folders 0777 and accepts one that exists: in a guessable /tmp path another
    local user could create it first, or swap a job's unpacked package in it, and run code as the stack's user)."""
    return f"{private_tmp(state)}/ray"


def ensure_private_tmp(state: StackState) -> Path:
    """Create :func:`private_tmp` (0700), or check the one there: a directory, not a link, owned by this user and
    closed to everyone else; anything else is refused naming it (Ray would put its sockets and job code there)."""
    path = Path(private_tmp(state))
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        what = ("not a directory" if not stat.S_ISDIR(st.st_mode) else f"owned by uid {st.st_uid}"
                if st.st_uid != os.getuid() else f"open to others (mode {stat.S_IMODE(st.st_mode):o})")  # fmt: skip
        raise ServiceError(f"{path}: exists and is {what}; refusing to put Ray's session there (another user could "
                           "plant code in it). Remove it, or start the stack with another --state-dir")  # fmt: skip
    return path


def base_env(state: StackState) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PBP_STACK_DIR": str(state.dir),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(state.dir / RAY_TOKEN_FILE),
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            # Job entrypoints say `python`: on these nodes it must be the interpreter pbp is installed in.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    env.pop("RAY_AUTH_TOKEN", None)  # the state dir's token wins over a stray one in the caller's environment
    env.pop("RAY_ADDRESS", None)
    return env


def command(svc: Service, state: StackState, secrets: Secrets, object_store_mb: int, worker_cpus: int) -> list[str]:
    """The command line that starts ``svc`` (no secrets in it)."""
    p = state.services[svc.name].ports
    host = state.host
    d = state.dir
    if svc.name == "seaweedfs":
        return [
            _bin("weed"), "mini", f"-dir={d / 'data' / 'seaweedfs'}", f"-ip={host}", f"-ip.bind={host}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}", f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-admin.port={p['admin']}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-s3.config={d / S3_IDENTITY_FILE}", f"-bucket={','.join(state.buckets.values())}",
        ]  # fmt: skip
    if svc.name == "prometheus":
        binary = prometheus_binary()
        if binary is None:
            raise ServiceError(f"prometheus: {PROMETHEUS_HINT}")
        return [
            binary, f"--config.file={d / PROMETHEUS_CONFIG}", f"--storage.tsdb.path={d / 'data' / 'prometheus'}",
            f"--web.listen-address={host}:{p['http']}", "--storage.tsdb.retention.time=15d",
        ]  # fmt: skip
    if svc.name == "mlflow":
        db = d / "data" / "mlflow" / "mlflow.db"
        return [
            _bin("mlflow"), "server", "--host", host, "--port", str(p["http"]), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", f"s3://{state.buckets['mlflow']}/",
            "--serve-artifacts", "--app-name", "basic-auth",
        ]  # fmt: skip
    common = [
        f"--node-ip-address={host}", f"--dashboard-agent-listen-port={p['agent_listen']}",
        f"--dashboard-agent-grpc-port={p['agent_grpc']}", f"--runtime-env-agent-port={p['runtime_env']}",
        f"--metrics-export-port={p['metrics']}", f"--node-manager-port={p['node_manager']}",
        f"--object-manager-port={p['object_manager']}", f"--object-store-memory={object_store_mb * 1024 * 1024}",
        "--disable-usage-stats", "--block",
    ]  # fmt: skip
    if svc.name == "ray-head":
        return [
            _bin("ray"), "start", "--head", f"--port={p['gcs']}", f"--dashboard-host={host}",
            f"--dashboard-port={p['dashboard']}", f"--ray-client-server-port={p['client']}", "--num-cpus=0",
            f"--temp-dir={ray_temp_dir(state)}", "--include-dashboard=true", *common,
        ]  # fmt: skip
    node_tag = {node_resource(svc.name): 1}
    return [
        # The nodes of the local stack share the head's session log dir: one log monitor (the head's) forwards every
        # worker's output to its driver once; one per node forwarded each line three times.
        _bin("ray"), "start", f"--address={state.ray_gcs_address}", f"--num-cpus={worker_cpus}",
        f"--resources={json.dumps(node_tag)}", "--include-log-monitor=false", *common,
    ]  # fmt: skip


def node_resource(service_name: str) -> str:
    """The custom resource that tags a worker node: ``ray-worker-1`` -> ``pbp-node-worker-1``."""
    return "pbp-node-" + service_name.removeprefix("ray-")


def service_env(svc: Service, state: StackState, secrets: Secrets) -> dict[str, str]:
    env = base_env(state)
    if svc.name.startswith("ray-"):
        # Ray's own processes that look the cluster up without an address (Ray Train's PlacementGroupCleaner, which
        # frees a run's CPUs when its controller dies, e.g. a campaign trial stopped by ASHA) scan the machine for Ray
        # instances and fail when there are two (this stack and another: the test suite's, a second state dir). The
        # cleaner's thread then died and the trial's CPUs stayed taken: the next trial waited for them.
        env["RAY_API_SERVER_ADDRESS"] = state.ray_dashboard_url
    if svc.name == "ray-head" and "prometheus" in state.services:
        env["RAY_PROMETHEUS_HOST"] = f"http://{state.host}:{state.port('prometheus')}"  # the dashboard's charts
    if svc.name == "seaweedfs":
        env.update(jwt_env(secrets.seaweedfs_jwt_secret))  # with security.toml in its working dir (the state dir)
    if svc.name == "mlflow":
        env.update(
            {
                "AWS_ACCESS_KEY_ID": secrets.s3_access_key,
                "AWS_SECRET_ACCESS_KEY": secrets.s3_secret_key,
                "AWS_DEFAULT_REGION": "us-east-1",
                "MLFLOW_S3_ENDPOINT_URL": state.s3_endpoint,
                "MLFLOW_AUTH_CONFIG_PATH": str(state.dir / MLFLOW_AUTH_FILE),
                "MLFLOW_AUTH_ADMIN_USERNAME": secrets.mlflow_admin_user,
                "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.mlflow_admin_password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.flask_secret_key,
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job-runner pool (~3 GB RSS)
            }
        )
    return env


def write_service_files(state: StackState, secrets: Secrets) -> None:
    """Config files the services read (rewritten on every start, so they follow the state dir)."""
    identity = {
        "identities": [
            {
                "name": "pbp",
                "credentials": [{"accessKey": secrets.s3_access_key, "secretKey": secrets.s3_secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    atomic_write(state.dir / S3_IDENTITY_FILE, json.dumps(identity, indent=2) + "\n", mode=0o600)
    write_security(state.dir)  # SeaweedFS's other ports: mutual TLS and JWTs
    auth_db = state.dir / "data" / "mlflow" / "basic_auth.db"
    atomic_write(
        state.dir / MLFLOW_AUTH_FILE,
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{auth_db}\n"
        f"admin_username = {secrets.mlflow_admin_user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        # A checked password is remembered for 5 minutes (MLflow forgets it at once when the user's password or
        # account changes): without it every request pays a deliberately slow password hash (0.15 s each here).
        "auth_cache_ttl_seconds = 300\n",
    )
    (state.dir / "data" / "mlflow").mkdir(parents=True, exist_ok=True)
    (state.dir / "data" / "seaweedfs").mkdir(parents=True, exist_ok=True)
    (state.dir / "data" / "prometheus").mkdir(parents=True, exist_ok=True)
    atomic_write(state.dir / PROMETHEUS_CONFIG, prometheus_config(state))


def prometheus_config(state: StackState) -> str:
    """Scrape every Ray node's metrics agent, found through the service-discovery file Ray's head keeps up to date
    in its session dir (the same file KubeRay's and Ray's own Prometheus setups read)."""
    sd = Path(ray_temp_dir(state)) / RAY_SD_FILE
    return (
        "# Written by `pbp stack up` (rewritten on every start).\n"
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
        "scrape_configs:\n"
        "  - job_name: ray\n"
        f"    file_sd_configs:\n      - files: ['{sd}']\n        refresh_interval: {SCRAPE_INTERVAL_S}s\n"
        "  - job_name: prometheus\n"
        f"    static_configs:\n      - targets: ['{state.host}:{state.port('prometheus')}']\n"
        if "prometheus" in state.services
        else "# Prometheus is not part of this stack.\n"
    )


# ---- health checks: return None when healthy, else a short reason ---------------------------------------------


def _http(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check(svc: Service, state: StackState, secrets: Secrets) -> str | None:
    try:
        if svc.name == "seaweedfs":
            return _check_s3(state, secrets)
        if svc.name == "mlflow":
            return _check_mlflow(state, secrets)
        if svc.name == "prometheus":
            status, _ = _http(f"http://{state.host}:{state.port('prometheus')}/-/ready")
            return None if status == 200 else f"/-/ready answered {status}"
        return _check_ray(svc, state)
    except (OSError, urllib.error.URLError) as e:
        return f"not answering ({e})"


def _check_s3(state: StackState, secrets: Secrets) -> str | None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.client(
        "s3",
        endpoint_url=state.s3_endpoint,
        aws_access_key_id=secrets.s3_access_key,
        aws_secret_access_key=secrets.s3_secret_key,
        region_name="us-east-1",
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
    )
    try:
        have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in state.buckets.values():
            if bucket not in have:
                s3.create_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as e:
        return f"S3 API not ready ({e})"
    return None


def _check_mlflow(state: StackState, secrets: Secrets) -> str | None:
    status, _ = _http(f"{state.mlflow_uri}/health")
    if status != 200:
        return f"/health answered {status}"
    api = f"{state.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    status, _ = _http(api)
    if status != 401:
        return f"authentication is not enforced (unauthenticated API call answered {status})"
    import base64

    basic = base64.b64encode(f"{secrets.mlflow_admin_user}:{secrets.mlflow_admin_password}".encode()).decode()
    status, body = _http(api, {"Authorization": f"Basic {basic}"}, timeout=5)
    if status != 200:
        return f"admin credentials refused ({status}: {body[:200]!r})"
    return _ensure_reader(state, secrets, {"Authorization": f"Basic {basic}"})


def _ensure_reader(state: StackState, secrets: Secrets, admin: dict[str, str]) -> str | None:
    """The stack's second MLflow user, read-only (the server's default permission is READ): created once."""
    import urllib.parse

    user = urllib.parse.quote(secrets.mlflow_reader_user)
    status, _ = _http(f"{state.mlflow_uri}/api/2.0/mlflow/users/get?username={user}", admin, timeout=5)
    if status == 200:
        return None
    body = json.dumps({"username": secrets.mlflow_reader_user, "password": secrets.mlflow_reader_password}).encode()
    req = urllib.request.Request(f"{state.mlflow_uri}/api/2.0/mlflow/users/create", data=body, method="POST",
                                 headers={**admin, "Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=5):
            return None
    except urllib.error.HTTPError as e:
        return f"could not create the read-only user {secrets.mlflow_reader_user!r} ({e.code}: {e.read()[:200]!r})"


def ray_auth_header(state: StackState) -> dict[str, str]:
    token = (state.dir / RAY_TOKEN_FILE).read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def ray_alive_nodes(state: StackState) -> list[dict]:
    status, body = _http(f"{state.ray_dashboard_url}/api/v0/nodes?limit=1000", ray_auth_header(state), timeout=5)
    if status != 200:
        raise OSError(f"dashboard answered {status}")
    nodes = json.loads(body)["data"]["result"]["result"]
    return [n for n in nodes if n.get("state") == "ALIVE"]


def _check_ray(svc: Service, state: StackState) -> str | None:
    status, _ = _http(f"{state.ray_dashboard_url}/api/version", ray_auth_header(state))
    if status != 200:
        return f"dashboard answered {status}"
    nodes = ray_alive_nodes(state)
    if svc.name == "ray-head":
        return None if any(n.get("is_head_node") for n in nodes) else "head node not registered yet"
    tag = node_resource(svc.name)
    return None if any(tag in (n.get("resources_total") or {}) for n in nodes) else "node not registered yet"

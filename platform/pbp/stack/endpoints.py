"""Where the services are and how to authenticate, for any client (CLI, jobs on cluster nodes, tests).

Resolution order for every value: the process environment first (a cloud cluster sets ``AWS_*`` / an IAM role,
``MLFLOW_TRACKING_URI``...), then the local stack's state dir (``$PBP_STACK_DIR`` or ``~/.pbp/stack``), which
``pbp stack up`` wrote. So ``pbp submit`` works without typing anything after ``pbp stack up``, and the same jobs
work on AWS with nothing but environment and instance roles.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbp.stack.state import RAY_TOKEN_FILE, Secrets, StackState, StackStateError, default_state_dir

S3_MAX_ATTEMPTS = 10
"""Attempts per S3 request in every client pbp makes (boto3, s3fs, pyarrow), with the SDKs' standard backoff: under
a 30 % error rate a request then fails for good with probability 0.3**10 ~ 6e-6 (with AWS' default of 3, 2.7 %)."""


def s3_bucket_and_key(url: str) -> tuple[str, str]:
    """``s3://BUCKET/KEY`` -> (BUCKET, KEY); KEY is "" for the bucket itself."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url}")
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


@dataclass(frozen=True)
class Endpoints:
    s3_endpoint: str | None
    """None means AWS' own endpoint (credentials from the default chain: env, profile, instance role)."""
    s3_access_key: str | None
    s3_secret_key: str | None
    s3_region: str | None
    """The environment's (``AWS_DEFAULT_REGION``, ``AWS_REGION``); us-east-1 for another endpoint (the local stack);
    None for AWS' own endpoint with none given: each SDK finds it (profile, bucket), see :meth:`pyarrow_fs`."""
    mlflow_uri: str | None
    mlflow_username: str | None
    mlflow_password: str | None
    ray_address: str | None
    """Ray dashboard / Jobs API URL (http://host:8265)."""
    ray_token: str | None
    buckets: dict[str, str]
    state_dir: Path | None
    stack_ray: tuple[str, ...] = ()
    """The local stack's own Ray addresses (dashboard URL, GCS address); none without a stack."""
    ray_token_from_stack: bool = False
    s3_session_token: str | None = None
    """``AWS_SESSION_TOKEN`` of temporary credentials the environment gives with its keys (SSO, an assumed role, a CI
    job's OIDC role): passed with them, since an SDK handed keys explicitly ignores the token its environment holds
    (without it AWS refuses every request: "The security token included in the request is invalid")."""
    mlflow_env_withheld: tuple[str, ...] = ()
    """Variables of this process's environment that hold the stack's MLflow credentials (exported by `pbp stack
    env`) while the tracking URI is another server's: :func:`apply_mlflow_env` takes them away, or MLflow's client
    would send them there."""
    """``ray_token`` is the stack's (its state dir), not one the environment gave: it goes to the stack's Ray only."""

    # ---- clients ------------------------------------------------------------------------------------------

    def boto3_client(self, attempts: int = S3_MAX_ATTEMPTS, **config: Any):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=self.s3_access_key,
            aws_secret_access_key=self.s3_secret_key,
            aws_session_token=self.s3_session_token,
            region_name=self.s3_region,
            config=Config(retries={"max_attempts": attempts, "mode": "standard"}, **config),
        )

    def s3fs_options(self) -> dict[str, Any]:
        """``storage_options`` for s3fs / fsspec."""
        opts: dict[str, Any] = {
            "client_kwargs": {"region_name": self.s3_region},
            "config_kwargs": {"retries": {"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}},
        }
        if self.s3_endpoint:
            opts["endpoint_url"] = self.s3_endpoint
        if self.s3_access_key:
            opts.update(key=self.s3_access_key, secret=self.s3_secret_key)
            if self.s3_session_token:
                opts["token"] = self.s3_session_token
        return opts

    def pyarrow_fs(self, url: str | None = None):
        """A pyarrow S3FileSystem for ``url``'s bucket. pyarrow ignores AWS_ENDPOINT_URL, so the endpoint is passed
        explicitly. On AWS' own endpoint the region is the bucket's, else the environment's: pyarrow, unlike boto3 and
        s3fs, does not follow S3's redirect to a bucket's region, so a checkpoint to a us-west-2 bucket failed under a
        guessed us-east-1, and would under the AWS_REGION of a cluster elsewhere (EKS sets it in every pod)."""
        from pyarrow import fs

        kwargs: dict[str, Any] = {"retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS)}
        bucket = None
        if url and url.startswith("s3://") and not self.s3_endpoint:  # on AWS' own endpoint
            bucket = s3_bucket_and_key(url)[0]
        region = (bucket and _bucket_region(bucket)) or self.s3_region
        if region:
            kwargs["region"] = region  # (else the AWS SDK's own: AWS_DEFAULT_REGION, the profile, us-east-1)
        if self.s3_endpoint:
            scheme, _, rest = self.s3_endpoint.partition("://")
            kwargs.update(endpoint_override=rest, scheme=scheme)
        if self.s3_access_key:
            kwargs.update(access_key=self.s3_access_key, secret_key=self.s3_secret_key)
            if self.s3_session_token:
                kwargs["session_token"] = self.s3_session_token
        return fs.S3FileSystem(**kwargs)

    def mlflow_env(self) -> dict[str, str]:
        """Environment for MLflow clients (set in the client process only; never in a Ray runtime_env)."""
        out = {}
        if self.mlflow_uri:
            out["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        if self.mlflow_username:
            out["MLFLOW_TRACKING_USERNAME"] = self.mlflow_username
            out["MLFLOW_TRACKING_PASSWORD"] = self.mlflow_password or ""
        return out

    def is_stack_ray(self, address: str) -> bool:
        """Whether ``address`` (a URL or host:port) is one of the local stack's own Ray addresses."""
        return bool(self.stack_ray) and same_host_port(address, *self.stack_ray)

    def ray_env_for(self, address: str) -> dict[str, str | None]:
        """Changes to this process's environment while a Ray client is made for ``address``: none for the stack's
        own Ray; for another cluster, the stack's token path taken away (``pbp stack env`` exports it, and Ray's
        client adds the token it names to every request), so Ray's own lookup finds only the user's
        (RAY_AUTH_TOKEN, ~/.ray/auth_token)."""
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        if self.is_stack_ray(address) or not path or self.state_dir is None:
            return {}
        return {"RAY_AUTH_TOKEN_PATH": None} if Path(path).resolve() == self.state_dir / RAY_TOKEN_FILE else {}

    def ray_headers(self, address: str | None = None) -> dict[str, str]:
        """The token header for a request to ``address`` (default: ``ray_address``). The stack's own token is never
        sent to another cluster (its secret would be that cluster's to use); give that cluster's in RAY_AUTH_TOKEN."""
        to = address or self.ray_address
        if not self.ray_token or (self.ray_token_from_stack and to and not self.is_stack_ray(to)):
            return {}
        return {"Authorization": f"Bearer {self.ray_token}"}


def same_host_port(address: str, *others: str) -> bool:
    """Whether ``address`` names the same host and port as any of ``others`` (URLs or host:port). Every name of this
    machine (localhost, its interfaces' addresses) is one host: inside a job Ray gives the driver the GCS as
    ``<machine's IP>:<port>``, which is the local stack's GCS that listens on 127.0.0.1 and every interface."""
    from urllib.parse import urlparse

    def where(url: str) -> tuple[str, int | None]:
        u = urlparse(url if "://" in url else f"http://{url}")
        host = u.hostname or ""
        return ("127.0.0.1" if host == "localhost" or host in _this_machine() else host), u.port

    return where(address) in {where(o) for o in others if o}


@functools.cache
def _this_machine() -> frozenset[str]:
    """The addresses of this machine's network interfaces."""
    import socket

    import psutil

    return frozenset(a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
                     if a.family in (socket.AF_INET, socket.AF_INET6))  # fmt: skip


def resolve(state_dir: Path | None = None, env: dict[str, str] | None = None) -> Endpoints:
    """Endpoints from the environment, falling back to the stack's state dir (if there is one)."""
    env = dict(os.environ if env is None else env)
    sdir = (state_dir or (Path(env["PBP_STACK_DIR"]) if env.get("PBP_STACK_DIR") else default_state_dir())).resolve()
    state = StackState.load(sdir) if (sdir / "stack.json").exists() else None
    secrets = Secrets.load(sdir) if state is not None and (sdir / "secrets.json").exists() else None
    token, from_stack = _ray_token(env, sdir, state is not None)

    def pick(name: str, fallback: str | None) -> str | None:
        return env.get(name) or fallback

    # The stack's secrets go to the stack's own services only: never to an endpoint the environment names instead.
    env_s3 = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")  # S3's own variable first, as botocore
    use_stack_s3 = state is not None and not env_s3 and not env.get("AWS_ACCESS_KEY_ID")
    mlflow_uri = pick("MLFLOW_TRACKING_URI", state.mlflow_uri if state else None)
    username, password, withheld = _mlflow_login(env, mlflow_uri, state, secrets)
    s3_endpoint = env_s3 or (state.s3_endpoint if state else None)
    return Endpoints(
        s3_endpoint=s3_endpoint,
        s3_access_key=env.get("AWS_ACCESS_KEY_ID") or (secrets.s3_access_key if use_stack_s3 and secrets else None),
        s3_secret_key=env.get("AWS_SECRET_ACCESS_KEY") or (secrets.s3_secret_key if use_stack_s3 and secrets else None),
        s3_region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or _endpoint_region(s3_endpoint),
        mlflow_uri=mlflow_uri,
        mlflow_username=username,
        mlflow_password=password,
        # an http RAY_ADDRESS is typed for the Jobs API (`RAY_ADDRESS=http://127.0.0.1:8265 pbp submit ...`): it
        # outranks the RAY_API_SERVER_ADDRESS a `pbp stack env` shell exports
        ray_address=_ray_http_address(env.get("RAY_ADDRESS"))
        or _ray_http_address(env.get("RAY_API_SERVER_ADDRESS"))
        or (state.ray_dashboard_url if state else None),
        ray_token=token,
        buckets={**(state.buckets if state else {}), **{k: env[v] for k, v in BUCKET_ENV.items() if env.get(v)}},
        state_dir=sdir if state is not None else None,
        stack_ray=(state.ray_dashboard_url, state.ray_gcs_address) if state is not None else (),
        ray_token_from_stack=from_stack,
        mlflow_env_withheld=withheld,
        s3_session_token=_session_token(env, secrets),
    )


_AWS_S3_HOST = re.compile(
    r"(?:^|\.)s3(?:-accesspoint)?(?:[.-]fips)?(?:\.dualstack)?[.-]([a-z]{2}(?:-[a-z]+)+-\d)\.(?:vpce\.)?"
    r"amazonaws\.com(?:\.cn)?(?::\d+)?$"
)  # s3.R, s3-R (legacy), s3-fips.R, s3.dualstack.R, s3-fips.dualstack.R, s3-accesspoint.R, VPC endpoints, China


def _endpoint_region(endpoint: str | None) -> str | None:
    """The region an endpoint with none given signs for: an AWS S3 host's own (``s3.us-west-2.amazonaws.com``, an
    interface VPC endpoint ``bucket.vpce-1a2b.s3.us-west-2.vpce.amazonaws.com``, FIPS, dual-stack and China hosts),
    us-east-1 for any other (the local stack, MinIO), None for AWS' default endpoint (each SDK finds the region)."""
    if not endpoint:
        return None
    m = _AWS_S3_HOST.search(endpoint.partition("://")[2].split("/", 1)[0].lower().replace(".:", ":").rstrip("."))
    return m.group(1) if m else "us-east-1"


@functools.cache
def _bucket_region(bucket: str) -> str | None:
    """The AWS region of ``bucket`` (one unauthenticated request), or None where it cannot be told."""
    from pyarrow import fs

    try:
        return fs.resolve_s3_region(bucket)
    except (OSError, ValueError):
        return None


def _session_token(env: dict[str, str], secrets: Secrets | None) -> str | None:
    """The environment's session token, for the environment's own keys: none for the stack's keys (exported by `pbp
    stack env` into a shell that may still hold an AWS login's token: it belongs to other keys)."""
    key = env.get("AWS_ACCESS_KEY_ID")
    if not key or (secrets is not None and key == secrets.s3_access_key):
        return None
    return env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None


def _ray_token(env: dict[str, str], sdir: Path, has_stack: bool) -> tuple[str | None, bool]:
    """-> (the Ray token: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names, else the stack's; whether it is the
    stack's, also where `pbp stack env` exported its path: that one goes to the stack's Ray only)."""
    token = env.get("RAY_AUTH_TOKEN")
    path = env.get("RAY_AUTH_TOKEN_PATH") or (str(sdir / RAY_TOKEN_FILE) if has_stack else None)
    from_stack = not token and has_stack and Path(path or "").resolve() == sdir / RAY_TOKEN_FILE
    if not token and path and Path(path).exists():
        token = Path(path).read_text().strip()
    return token, from_stack and token is not None


def _mlflow_login(env: dict[str, str], uri: str | None, state: StackState | None, secrets: Secrets | None
                  ) -> tuple[str | None, str | None, tuple[str, ...]]:  # fmt: skip
    """-> (username, password, the environment's variables to withhold). The environment's login, else the stack's
    admin for the stack's own server; a login of the stack's (as `pbp stack env` exports it) is withheld from any
    other server."""
    own = state is not None and uri is not None and same_host_port(uri, state.mlflow_uri)
    stacks = secrets is not None and env.get("MLFLOW_TRACKING_PASSWORD") in (
        secrets.mlflow_admin_password, secrets.mlflow_reader_password)  # fmt: skip
    if stacks and not own:
        return None, None, ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    if env.get("MLFLOW_TRACKING_USERNAME"):  # one's own username never takes the stack's password
        return env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD"), ()
    if own and secrets is not None:
        return secrets.mlflow_admin_user, env.get("MLFLOW_TRACKING_PASSWORD") or secrets.mlflow_admin_password, ()
    return None, env.get("MLFLOW_TRACKING_PASSWORD"), ()


def apply_mlflow_env(ep: Endpoints) -> None:
    """This process's environment for MLflow's client: the resolved server and credentials, and none of the stack's
    where the server is another (:attr:`Endpoints.mlflow_env_withheld`)."""
    for name in ep.mlflow_env_withheld:
        os.environ.pop(name, None)
    os.environ.update(ep.mlflow_env())


@contextmanager
def scoped_environ(**values: str | None) -> Iterator[None]:
    """``os.environ`` with ``values`` set (None: removed) while inside, as it was afterwards."""
    before = {k: os.environ.get(k) for k in values}
    try:
        _set_environ(values)
        yield
    finally:
        _set_environ(before)


def _set_environ(values: dict[str, str | None]) -> None:
    """Set each of ``values`` in ``os.environ``; remove those that are None."""
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


BUCKET_ENV = {"data": "PBP_DATA_BUCKET", "runs": "PBP_RUNS_BUCKET"}
"""Without a local stack, pbp's buckets come from these variables (a cluster's manifests set them)."""


def bucket_for(role: str, endpoints: Endpoints | None = None, what: str = "") -> str:
    """pbp's bucket for ``role`` (``data``, ``runs``): ``$PBP_DATA_BUCKET`` / ``$PBP_RUNS_BUCKET``, else the local
    stack's. Neither is an error (``what`` says what needed it): pbp's own bucket names are the stack's, and on S3 a
    bucket name is global (``pbp-runs`` there is someone else's, or nobody's)."""
    ep = endpoints or resolve()
    name = ep.buckets.get(role)
    if not name:
        raise StackStateError(f"no {role} bucket{f' for {what}' if what else ''}: set {BUCKET_ENV[role]}=YOUR-BUCKET "
                              "or start the local stack")  # fmt: skip
    return name


def runs_storage(kind: str, endpoints: Endpoints | None = None) -> str:
    """Where runs of ``kind`` (pretrain, finetune, tune) go when their config names no storage path:
    ``s3://<runs bucket>/<kind>`` (:func:`bucket_for`)."""
    try:
        return f"s3://{bucket_for('runs', endpoints)}/{kind}"
    except StackStateError as e:
        raise StackStateError(f"no storage for the {kind} run: give checkpoint.storage_path (storage_path for a "
                              f"campaign) as s3://YOUR-BUCKET/{kind}, or {str(e).split(': ', 1)[1]}") from None  # fmt: skip


def set_ray_auth_env(endpoints: Endpoints | None = None, address: str | None = None) -> None:
    """Token settings for a Ray client in THIS process; Ray reads them once, at import, so call this first.
    ``address``: where it will connect (default RAY_ADDRESS; neither: the local stack); the stack's token is set only
    for the stack's own Ray."""
    ep = endpoints or resolve()
    to = address or os.environ.get("RAY_ADDRESS")
    if to == "auto":  # Ray's own search for a cluster on this machine: the stack's, where there is one
        to = None
    if to:  # another cluster: not the stack's token path (nothing to change for the stack's own)
        _set_environ(ep.ray_env_for(to))
    if ep.state_dir is not None and (not to or ep.is_stack_ray(to)):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(ep.state_dir / RAY_TOKEN_FILE))


def _ray_http_address(addr: str | None) -> str | None:
    if not addr or addr == "auto":
        return None
    return addr if "://" in addr else None  # a bare GCS address is for ray.init, not the Jobs API


def require(value: str | None, what: str) -> str:
    if not value:
        raise StackStateError(
            f"no {what} configured: start the local stack (`pbp stack up`) or set the environment "
            "(see `pbp stack env` for the variables)"
        )
    return value

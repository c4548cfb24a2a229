"""Submission and endpoint resolution without a cluster (the stack tests cover the real thing)."""

import json
import os

import pytest

from pbp import job_paths, submit
from pbp.config import load_config, read_yaml
from pbp.stack.endpoints import resolve
from pbp.stack.state import Secrets, ServiceRecord, StackState
from pbp.tune.config import TuneConfig

from .conftest import REPO


def test_submission_ids_are_stable_and_depend_on_config_and_overrides(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("a: 1\n")
    a = submit.submission_id("pretrain", cfg, ["x=1"])
    assert a == submit.submission_id("pretrain", cfg, ["x=1"])
    assert a.startswith("pbp-pretrain-tiny-")
    assert submit.submission_id("tune", cfg, ["name=w2-b"]).startswith("pbp-tune-w2-b-")  # the campaign's own name
    assert a != submit.submission_id("pretrain", cfg, ["x=2"])
    cfg.write_text("a: 2\n")
    assert a != submit.submission_id("pretrain", cfg, ["x=1"])


def test_unknown_job_and_config_outside_the_project_are_refused(tmp_path):
    with pytest.raises(submit.SubmitError, match=r"no job 'nope'.*available: .*smoke"):
        submit.submit("nope", root=REPO)
    outside = tmp_path / "c.yaml"
    outside.write_text("{}\n")
    with pytest.raises(submit.SubmitError, match="must be inside the project"):
        submit.submit("smoke", outside, root=REPO)
    with pytest.raises(submit.SubmitError, match="config file not found"):
        submit.submit("smoke", REPO / "configs" / "missing.yaml", root=REPO)


def test_project_root_is_found_from_a_subdirectory_and_outside_it_the_error_says_where_it_is(tmp_path):
    assert submit.project_root(REPO / "platform" / "pbp" / "model") == REPO
    with pytest.raises(submit.SubmitError) as e:  # a user's data directory: where to run it from, and the files
        submit.project_root(tmp_path)
    assert str(e.value).startswith(f"{tmp_path}: not inside a pbp project (no jobs/ and platform/pbp/ above it): "
                                   f"run it from the project (cd {REPO}; ")  # fmt: skip
    assert "s3:// URLs" in str(e.value)


def test_the_package_lists_what_ships_and_a_large_one_is_named_before_anything_is_uploaded(tmp_path, monkeypatch):
    """`pbp submit` said only 'uploading DIR': a 300 MiB CSV left in the project went to every node unannounced."""
    import subprocess

    root = tmp_path / "proj"
    (root / "jobs").mkdir(parents=True)
    (root / "platform" / "pbp").mkdir(parents=True)
    (root / "jobs" / "smoke.py").write_text("print('hi')\n")
    (root / "platform" / "pbp" / "__init__.py").write_text("")
    (root / ".gitignore").write_text("ignored/\n")
    (root / "ignored").mkdir()
    (root / "ignored" / "big.bin").write_bytes(b"x" * 4096)
    (root / "build").mkdir()
    (root / "build" / "out.txt").write_text("built")  # pbp's EXCLUDES
    (root / "weights.safetensors").write_bytes(b"w" * 100)  # pbp's EXCLUDES
    (root / "data.csv").write_bytes(b"s" * 3000)  # untracked, not ignored: it ships
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "jobs", "platform", ".gitignore"], check=True)
    pkg = submit.package_contents(root)
    assert pkg.files == [("data.csv", 3000), ("jobs/smoke.py", 12), (".gitignore", 9),
                         ("platform/pbp/__init__.py", 0)]  # fmt: skip
    assert pkg.describe() == "4 files, 0.0 MiB" and pkg.largest(1) == "data.csv (0.0 MiB)"

    monkeypatch.setattr(submit, "PACKAGE_REFUSE_BYTES", 2000)  # the refusal comes before any request
    monkeypatch.setattr(submit, "client", lambda *a, **k: pytest.fail("no request before the size is checked"))
    monkeypatch.setattr(submit, "_free_submission_id", lambda *a: pytest.fail("no request"))
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    with pytest.raises(
        submit.SubmitError,
        match=r"the job's package would be 4 files, .* over Ray's upload limit of "
        r"0\.0 MiB; the largest: data\.csv \(0\.0 MiB\)",
    ):
        submit.submit("smoke", None, root=root)


def _fake_stack(d):
    state = StackState(state_dir=str(d))
    state.services = {
        "seaweedfs": ServiceRecord(ports={"s3": 1111}),
        "mlflow": ServiceRecord(ports={"http": 2222}),
        "ray-head": ServiceRecord(ports={"gcs": 3333, "dashboard": 4444}),
    }
    state.save()
    Secrets.load_or_create(d)
    (d / "ray_token").write_text("tok\n")
    return json.loads((d / "secrets.json").read_text())


def test_endpoints_come_from_the_state_dir_when_the_environment_is_silent(tmp_path):
    secrets = _fake_stack(tmp_path)
    ep = resolve(tmp_path, env={})
    assert ep.s3_endpoint == "http://127.0.0.1:1111" and ep.s3_access_key == secrets["s3_access_key"]
    assert ep.mlflow_uri == "http://127.0.0.1:2222" and ep.mlflow_password == secrets["mlflow_admin_password"]
    assert ep.ray_address == "http://127.0.0.1:4444" and ep.ray_headers() == {"Authorization": "Bearer tok"}
    assert ep.s3fs_options()["endpoint_url"] == "http://127.0.0.1:1111"
    assert ep.buckets["data"] == "pbp-data"


def test_an_http_ray_address_typed_before_a_command_wins_over_the_exported_jobs_api(tmp_path):
    """In a `pbp stack env` shell (RAY_API_SERVER_ADDRESS = the stack's dashboard), infra/README's
    `RAY_ADDRESS=http://127.0.0.1:8265 pbp submit ...` (a tunnel to a cloud cluster) went to the local stack."""
    _fake_stack(tmp_path)
    shell = {"RAY_ADDRESS": "127.0.0.1:3333", "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:4444"}
    assert resolve(tmp_path, env=shell).ray_address == "http://127.0.0.1:4444"
    typed = {**shell, "RAY_ADDRESS": "http://127.0.0.1:8265"}
    assert resolve(tmp_path, env=typed).ray_address == "http://127.0.0.1:8265"


def test_environment_wins_over_the_state_dir(tmp_path):
    _fake_stack(tmp_path)
    env = {
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "MLFLOW_TRACKING_URI": "https://mlflow.example",
        "RAY_ADDRESS": "http://head:8265",
        "RAY_AUTH_TOKEN": "envtok",
    }
    ep = resolve(tmp_path, env=env)
    assert (ep.s3_access_key, ep.s3_secret_key) == ("AK", "SK")
    assert ep.mlflow_uri == "https://mlflow.example"
    assert ep.ray_address == "http://head:8265" and ep.ray_token == "envtok"


def test_temporary_aws_credentials_travel_with_their_session_token(tmp_path):
    """Keys of temporary credentials (SSO, an assumed role, a CI job's OIDC role: AWS_SESSION_TOKEN beside them) were
    handed to boto3, s3fs and pyarrow without the token, which an SDK given keys explicitly does not look up: AWS
    refuses every such request. The stack's own keys, exported into a shell that still holds an AWS login's token,
    are sent without that token."""
    secrets = _fake_stack(tmp_path)
    env = {"AWS_ACCESS_KEY_ID": "ASIATEMP", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLE"}
    ep = resolve(tmp_path, env=env)
    creds = ep.boto3_client()._request_signer._credentials
    assert (creds.access_key, creds.token) == ("ASIATEMP", "FwoGZXIvYXdzEXAMPLE")
    assert ep.s3fs_options()["token"] == "FwoGZXIvYXdzEXAMPLE"
    assert ep.pyarrow_fs().__reduce__()[1][0]["session_token"] == "FwoGZXIvYXdzEXAMPLE"
    stack_keys = {
        **env,
        "AWS_ACCESS_KEY_ID": secrets["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": secrets["s3_secret_key"],
    }
    mine = resolve(tmp_path, env=stack_keys)
    assert mine.s3_session_token is None and "token" not in mine.s3fs_options()
    assert mine.boto3_client()._request_signer._credentials.token is None
    assert mine.pyarrow_fs().__reduce__()[1][0]["session_token"] == ""
    assert resolve(tmp_path, env={"AWS_SESSION_TOKEN": "x"}).s3_session_token is None  # no keys: the SDK's own chain


def test_on_aws_pyarrow_gets_the_buckets_own_region(tmp_path, monkeypatch):
    """pbp put us-east-1 wherever no region was given, and the environment's where one was: boto3 and s3fs follow
    S3's redirect to a bucket's region, pyarrow (Ray Train's checkpoints, campaign state) does not, so a run on
    infra/aws's us-west-2 cluster (whose nodes set no AWS_REGION), or on an EKS cluster (which sets its own region
    in every pod) writing to a bucket elsewhere, could not write its checkpoints. On AWS' own endpoint the bucket's
    region is asked of AWS (stood in for here: no AWS from the tests); the environment's is the fallback."""
    from pyarrow import fs as pafs

    from pbp.stack import endpoints

    regions = {"my-runs": "us-west-2", "gone": None}
    asked: list[str] = []

    def bucket_region(bucket: str) -> str:
        asked.append(bucket)
        if regions[bucket] is None:
            raise OSError(f"bucket {bucket} not found")
        return regions[bucket]

    monkeypatch.setattr(pafs, "resolve_s3_region", bucket_region)
    endpoints._bucket_region.cache_clear()
    try:

        def region(env: dict, url: str | None) -> str:
            return resolve(tmp_path, env=env).pyarrow_fs(url).__reduce__()[1][0]["region"]

        aws = resolve(tmp_path, env={})
        assert aws.s3_region is None  # boto3 and s3fs find it themselves (they follow S3's redirect)
        assert region({}, "s3://my-runs/ft/run-1") == "us-west-2" and asked == ["my-runs"]
        assert region({"AWS_REGION": "eu-west-1"}, "s3://my-runs/x") == "us-west-2"  # (asked once: cached)
        assert region({"AWS_REGION": "eu-west-1"}, "s3://gone/x") == "eu-west-1" and asked == ["my-runs", "gone"]
        # Another endpoint decides it: the environment's region, else the one its AWS host names, else us-east-1.
        vpce = "https://bucket.vpce-0a1b2c3d-x1y2.s3.eu-central-1.vpce.amazonaws.com"
        assert region({"AWS_ENDPOINT_URL": vpce}, "s3://my-runs/x") == "eu-central-1"
        assert region({"AWS_ENDPOINT_URL": "https://minio.example.com"}, "s3://my-runs/x") == "us-east-1"
        for host, named in [("s3.dualstack.ap-south-1.amazonaws.com", "ap-south-1"),  # these were signed for us-east-1
                            ("s3-fips.dualstack.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
                            ("s3.cn-north-1.amazonaws.com.cn", "cn-north-1"),
                            ("s3-accesspoint.eu-west-3.amazonaws.com:443", "eu-west-3"),
                            ("s3-us-west-1.amazonaws.com", "us-west-1"),  # (the legacy dash form already was read)
                            ("S3.EU-NORTH-1.AMAZONAWS.COM.", "eu-north-1"),  # a host's case and final dot
                            # not AWS hosts: signed for us-east-1 as any other endpoint
                            ("s3.eu-west-1.amazonaws.com.evil.example", "us-east-1"),
                            ("mys3.eu-west-1.amazonaws.com", "us-east-1"), ("s3.eu-west-1.example.com", "us-east-1")]:  # fmt: skip
            assert region({"AWS_ENDPOINT_URL": f"https://{host}"}, "s3://my-runs/x") == named, host
        assert region({"AWS_ENDPOINT_URL": vpce, "AWS_REGION": "eu-west-1"}, None) == "eu-west-1"
        _fake_stack(tmp_path)
        assert region({}, "s3://pbp-runs/x") == "us-east-1"  # the local stack: its own endpoint
        assert asked == ["my-runs", "gone"]
    finally:
        endpoints._bucket_region.cache_clear()


def test_the_s3_endpoint_variable_wins_over_the_global_one(tmp_path):
    """botocore reads AWS_ENDPOINT_URL_S3 before AWS_ENDPOINT_URL (which also redirects STS, Secrets Manager...):
    pbp read only the global one, so a user who set the S3 one for MinIO or a VPC endpoint had pbp talk to AWS'
    default endpoint, or to the local stack."""
    secrets = _fake_stack(tmp_path)
    ep = resolve(tmp_path, env={"AWS_ENDPOINT_URL_S3": "https://minio.example.com", "AWS_ENDPOINT_URL": "http://x:1"})
    assert ep.s3_endpoint == "https://minio.example.com" and ep.s3fs_options()["endpoint_url"] == ep.s3_endpoint
    assert ep.s3_access_key != secrets["s3_access_key"]  # the stack's keys stay with the stack


def test_the_stacks_secrets_never_go_to_a_server_the_environment_names_instead(tmp_path, monkeypatch):
    """With a stack's state dir present and MLFLOW_TRACKING_URI / RAY_ADDRESS naming another team's servers, the
    stack's MLflow admin password and Ray token went to them."""
    secrets = _fake_stack(tmp_path)
    other = resolve(tmp_path, env={"MLFLOW_TRACKING_URI": "https://mlflow.other.example",
                                   "RAY_ADDRESS": "https://ray.other.example:8265"})  # fmt: skip
    assert other.mlflow_uri == "https://mlflow.other.example"
    assert other.mlflow_username is None and other.mlflow_password is None and other.mlflow_env() == {
        "MLFLOW_TRACKING_URI": "https://mlflow.other.example"}  # fmt: skip
    assert other.ray_headers() == {} and other.ray_headers("http://127.0.0.1:8265") == {}  # a port-forward
    exported = resolve(tmp_path, env={"RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray_token")})  # as `pbp stack env` has it
    assert exported.ray_headers("https://ray.other.example:8265") == {}
    # The stack's own addresses, however written, still get them.
    mine = resolve(
        tmp_path, env={"MLFLOW_TRACKING_URI": "http://localhost:2222/", "RAY_ADDRESS": "http://127.0.0.1:4444"}
    )
    assert mine.mlflow_password == secrets["mlflow_admin_password"]
    assert mine.ray_headers() == {"Authorization": "Bearer tok"} == mine.ray_headers("127.0.0.1:3333")  # GCS
    # `pbp stack env` exported the stack's admin login; pointed elsewhere, MLflow's client must not send it.
    exported = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": secrets["mlflow_admin_password"]}
    away = resolve(tmp_path, env={**exported, "MLFLOW_TRACKING_URI": "https://mlflow.other.example"})
    assert away.mlflow_password is None and away.mlflow_env_withheld == tuple(exported)
    monkeypatch.setattr(os, "environ", {**exported})
    from pbp.stack.endpoints import apply_mlflow_env

    apply_mlflow_env(away)
    assert os.environ == {"MLFLOW_TRACKING_URI": "https://mlflow.other.example"}
    home = resolve(tmp_path, env={**exported, "MLFLOW_TRACKING_URI": "http://127.0.0.1:2222"})
    assert home.mlflow_password == secrets["mlflow_admin_password"] and not home.mlflow_env_withheld
    # A user's own credentials go where the user points them; a username of one's own never takes the stack's password.
    own = resolve(tmp_path, env={"MLFLOW_TRACKING_USERNAME": "me", "RAY_AUTH_TOKEN": "theirs",
                                 "RAY_ADDRESS": "https://ray.other.example:8265"})  # fmt: skip
    assert (own.mlflow_username, own.mlflow_password) == ("me", None)
    assert own.ray_headers() == {"Authorization": "Bearer theirs"}
    # The driver's token settings (Ray reads them at import): set for the stack's Ray, not for another cluster's.
    from pbp.stack.endpoints import set_ray_auth_env

    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    set_ray_auth_env(resolve(tmp_path, env={}), "10.0.0.5:6379")
    assert "RAY_AUTH_TOKEN_PATH" not in os.environ
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "ray_token"))  # exported by `pbp stack env`
    set_ray_auth_env(resolve(tmp_path, env={}), "10.0.0.5:6379")
    assert "RAY_AUTH_TOKEN_PATH" not in os.environ  # the stack's token is not this cluster's
    # Inside a submitted job Ray gives the driver the GCS as <this machine's IP>:<port>: that is the stack's GCS, and
    # the job must keep the stack's token (every submitted pretrain/finetune/tune failed at ray.init without it).
    from pbp.stack.endpoints import _this_machine

    machine = sorted(a for a in _this_machine() if ":" not in a and not a.startswith("127."))
    assert machine, "this machine has no non-loopback IPv4 address to test with"
    set_ray_auth_env(resolve(tmp_path, env={}), f"{machine[0]}:3333")
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(tmp_path.resolve() / "ray_token")
    assert not resolve(tmp_path, env={}).is_stack_ray(f"{machine[0]}:3334")  # another port: another cluster
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "ray_token"))
    set_ray_auth_env(resolve(tmp_path, env={}), "auto")  # Ray's search on this machine: the stack
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(tmp_path.resolve() / "ray_token")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    set_ray_auth_env(resolve(tmp_path, env={}), "127.0.0.1:3333")
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(tmp_path.resolve() / "ray_token")


def test_without_a_stack_runs_go_only_to_a_bucket_the_user_names(tmp_path):
    """With no stack, a run without checkpoint.storage_path went to s3://pbp-runs/...: S3 bucket names are global,
    so that is someone else's bucket (AccessDenied at best)."""
    from pbp.stack.endpoints import runs_storage
    from pbp.stack.state import StackStateError

    with pytest.raises(StackStateError, match=r"no storage for the pretrain run: give checkpoint.storage_path .*"
                                              r"s3://YOUR-BUCKET/pretrain, or set PBP_RUNS_BUCKET"):  # fmt: skip
        runs_storage("pretrain", resolve(tmp_path / "none", env={}))
    ep = resolve(tmp_path / "none", env={"PBP_RUNS_BUCKET": "acme-ml-runs", "PBP_DATA_BUCKET": "acme-ml-data"})
    assert runs_storage("tune", ep) == "s3://acme-ml-runs/tune" and ep.buckets["data"] == "acme-ml-data"
    _fake_stack(tmp_path)  # the stack's own buckets where the environment names none; the environment first
    assert runs_storage("finetune", resolve(tmp_path, env={})) == "s3://pbp-runs/finetune"
    assert runs_storage("finetune", resolve(tmp_path, env={"PBP_RUNS_BUCKET": "x"})) == "s3://x/finetune"
    from pbp.stack.endpoints import bucket_for

    with pytest.raises(StackStateError, match=r"no data bucket for the smoke check: set PBP_DATA_BUCKET=YOUR-BUCKET"):
        bucket_for("data", resolve(tmp_path / "none", env={}), "the smoke check")


def test_cloud_environment_without_a_stack(tmp_path):
    ep = resolve(tmp_path / "none", env={"AWS_REGION": "eu-west-1"})
    assert ep.s3_endpoint is None and ep.s3_access_key is None  # AWS' default credential chain
    assert ep.s3_region == "eu-west-1" and ep.state_dir is None
    assert "endpoint_url" not in ep.s3fs_options()


def test_excludes_never_drop_library_code():
    """Ray applies the excludes to the pbp py_module too (with the module as root): no library file may match."""
    import pathspec

    spec = pathspec.PathSpec.from_lines("gitwildmatch", job_paths.EXCLUDES)
    lib = REPO / "platform" / "pbp"
    dropped = [
        p for p in lib.rglob("*.py") if "__pycache__" not in p.parts and spec.match_file(str(p.relative_to(lib)))
    ]
    assert not dropped
    assert spec.match_file(".venv/bin/python") and spec.match_file("build/parity/checkpoint.pkl")


def _project(tmp_path):
    """A small project (jobs/, platform/pbp/) beside a data file outside it."""
    root = tmp_path / "proj"
    for d in ("jobs", "platform/pbp", "configs", "data", "build"):
        (root / d).mkdir(parents=True)
    (tmp_path / "outside.csv").write_text("seq,label\n")
    (root / "data" / "inside.csv").write_text("seq,label\n")
    (root / "build" / "made.csv").write_text("seq,label\n")
    (root / "configs" / "ft.yaml").write_text(
        "task:\n  train: ../outside.csv\n  valid: data/inside.csv\n  test: build/made.csv\nreport_dir: build\n"
    )
    (root / "configs" / "tune.yaml").write_text("finetune: configs/ft.yaml\nfinetune_overrides: []\nname: x\n")
    return root


def test_local_paths_a_remote_cluster_cannot_reach_are_named_with_their_keys(tmp_path):
    root = _project(tmp_path)
    errors, warnings = job_paths.unreachable_paths(root / "configs" / "ft.yaml", [], root)
    assert len(errors) == 2
    assert errors[0].startswith("task.train=../outside.csv: outside the project") and "s3://" in errors[0]
    assert errors[1].startswith("task.test=build/made.csv: not shipped with the job")
    assert len(warnings) == 1 and warnings[0].startswith("report_dir=build: a folder the job's working_dir does not")
    # A path that leaves the project is refused by its form, also where it does not exist here; values that are
    # no path this filesystem can look up (a long sequence, "~nobody...") are not paths, not crashes.
    odd = ["task.valid=../nowhere/x.csv", f"note=~nosuchuser{os.getpid()}/x", f"seq={'M' * 300}"]
    errors, _ = job_paths.unreachable_paths(root / "configs" / "ft.yaml", odd, root)
    assert [e.split(":")[0] for e in errors] == ["task.train=../outside.csv", "task.valid=../nowhere/x.csv",
                                                 "task.test=build/made.csv"]  # fmt: skip
    # A config that links itself is read a few levels deep, not for ever.
    (root / "configs" / "loop.yaml").write_text("again: configs/loop.yaml\ndata: ../outside.csv\n")
    errors, _ = job_paths.unreachable_paths(root / "configs" / "loop.yaml", [], root)
    assert errors and all("outside the project" in e for e in errors)
    # A linked config is read with its overrides; an override fixes what it replaces; an absolute path warns.
    tune = root / "configs" / "tune.yaml"
    errors, _ = job_paths.unreachable_paths(tune, [], root)
    assert [e.split(":")[0] for e in errors] == [
        "finetune -> task.train=../outside.csv",
        "finetune -> task.test=build/made.csv",
    ]
    fixed = f"finetune_overrides=[task.train=s3://b/t.csv, task.test={tmp_path / 'outside.csv'}]"
    errors, warnings = job_paths.unreachable_paths(tune, [fixed], root)
    assert not errors
    absolute = [w for w in warnings if "a local absolute path" in w]
    assert len(absolute) == 1 and "task.test=" in absolute[0]


def test_an_input_that_does_not_exist_here_is_named_before_a_remote_submission(tmp_path):
    """task.train=build/x.csv (missing) and task.valid=/tmp/x.csv (missing) went to the cluster, which then failed
    on them; only existing files were checked. Inputs (task files, init, data.url) are checked whether or not they
    exist; outputs may not exist yet."""
    root = _project(tmp_path)
    missing = ["task.train=build/nope.csv", "task.valid=data/typo.csv", f"task.test={tmp_path / 'gone.csv'}",
               "init=none", "report_dir=build/new-reports"]  # fmt: skip
    for uri in ("runs:/0123abcd/model", "models:/stability@champion", "s3://b/m/"):  # URIs are no local paths
        found = job_paths.unreachable_paths(root / "configs" / "ft.yaml", [f"init={uri}"], root)
        assert not any("init=" in m for m in found[0] + found[1]), found
    errors, warnings = job_paths.unreachable_paths(root / "configs" / "ft.yaml", missing, root)
    assert [e.split(": ")[0] for e in errors] == ["task.train=build/nope.csv", "task.valid=data/typo.csv"]
    assert all("no such file or folder in the project" in e for e in errors)
    assert any(w.startswith(f"task.test={tmp_path / 'gone.csv'}: not on this machine") for w in warnings)
    assert not any("init=" in m or "new-reports" in m for m in errors + warnings)


def test_a_submission_to_a_remote_cluster_is_refused_before_any_request_when_a_task_file_cannot_reach_it():
    tune = REPO / "configs" / "tune" / "tiny.yaml"
    with pytest.raises(submit.SubmitError, match=r"(?s)cannot reach.*finetune -> task.train=\.\./shared") as e:
        submit.submit("tune", tune, address="http://10.255.255.1:8265", root=REPO)
    # The fix it shows is a dotted override through the link per file; typed with URLs, the job's config (loaded as
    # the job loads it) keeps its own list of overrides and moves the three task files to S3, and the check passes.
    suggested = str(e.value).rsplit("\n  ", 1)[1].removesuffix(")").split()
    assert suggested == ["finetune.task.train=s3://...", "finetune.task.valid=s3://...", "finetune.task.test=s3://..."]
    typed = [o.replace("s3://...", "s3://b/k.csv") for o in suggested]
    own = read_yaml(tune)["finetune_overrides"]
    assert load_config(TuneConfig, tune, typed).finetune_overrides == [
        *own,
        *(o.removeprefix("finetune.") for o in typed),
    ]
    assert job_paths.unreachable_paths(tune, typed, REPO, TuneConfig)[0] == []


def test_only_the_local_stacks_own_ray_counts_as_this_machine(tmp_path):
    """Its jobs share this filesystem; another address, even a loopback one (a port-forward to a remote cluster),
    gets the check for paths that cannot travel."""
    _fake_stack(tmp_path)
    ep = resolve(tmp_path, env={})
    assert submit.is_local_stack("http://127.0.0.1:4444", ep) and submit.is_local_stack("localhost:4444/", ep)
    assert not submit.is_local_stack("http://127.0.0.1:8265", ep)  # kubectl port-forward svc/raycluster-head 8265
    assert not submit.is_local_stack("http://10.0.0.5:4444", ep)
    assert not submit.is_local_stack("http://127.0.0.1:4444", resolve(tmp_path / "none", env={}))  # no stack here


def test_every_job_script_imports_what_it_runs():
    """jobs/*.py are thin: an import error would show only on the cluster, after a submission."""
    import runpy

    for job in submit.available_jobs(REPO):
        ns = runpy.run_path(str(REPO / "jobs" / f"{job}.py"), run_name="not_main")
        assert "main" in ns, job  # pbp's CLI (or the smoke check's own main)


def test_a_job_whose_config_does_not_load_is_refused_before_anything_is_uploaded(monkeypatch):
    """Before: the job was submitted, started on the cluster and failed seconds later on the unknown key."""
    with pytest.raises(
        submit.SubmitError, match=r"unknown key 'stages\[0\]\.early_stop_patience'.*\n.*nothing submitted"
    ):
        submit.submit("finetune", REPO / "configs/finetune/tiny.yaml", ["stages.0.early_stop_patience=3"],
                      address="http://10.255.255.1:8265", root=REPO)  # fmt: skip
    with pytest.raises(submit.SubmitError, match=r"nope\.yaml"):  # a tune config's link, read as the campaign reads it
        submit.check_job_config("tune", REPO / "configs/tune/tiny.yaml", ["finetune=configs/finetune/nope.yaml"], REPO)
    with pytest.raises(submit.SubmitError, match=r"unknown key 'stages\[0\]\.bogus'"):
        submit.check_job_config("tune", REPO / "configs/tune/tiny.yaml", ['finetune_overrides=["stages.0.bogus=1"]'],
                                REPO)  # fmt: skip
    with pytest.raises(submit.SubmitError, match="job pretrain needs its config"):
        submit.submit("pretrain", None, address="http://10.255.255.1:8265", root=REPO)
    # Every shipped config of pbp's jobs passes the check, from any working directory (a tune config's finetune:
    # link is read from the project's root, as the job reads it).
    monkeypatch.chdir(REPO / "platform")
    for job in submit.JOB_CONFIGS:
        for config in sorted((REPO / "configs" / job).glob("*.yaml")):
            submit.check_job_config(job, config, [], REPO)
    submit.check_job_config("my_job", None, ["anything=1"], REPO)  # a job pbp does not know is not checked
    with pytest.raises(submit.SubmitError, match="job smoke takes no config or overrides"):  # it ignored them
        submit.check_job_config("smoke", None, ["anything=1"], REPO)


def test_the_job_config_map_matches_the_job_scripts_and_commands():
    """Each of pbp's jobs runs `pbp JOB`, which loads the config class submit checks the config against."""
    import dataclasses
    import importlib

    from pbp.cli.main import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for job, (module, name) in submit.JOB_CONFIGS.items():
        assert f'main(["{job}", *sys.argv[1:]])' in (REPO / "jobs" / f"{job}.py").read_text(), job
        assert dataclasses.is_dataclass(getattr(importlib.import_module(module), name)) and job in commands


def test_a_campaign_is_resumed_or_warm_started_as_a_job(monkeypatch, tmp_path):
    """`pbp jobs stop` on a campaign said `pbp tune --resume NAME`, which runs the driver on your own machine (against
    a cloud cluster, a Ray client connection the dashboard tunnel does not carry); resubmitting failed on the
    cluster ('already exists') and `resume=true` was an unknown key. Now `pbp submit tune --resume NAME`."""
    sent: list[dict] = []

    class Cluster:  # Ray's job client, as submit uses it
        def get_job_info(self, sid):
            raise RuntimeError("no such job")

        def submit_job(self, **kw):
            sent.append(kw)

        def get_address(self):
            return "http://10.0.0.5:8265"

    monkeypatch.setattr(submit, "client", lambda *a, **k: Cluster())
    monkeypatch.setenv("PBP_STACK_DIR", str(tmp_path / "no-stack"))
    log: list[str] = []
    sid = submit.submit("tune", None, ["storage_path=s3://b/tune"], address="http://10.0.0.5:8265", root=REPO,
                        resume="my-campaign", log=log.append)  # fmt: skip
    assert sent[0]["entrypoint"] == "python jobs/tune.py --resume my-campaign storage_path=s3://b/tune"
    assert sent[0]["metadata"]["pbp_resume"] == "my-campaign storage_path=s3://b/tune"  # for `pbp jobs stop`
    assert sid.startswith("pbp-tune-my-campaign-") and any("to http://10.0.0.5:8265" in line for line in log)
    in_s3 = [f"finetune.task.{role}=s3://b/{role}.csv" for role in ("train", "valid", "test")]
    submit.submit("tune", REPO / "configs/tune/tiny.yaml", ["name=next", *in_s3], address="http://10.0.0.5:8265",
                  root=REPO, warm_start="my-campaign", log=log.append)  # fmt: skip
    assert sent[1]["entrypoint"].startswith(
        "python jobs/tune.py --config configs/tune/tiny.yaml --warm-start my-campaign name=next"
    )
    for kwargs, refusal in [
        (dict(job="finetune", resume="x"), "for the tune job"),
        (dict(config=REPO / "configs/tune/tiny.yaml", resume="x"), "takes the campaign's saved config"),
        (dict(overrides=["num_samples=3"], resume="x"), "takes the campaign's saved config"),
        (dict(resume="../x"), "--resume"),
    ]:
        args = {"job": "tune", "config": None, "overrides": [], **kwargs}
        with pytest.raises((submit.SubmitError, ValueError), match=refusal):
            submit.submit(args.pop("job"), args.pop("config"), args.pop("overrides"), address="http://10.0.0.5:8265",
                          root=REPO, **args)  # fmt: skip
    assert len(sent) == 2 and sent[1]["metadata"]["pbp_resume"] == "next"
    # `pbp jobs stop` on a campaign's job says how to continue it (the job's own log says so under Ray's teardown).
    from types import SimpleNamespace

    from pbp.cli.main import main

    class Running(Cluster):
        def stop_job(self, sid):
            return True

        def get_job_info(self, sid):
            return SimpleNamespace(metadata={"pbp_job": "tune", "pbp_resume": "next"})

    monkeypatch.setattr(submit, "client", lambda *a, **k: Running())
    out: list[str] = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: out.append(" ".join(map(str, a))))
    assert main(["jobs", "stop", "pbp-tune-next-x"]) == 0
    assert out == ["pbp-tune-next-x on http://10.0.0.5:8265: stop requested",
                   "campaign next: `pbp submit tune --resume next` continues it from storage"]  # fmt: skip
    monkeypatch.undo()
    # The job runs `pbp tune`: its stop message names the job's command.
    from pbp.tune.config import TuneConfig as Tc
    from pbp.tune.progress import interrupted_message

    cfg = load_config(Tc, REPO / "configs/tune/tiny.yaml", ["name=c1"])
    monkeypatch.setenv("PBP_SUBMISSION_ID", "pbp-tune-x")
    assert "`pbp submit tune --resume c1` continues it" in interrupted_message(cfg)
    monkeypatch.delenv("PBP_SUBMISSION_ID")
    assert "`pbp tune --resume c1` continues it" in interrupted_message(cfg)


def test_a_runs_commit_says_when_the_code_had_uncommitted_changes(tmp_path):
    """`pbp.git_commit` named HEAD even when the run's code was edited since: lineage pointed at code it did not run."""
    import subprocess

    from pbp.provenance import DIRTY, code_commit

    assert code_commit(tmp_path) == "unknown"  # not a checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "notes.txt").write_text("untracked files do not count")
    assert code_commit(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_commit(tmp_path) == head + DIRTY


def test_ctrl_c_while_following_a_job_is_a_detach_not_an_error(monkeypatch, capsys):
    """A chaos run: Ctrl-C on `pbp submit ... --wait` said 'pbp: error: stopped following ...' and exited 2."""
    from pbp.cli.main import main

    def interrupted(sid, fn):
        raise KeyboardInterrupt

    monkeypatch.setattr(submit, "client", lambda *a, **k: object())
    monkeypatch.setattr(submit, "job_call", interrupted)
    assert main(["jobs", "logs", "pbp-finetune-x-0123456789", "--follow"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("pbp: interrupted: stopped following pbp-finetune-x-0123456789; it keeps running"), err
    assert "error" not in err

"""Submission and endpoint resolution without a cluster (the stack tests cover the real thing)."""

import json

import pytest

from pbp import submit
from pbp.stack.endpoints import resolve
from pbp.stack.state import Secrets, ServiceRecord, StackState

from .conftest import REPO


def test_submission_ids_are_stable_and_depend_on_config_and_overrides(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("a: 1\n")
    a = submit.submission_id("pretrain", cfg, ["x=1"])
    assert a == submit.submission_id("pretrain", cfg, ["x=1"])
    assert a.startswith("pbp-pretrain-tiny-")
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


def test_project_root_is_found_from_a_subdirectory():
    assert submit.project_root(REPO / "platform" / "pbp" / "model") == REPO


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


def test_cloud_environment_without_a_stack(tmp_path):
    ep = resolve(tmp_path / "none", env={"AWS_REGION": "eu-west-1"})
    assert ep.s3_endpoint is None and ep.s3_access_key is None  # AWS' default credential chain
    assert ep.s3_region == "eu-west-1" and ep.state_dir is None
    assert "endpoint_url" not in ep.s3fs_options()


def test_excludes_never_drop_library_code():
    """Ray applies the excludes to the pbp py_module too (with the module as root): no library file may match."""
    import pathspec

    spec = pathspec.PathSpec.from_lines("gitwildmatch", submit.EXCLUDES)
    lib = REPO / "platform" / "pbp"
    dropped = [
        p for p in lib.rglob("*.py") if "__pycache__" not in p.parts and spec.match_file(str(p.relative_to(lib)))
    ]
    assert not dropped
    assert spec.match_file(".venv/bin/python") and spec.match_file("build/parity/checkpoint.pkl")

"""Model copies fetched for a command (from MLflow or S3) do not outlive their use: a one-shot load removes its copy
when done, any other copy goes at the process' exit; MLflow's per-file progress bar is off unless the user set it."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from pbp.data.storage import Store
from pbp.train.artifacts import _no_progress_bar, model_files

from ..conftest import pbp_env


def _model_in_s3(endpoints) -> str:
    url = f"s3://{endpoints.buckets['runs']}/tests/artifacts-{random.randrange(10**9)}/final_model"
    store = Store(url, endpoints)
    store.put_bytes("config.json", b"{}")
    store.put_bytes("model.safetensors", b"weights")
    return url


def test_a_one_shot_load_removes_its_copy_and_any_other_copy_goes_at_exit(stack_dir, endpoints):
    url = _model_in_s3(endpoints)
    env = pbp_env(stack_dir)
    code = (f"from pbp.train.artifacts import local_dir, model_files\n"
            f"with model_files({url!r}) as d:\n    assert (d / 'model.safetensors').read_bytes() == b'weights'\n"
            f"assert not d.exists(), d\n"
            f"kept = local_dir({url!r}); assert (kept / 'config.json').is_file(); print(kept)")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    kept = Path(res.stdout.strip().splitlines()[-1])
    assert kept.name.startswith("pbp-model-") and not kept.exists()  # removed when the process exited


def test_a_local_model_directory_is_used_in_place_and_never_removed(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with model_files(str(tmp_path)) as d:
        assert d == tmp_path
    assert (tmp_path / "config.json").is_file()


def test_the_progress_bar_is_off_during_a_download_unless_the_user_set_it(monkeypatch):
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    monkeypatch.delenv(key, raising=False)
    with _no_progress_bar():
        assert os.environ[key] == "false"
    assert key not in os.environ  # the process' environment is as it was
    monkeypatch.setenv(key, "true")
    with _no_progress_bar():
        assert os.environ[key] == "true"


def test_a_location_that_leads_to_no_model_is_named_with_what_mlflow_or_s3_said(endpoints, monkeypatch):
    """Before: a 60-line traceback ending in MLflow's RestException (or a bare 'pbp-runs/nope' from s3fs)."""
    import pytest

    from pbp.train.artifacts import ModelLocationError, local_dir

    for k, v in {**endpoints.mlflow_env(), "PBP_STACK_DIR": str(endpoints.state_dir)}.items():
        monkeypatch.setenv(k, v)
    cases = {
        "models:/no-such-model@champion": "Registered Model with name=no-such-model not found",
        "runs:/0123456789abcdef0123456789abcdef/model": "Run with id=0123456789abcdef0123456789abcdef not found",
        f"s3://{endpoints.buckets['runs']}/no/such/prefix/": "nothing there",
    }
    for location, said in cases.items():
        with pytest.raises(ModelLocationError, match=rf"--model={location!r}: .*{said}"):
            local_dir(location, "--model")

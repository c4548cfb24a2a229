"""Model copies fetched for a command (from MLflow or S3) do not outlive the process, and MLflow's per-file progress
bar is off unless the user turned it on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pbp.train.artifacts import _no_progress_bar


def test_a_model_copy_is_removed_when_the_process_exits(tmp_path):
    code = ("from pbp.train.artifacts import _scratch; d = _scratch(); (d / 'model.safetensors').write_bytes(b'x'); "
            "print(d); assert d.is_dir()")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    copy = Path(res.stdout.strip())
    assert copy.name.startswith("pbp-model-") and not copy.exists()


def test_the_progress_bar_is_off_during_a_download_unless_the_user_set_it(monkeypatch):
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    monkeypatch.delenv(key, raising=False)
    with _no_progress_bar():
        assert os.environ[key] == "false"
    assert key not in os.environ  # the process' environment is as it was
    monkeypatch.setenv(key, "true")
    with _no_progress_bar():
        assert os.environ[key] == "true"

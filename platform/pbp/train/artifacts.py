"""Model locations, one resolver for every command: a local directory, an ``s3://`` directory, or an MLflow
artifact URI (``runs:/ID/model``, ``models:/NAME@alias``) -> a local directory holding its files. A copy (from
MLflow or S3) lives in a temporary directory that is removed when the process exits: a script or a serving process
that loads models in a loop does not fill the disk with copies."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def local_dir(location: str, what: str = "model") -> Path:
    if location.startswith(MLFLOW_SCHEMES):
        import mlflow

        from pbp.train.tracking import configure_mlflow

        configure_mlflow()
        with _no_progress_bar():
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(_scratch())))
    if location.startswith("s3://"):
        from pbp.data.storage import Store

        store = Store(location)
        tmp = _scratch()
        for name in store.fs.ls(location.rstrip("/")[len("s3://") :]):
            base = name.rsplit("/", 1)[-1]
            if base.endswith((".json", ".safetensors")):
                (tmp / base).write_bytes(store.get_bytes(base))
        if not any(tmp.iterdir()):
            raise FileNotFoundError(f"{what}={location!r}: no model files (.json, .safetensors) there")
        return tmp
    p = Path(location).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what}={location!r}: no such directory (expected a pbp model directory, an s3:// "
                                "directory or an MLflow URI such as runs:/ID/model)")  # fmt: skip
    return p


def _scratch() -> Path:
    """A temporary directory for a model's copy, removed at the process' exit."""
    tmp = Path(tempfile.mkdtemp(prefix="pbp-model-"))
    atexit.register(shutil.rmtree, tmp, True)
    return tmp


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """No MLflow progress bar per file of a model (a few small files; in a worker's log, a line each), unless the
    user asked for it (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` set)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)

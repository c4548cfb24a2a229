"""Model locations, one resolver for every command: a local directory, an ``s3://`` directory, or an MLflow
artifact URI (``runs:/ID/model``, ``models:/NAME@alias``) -> a local directory holding its files."""

from __future__ import annotations

import tempfile
from pathlib import Path

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def local_dir(location: str, what: str = "model") -> Path:
    if location.startswith(MLFLOW_SCHEMES):
        import mlflow

        from pbp.train.tracking import configure_mlflow

        configure_mlflow()
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tempfile.mkdtemp()))
    if location.startswith("s3://"):
        from pbp.data.storage import Store

        store = Store(location)
        tmp = Path(tempfile.mkdtemp(prefix="pbp-model-"))
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

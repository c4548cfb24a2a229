"""Model locations, one resolver for every command: a local directory, an ``s3://`` directory, or an MLflow
artifact URI (``runs:/ID/model``, ``models:/NAME@alias``) -> a local directory holding its files. A copy (from
MLflow or S3) lives in a temporary directory that is removed when the process exits: a script or a serving process
that loads models in a loop does not fill the disk with copies."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pbp.errors import UserError

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


class ModelLocationError(UserError, FileNotFoundError):
    """A model location that does not lead to a model; the message names it and what MLflow or S3 said."""


def pinned(location: str, what: str = "model") -> str:
    """``models:/NAME@alias`` -> ``models:/NAME/VERSION``, the version the alias points at now (an alias moves: a run
    and its workers must load one version, and lineage must say which); any other location as it is."""
    if not location.startswith("models:/") or "@" not in location:
        return location
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pbp.train.tracking import configure_mlflow, unanswered

    name, _, alias = location[len("models:/") :].partition("@")
    try:
        version = MlflowClient(configure_mlflow()).get_model_version_by_alias(name, alias).version
    except MlflowException as e:  # no such model or alias; no permission: MLflow's words
        raise ModelLocationError(f"{what}={location!r}: {unanswered(e) or e.message}") from None
    return f"models:/{name}/{version}"


def local_dir(location: str, what: str = "model") -> Path:
    """The model's files in a local directory, for the rest of the process (a copy is removed at exit)."""
    d, scratch = _fetch(location, what)
    if scratch is not None:
        atexit.register(shutil.rmtree, scratch, True)
    return d


@contextlib.contextmanager
def model_files(location: str, what: str = "model") -> Iterator[Path]:
    """:func:`local_dir` for a load that is done when the block ends: a copy is removed then, not at exit (a Ray
    Train worker is killed at the end of its run, and runs no exit handler)."""
    d, scratch = _fetch(location, what)
    try:
        yield d
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _fetch(location: str, what: str) -> tuple[Path, Path | None]:
    """-> (the model's directory, the temporary directory holding it when it is a copy)."""
    if location.startswith(MLFLOW_SCHEMES):
        import mlflow
        from mlflow.exceptions import MlflowException

        from pbp.train.tracking import configure_mlflow

        configure_mlflow()
        scratch = _scratch()
        with _no_progress_bar(), _removed_on_error(scratch):
            try:
                return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(scratch))), scratch
            except MlflowException as e:  # no such model, version, alias or run; no permission: MLflow's words
                from pbp.train.tracking import unanswered

                raise ModelLocationError(f"{what}={location!r}: {unanswered(e) or e.message}") from None
    if location.startswith("s3://"):
        from pbp.data.storage import Store

        store = Store(location)
        scratch = _scratch()
        with _removed_on_error(scratch):
            try:
                names = store.fs.ls(location.rstrip("/")[len("s3://") :])
            except FileNotFoundError:
                raise ModelLocationError(f"{what}={location!r}: nothing there (no such bucket or prefix)") from None
            for name in names:
                base = name.rsplit("/", 1)[-1]
                if base.endswith((".json", ".safetensors")):
                    (scratch / base).write_bytes(store.get_bytes(base))
            if not any(scratch.iterdir()):
                raise ModelLocationError(f"{what}={location!r}: no model files (.json, .safetensors) there")
        return scratch, scratch
    p = Path(location).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what}={location!r}: no such directory (expected a pbp model directory, an s3:// "
                                "directory or an MLflow URI such as runs:/ID/model)")  # fmt: skip
    return p, None


def _scratch() -> Path:
    from pbp.scratch import make

    return make("model")


@contextlib.contextmanager
def _removed_on_error(scratch: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


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

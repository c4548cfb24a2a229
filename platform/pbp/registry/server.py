"""The registry's MLflow client and its errors: the server's refusals turned into messages that name the model, the
version and, for a permission, the permission that is missing."""

from __future__ import annotations

import getpass
import os
import re
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from pbp.errors import UserError
from pbp.names import check_name

T = TypeVar("T")
CHAMPION, PREVIOUS = "champion", "previous-champion"
LOCK_SUFFIX = ".pbp-lock"
_VERSION = re.compile(r"[1-9][0-9]{0,9}")


class RegistryError(UserError):
    """A registry request refused or impossible; the message names the model, version or permission."""


def check_model_name(name: str) -> str:
    """Registered model names reach URIs (``models:/NAME@alias``) and filters: pbp's safe name rules apply; names
    ending in the lock suffix are pbp's own (``pbp.registry.lock``)."""
    check_name(name, "model name")
    if name.endswith(LOCK_SUFFIX):
        raise RegistryError(f"model name {name!r}: names ending in {LOCK_SUFFIX!r} are reserved for pbp's locks")
    return name


def check_version(version: str | int) -> str:
    v = str(version).strip()
    if not _VERSION.fullmatch(v):
        raise RegistryError(f"model version {version!r}: expected a positive integer such as 3")
    return v


def client() -> Any:
    from mlflow.tracking import MlflowClient

    from pbp.train.tracking import configure_mlflow

    return MlflowClient(configure_mlflow())


def who() -> dict[str, str]:
    """The MLflow user the server authenticated (the credentials this process sends), and where it ran."""
    return {"user": os.environ.get("MLFLOW_TRACKING_USERNAME") or "(no MLflow user)",
            "os_user": getpass.getuser(), "host": socket.gethostname()}  # fmt: skip


def error_code(e: BaseException) -> str:
    return str(getattr(e, "error_code", "") or "")


def call(what: str, fn: Callable[[], T], *, permission: str = "") -> T:
    """Run one server request; a refusal becomes a RegistryError saying ``what`` was refused and why."""
    from mlflow.exceptions import MlflowException

    from pbp.train.tracking import unanswered

    try:
        return fn()
    except MlflowException as e:
        if (down := unanswered(e)) is not None:
            raise RegistryError(f"{what}: {down}") from None
        code = error_code(e)
        if code == "PERMISSION_DENIED":  # the basic-auth plugin also answers 403 for some things that do not exist
            need = f" (needs the {permission} permission)" if permission else ""
            raise RegistryError(f"{what}: refused by the MLflow server: user {who()['user']!r} lacks permission"
                                f"{need}, or it does not exist; an admin grants permissions (docs/registry.md, "
                                "'Who can promote')") from None  # fmt: skip
        if code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"{what}: not found ({e.message})") from None
        raise


def experiment_id(client: Any, name: str) -> str:
    """The experiment ``name``, created if missing (a racing creator is fine)."""
    from mlflow.exceptions import MlflowException

    exp = call(f"experiment {name}", lambda: client.get_experiment_by_name(name))
    if exp is not None:
        return exp.experiment_id
    try:
        return call(f"creating the experiment {name}", lambda: client.create_experiment(name),
                    permission="create experiments")  # fmt: skip
    except MlflowException as e:
        if error_code(e) != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id

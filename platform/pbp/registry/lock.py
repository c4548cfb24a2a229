"""One decision at a time per registered model, across processes and machines, held on the MLflow server itself.

MLflow has no compare-and-set for aliases. Registered model names are unique on the server, so creating the
registered model ``<name>.pbp-lock`` is an atomic test-and-set: whoever creates it holds the lock, and deletes it
when done. The lock carries its holder and an expiry (``lease_s``): a lock left by a crashed process is broken once
it has expired. Two processes breaking the same stale lock at the same moment is the one race this does not close
(it needs a crash first, then two promotions within the same second); the audit chain would still show both.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pbp.registry.server import RegistryError, call, error_code, who

SUFFIX = ".pbp-lock"
HOLDER_TAG = "pbp.lock.holder"
EXPIRES_TAG = "pbp.lock.expires"


@contextmanager
def model_lock(client: Any, model: str, *, wait_s: float = 120.0, lease_s: float = 300.0) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    lock, holder = model + SUFFIX, json.dumps(who())
    deadline = time.monotonic() + wait_s
    while True:
        tags = {HOLDER_TAG: holder, EXPIRES_TAG: f"{time.time() + lease_s:.3f}"}
        try:
            call(f"model {model}: taking its promotion lock", lambda tags=tags: client.create_registered_model(
                lock, tags=tags, description=f"pbp promotion lock of {model}: deleted when the decision is made"),
                permission="create registered models")  # fmt: skip
            break
        except MlflowException as e:
            if error_code(e) != "RESOURCE_ALREADY_EXISTS":
                raise
        held = _holder(client, lock)
        if held is not None and float(held.get(EXPIRES_TAG, 0) or 0) < time.time():
            _delete(client, lock)  # stale: its holder died without releasing it
            continue
        if time.monotonic() > deadline:
            raise RegistryError(f"model {model}: another promotion has held its lock for over {wait_s:.0f} s "
                                f"({(held or {}).get(HOLDER_TAG, 'holder unknown')}); try again later, or delete "
                                f"the registered model {lock!r} if its holder is gone")  # fmt: skip
        time.sleep(0.2 + random.random() * 0.3)
    try:
        yield
    finally:
        _delete(client, lock)


def _holder(client: Any, lock: str) -> dict[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(lock).tags)
    except MlflowException:
        return None


def _delete(client: Any, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lock)
    except MlflowException as e:
        if error_code(e) != "RESOURCE_DOES_NOT_EXIST":
            raise

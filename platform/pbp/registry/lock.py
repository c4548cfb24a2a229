"""One decision at a time per registered model, across processes and machines, held on the MLflow server itself.

MLflow has no compare-and-set for aliases. Registered model names are unique on the server, so creating the
registered model ``<name>.pbp-lock`` is an atomic test-and-set: whoever creates it holds the lock. Its holder tag
carries a random token; the holder checks the lock is still its own before it moves an alias, and deletes it only
if it is. A lock older than ``lease_s`` by the server's own creation time (which no client can change) is stale and
may be broken by the next promotion, and so is, after 30 s, one whose holder ran on this machine (host, boot and pid
namespace) and is no longer running (its process id is in the holder tag); deleting another user's lock needs MANAGE
on it, so without that right pbp says whom to ask. Model names ending in ``.pbp-lock`` are refused
(``server.check_model_name``).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pbp.local_process import machine_key, pid_alive
from pbp.registry.server import LOCK_SUFFIX, RegistryError, call, error_code, who

HOLDER_TAG = "pbp.lock.holder"


class Lock:
    def __init__(self, client: Any, model: str) -> None:
        self.client, self.model, self.name = client, model, model + LOCK_SUFFIX
        self.token = uuid.uuid4().hex
        self.holder = json.dumps({**who(), "pid": os.getpid(), "machine": machine_key(), "token": self.token})

    def try_take(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            call(f"model {self.model}: taking its promotion lock", lambda: self.client.create_registered_model(
                self.name, tags={HOLDER_TAG: self.holder},
                description=f"pbp promotion lock of {self.model}: deleted when the decision is made"),
                permission="create registered models")  # fmt: skip
            return True
        except MlflowException as e:
            if error_code(e) != "RESOURCE_ALREADY_EXISTS":
                raise
            return False

    def held(self) -> Any | None:
        """The lock's registered model as the server has it now (None: no lock)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(self.name)
        except MlflowException as e:
            if error_code(e) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                return None
            raise

    def check(self) -> None:
        """Still ours? (A holder slower than the lease may have lost it: then it must not move anything.)"""
        rm = self.held()
        if rm is None or _token(rm) != self.token:
            raise RegistryError(f"model {self.model}: the promotion lock expired while deciding and another process "
                                "took it; nothing was changed, run the command again")  # fmt: skip

    def delete(self, what: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model(self.name)
        except MlflowException as e:
            if error_code(e) == "PERMISSION_DENIED":
                raise RegistryError(f"model {self.model}: the {what} lock {self.name!r} is not yours to delete; ask "
                                    "an MLflow admin to delete that registered model") from None  # fmt: skip
            if error_code(e) != "RESOURCE_DOES_NOT_EXIST":
                raise


def _holder_doc(rm: Any) -> dict[str, Any]:
    try:
        doc = json.loads(dict(rm.tags).get(HOLDER_TAG, "{}"))
    except (json.JSONDecodeError, AttributeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _token(rm: Any) -> str:
    return str(_holder_doc(rm).get("token", ""))


DEAD_HOLDER_S = 30.0
"""A lock whose holder's process is gone is broken once it is this old (a holder still taking it is younger)."""


def _holder_died(rm: Any, age: float) -> bool:
    """The lock (``age`` seconds old) is past ``DEAD_HOLDER_S``, its holder ran on this machine (host, boot and pid
    namespace: ``machine_key``) and its process is gone (killed mid-decision): its lock need not wait out the lease
    (the next decision waited up to 5 minutes)."""
    if age <= DEAD_HOLDER_S:
        return False
    doc = _holder_doc(rm)
    pid = doc.get("pid")
    return doc.get("machine") == machine_key() and isinstance(pid, int) and pid > 0 and not pid_alive(pid)


def _holder(rm: Any | None) -> str:
    """Who holds the lock, in words (never its token)."""
    if rm is None:
        return "released meanwhile"
    doc = _holder_doc(rm)
    if not doc:
        return "holder unknown"
    return f"MLflow user {doc.get('user', '?')} ({doc.get('os_user', '?')} on {doc.get('host', '?')})"


@contextmanager
def model_lock(client: Any, model: str, *, wait_s: float = 300.0, lease_s: float = 600.0) -> Iterator[Lock]:
    lock = Lock(client, model)
    deadline = time.monotonic() + wait_s
    said = False
    while not lock.try_take():
        rm = lock.held()
        age = time.time() - rm.creation_timestamp / 1000.0 if rm is not None else 0.0
        if rm is not None and HOLDER_TAG in dict(rm.tags) and (age > lease_s or _holder_died(rm, age)):
            again = lock.held()  # still that holder's (another waiter may have broken it and taken its own)
            if again is not None and _token(again) == _token(rm):
                lock.delete("stale")  # its holder died without releasing it
            continue
        if time.monotonic() > deadline:
            raise RegistryError(f"model {model}: waited {wait_s:.0f} s for its promotion lock, held by {_holder(rm)}; "
                                f"try again later (a lock older than {lease_s:.0f} s is broken automatically)")  # fmt: skip
        if not said and rm is not None:  # a silent wait of minutes looked like a hang
            said = True
            print(f"model {model}: waiting for its promotion lock, held by {_holder(rm)} for {age:.0f} s (another "
                  f"decision in progress, or one that died: its lock is broken after {lease_s:.0f} s); giving up "
                  f"after {wait_s:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(0.2 + random.random() * 0.3)
    try:
        yield lock
    finally:
        rm = lock.held()
        if rm is not None and _token(rm) == lock.token:
            lock.delete("own")

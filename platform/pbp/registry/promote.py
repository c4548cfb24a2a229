"""``pbp registry promote`` and ``rollback``: move ``@champion`` on evidence, one decision at a time, every
decision in the audit trail.

Promote (under the model's lock): the trail must verify; the candidate goes through the gate (``pbp.registry.gate``)
against the current ``@champion``; on success ``@champion`` moves to it and ``@previous-champion`` to the old one.
A refusal by the gate is a decision too and is recorded. ``--force --reason`` skips the gate (and a broken trail),
and says so in the record.
Rollback: ``@champion`` goes back to the champion before it (the trail says which; else ``@previous-champion``),
``@previous-champion`` to the one before that (or is removed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pbp.registry import audit, gate
from pbp.registry.lock import model_lock
from pbp.registry.server import CHAMPION, PREVIOUS, RegistryError, call, check_model_name, check_version, client

ALIAS_PERMISSION = "EDIT (or MANAGE) on the registered model"


@dataclass
class Outcome:
    promoted: bool
    record: dict[str, Any]
    message: str


def _alias(c: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower():
            return None
        raise


def _move(c: Any, name: str, alias: str, version: str | None) -> None:
    what = f"model {name}: moving @{alias}"
    if version is None:
        if _alias(c, name, alias) is not None:
            call(what, lambda: c.delete_registered_model_alias(name, alias), permission=ALIAS_PERMISSION)
        return
    call(what, lambda: c.set_registered_model_alias(name, alias, version), permission=ALIAS_PERMISSION)


def promote(name: str, version: str | int, *, tolerance: float = 0.0, force: bool = False, reason: str = "",
            wait_s: float = 120.0) -> Outcome:  # fmt: skip
    name, version = check_model_name(name), check_version(version)
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise RegistryError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    if force and not reason.strip():
        raise RegistryError("--force needs --reason TEXT: a forced promotion is recorded with why it was forced")
    c = client()
    call(f"model {name}", lambda: c.get_registered_model(name))
    with model_lock(c, name, wait_s=wait_s):
        trail = audit.read(c, name)
        if not force:
            audit.require_intact(trail)
        cand = call(f"model {name} version {version}", lambda: c.get_model_version(name, version))
        champ = _alias(c, name, CHAMPION)
        if champ is not None and str(champ.version) == version:
            raise RegistryError(f"model {name}: version {version} is already @{CHAMPION}; nothing to do")
        verdict = gate.decide(name, cand, champ, tolerance)
        promoted = verdict.ok or force
        old = str(champ.version) if champ is not None else None
        if promoted:
            _move(c, name, CHAMPION, version)
            if old is not None:
                _move(c, name, PREVIOUS, old)
        why = verdict.why if verdict.ok or not force else f"forced past the gate ({verdict.why})"
        record = audit.append(c, name, {
            "action": "promote", "decision": "promoted" if promoted else "refused", "version": version,
            "champion_before": old, "champion_after": version if promoted else old, "metric": verdict.metric,
            "candidate_value": verdict.candidate_value, "champion_value": verdict.champion_value,
            "candidate_score": verdict.candidate_source, "tolerance": tolerance,
            "split": verdict.split.to_json() if verdict.split else None, "forced": force,
            "gate": verdict.why, "reason": reason or why,
        })  # fmt: skip
    verb = f"promoted to @{CHAMPION}" if promoted else "refused"
    return Outcome(promoted, record, f"model {name} version {version} {verb}: {why} (audit record {record['seq']})")


def rollback(name: str, *, reason: str = "", wait_s: float = 120.0) -> Outcome:
    name = check_model_name(name)
    c = client()
    call(f"model {name}", lambda: c.get_registered_model(name))
    with model_lock(c, name, wait_s=wait_s):
        trail = audit.read(c, name)
        audit.require_intact(trail)
        champ = _alias(c, name, CHAMPION)
        if champ is None:
            raise RegistryError(f"model {name}: no @{CHAMPION} to roll back")
        current = str(champ.version)
        prev = _alias(c, name, PREVIOUS)
        target = trail.champion_before(current) or (str(prev.version) if prev is not None else None)
        if target is None or target == current:
            raise RegistryError(f"model {name}: no earlier champion than version {current} is recorded")
        _move(c, name, CHAMPION, target)
        _move(c, name, PREVIOUS, trail.champion_before(target))
        record = audit.append(c, name, {
            "action": "rollback", "decision": "rolled_back", "version": target, "champion_before": current,
            "champion_after": target, "forced": False, "reason": reason or f"rollback of version {current}",
        })  # fmt: skip
    msg = f"model {name}: @{CHAMPION} rolled back from version {current} to {target} (audit record {record['seq']})"
    return Outcome(True, record, msg)

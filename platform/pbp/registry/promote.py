"""``pbp registry promote`` and ``rollback``: move ``@champion`` on evidence, one decision at a time, every
decision in the audit trail.

Promote (under the model's lock): the trail must verify; the candidate goes through the gate (``pbp.registry.gate``)
against the current ``@champion``; on success ``@champion`` moves to it and ``@previous-champion`` to the old one.
A refusal by the gate is a decision too and is recorded. ``--force --reason`` skips the gate (a gate that cannot even
run, and a broken trail, included) and says so in the record.
Rollback: ``@champion`` goes back to the champion before it on the trail's champion stack (a promotion pushes, a
rollback pops), ``@previous-champion`` to the version rolled back (the champion immediately before the current one,
as after a promotion).
Order, so that nothing moves unrecorded: the record is built and size-checked, its run created (a user who may not
write the trail is refused here), the lock checked to be still ours, then the aliases move and the record is logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pbp import telemetry
from pbp.registry import audit, gate
from pbp.registry.lock import Lock, model_lock
from pbp.registry.server import CHAMPION, PREVIOUS, RegistryError, call, check_model_name, check_version, client

ALIAS_PERMISSION = "EDIT (or MANAGE) on the registered model"
MAX_TOLERANCE = 1.0  # the gated metrics (Spearman, ROC-AUC, accuracy) span at most 2


@dataclass
class Outcome:
    promoted: bool
    record: dict[str, Any]
    message: str


def aliases(c: Any, name: str) -> dict[str, str]:
    rm = call(f"model {name}", lambda: c.get_registered_model(name))
    return {str(k): str(v) for k, v in dict(rm.aliases or {}).items()}


def _record(c: Any, lock: Lock, trail: audit.Trail, decision: dict[str, Any], moves: dict[str, str]) -> dict:
    name = trail.model
    rec = audit.build(trail, decision)
    run_id = audit.open_run(c, name)
    lock.check()
    for alias, version in moves.items():

        def move(a: str = alias, v: str = version) -> None:
            c.set_registered_model_alias(name, a, v)

        call(f"model {name}: moving @{alias}", move, permission=ALIAS_PERMISSION)
    return audit.commit(c, name, run_id, rec)


def promote(name: str, version: str | int, *, tolerance: float = 0.0, force: bool = False, reason: str = "",
            wait_s: float = 300.0) -> Outcome:  # fmt: skip
    name, version = check_model_name(name), check_version(version)
    if not (math.isfinite(tolerance) and 0 <= tolerance <= MAX_TOLERANCE):
        raise RegistryError(f"--tolerance must be a number in [0, {MAX_TOLERANCE}], got {tolerance}")
    if force and not reason.strip():
        raise RegistryError("--force needs --reason TEXT: a forced promotion is recorded with why it was forced")
    c = client()
    aliases(c, name)  # an unknown model: refused before the lock
    with model_lock(c, name, wait_s=wait_s) as lock:
        trail = audit.read(c, name)
        if not force:
            audit.require_intact(trail)
        cand = call(f"model {name} version {version}", lambda: c.get_model_version(name, version))
        old = aliases(c, name).get(CHAMPION)
        if old == version:
            stack = trail.champions()
            if not force or (stack[-1] if stack else None) == version:
                raise RegistryError(f"model {name}: version {version} is already @{CHAMPION}; nothing to do")
            # --force on a version the alias names but the trail does not (a decision interrupted after its alias
            # moved, or a move outside pbp): decided and recorded as from the trail's champion, so the trail holds it
            old = stack[-1] if stack else None
        champ = c.get_model_version(name, old) if old else None
        try:
            verdict = gate.decide(name, cand, champ, tolerance)
        except RegistryError as e:  # the gate could not run (changed test file, missing file...)
            if not force:
                raise
            verdict = gate.Verdict(False, f"the gate could not run: {e}")
        promoted = verdict.ok or force
        why = _why(verdict, force)
        moves = {CHAMPION: version, **({PREVIOUS: old} if old else {})} if promoted else {}
        record = _record(c, lock, trail, {
            "action": "promote", "decision": "promoted" if promoted else "refused", "version": version,
            "champion_before": old, "champion_after": version if promoted else old, "metric": verdict.metric,
            "candidate_value": verdict.candidate_value, "champion_value": verdict.champion_value,
            "candidate_score": verdict.candidate_source, "tolerance": tolerance,
            "split": verdict.split.to_json() if verdict.split else None, "forced": force,
            "gate": verdict.why, "reason": reason or why,
        }, moves)  # fmt: skip
    verb = f"promoted to @{CHAMPION}" if promoted else "refused"
    telemetry.registry_event(name, "promoted" if promoted else "refused")
    return Outcome(promoted, record, f"model {name} version {version} {verb}: {why} (audit record {record['seq']})")


def _why(verdict: gate.Verdict, force: bool) -> str:
    """The outcome's reason: the gate's; a forced promotion says so; a refusal carries the gate's advice."""
    if verdict.ok:
        return verdict.why
    if force:
        return f"forced past the gate ({verdict.why})"
    return f"{verdict.why} ({verdict.advice})" if verdict.advice else verdict.why


def rollback(name: str, *, reason: str = "", force: bool = False, wait_s: float = 300.0) -> Outcome:
    name = check_model_name(name)
    if force and not reason.strip():
        raise RegistryError("--force needs --reason TEXT")
    c = client()
    aliases(c, name)
    with model_lock(c, name, wait_s=wait_s) as lock:
        trail = audit.read(c, name)
        if not force:
            audit.require_intact(trail)
        current = aliases(c, name).get(CHAMPION)
        if current is None:
            raise RegistryError(f"model {name}: no @{CHAMPION} to roll back")
        stack = trail.champions()
        if not stack or stack[-1] != current:
            raise RegistryError(f"model {name}: @{CHAMPION} is version {current} but the audit trail says "
                                f"{stack[-1] if stack else 'nobody'}: it was moved outside pbp; promote explicitly")  # fmt: skip
        if len(stack) < 2:
            raise RegistryError(f"model {name}: no earlier champion than version {current} is recorded")
        target = stack[-2]
        record = _record(c, lock, trail, {
            "action": "rollback", "decision": "rolled_back", "version": target, "champion_before": current,
            "champion_after": target, "forced": force, "reason": reason or f"rollback of version {current}",
        }, {CHAMPION: target, PREVIOUS: current})  # fmt: skip
    msg = f"model {name}: @{CHAMPION} rolled back from version {current} to {target} (audit record {record['seq']})"
    telemetry.registry_event(name, "rolled_back")
    return Outcome(True, record, msg)

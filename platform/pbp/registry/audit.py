"""The registry's audit trail: every promotion decision and rollback, append-only, hash-chained, kept in MLflow.

MLflow keeps no alias history. pbp writes each decision as one run of the experiment ``pbp-registry-audit``:
  tags    ``pbp.audit.model_key`` (sha256 of the model name: no user text in a search filter), ``pbp.audit.seq``
  params  ``record`` (the decision as canonical JSON) and ``sha256`` (of that JSON)
MLflow params cannot be changed once logged, so a record cannot be edited in place. Each record holds the sha256 of
the one before it (``prev_sha256``), and the registered model's tag ``pbp.audit.head`` names the last record
(``seq:sha256``): a record removed (a deleted or retagged run), altered or forged into the middle, or records cut off
the end, break the chain, which ``read`` reports (``Trail.problems``) rather than hides. Records are appended under
the model's promotion lock (``pbp.registry.lock``), so their sequence numbers are contiguous and say who was
champion when. A decision's run is created before any alias moves (so a user who may not write the trail changes
nothing), and its record is logged, tags and params in one request, after the aliases moved. ``read`` also compares
the live @champion with the trail's last record: a decision interrupted between its alias move and its record (the
process or MLflow killed), or an alias moved outside pbp (any user with EDIT may), is a problem like a broken chain.

A record: seq, time (UTC ISO 8601), user (the MLflow user the server authenticated), os_user, host, action
(promote | rollback), decision (promoted | refused | rolled_back), version, champion_before, champion_after,
metric, candidate_value, champion_value, tolerance, split (path, sha256, max_rows), forced, reason, prev_sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pbp.names import name_key
from pbp.registry.server import CHAMPION as CHAMPION_ALIAS
from pbp.registry.server import LOCK_SUFFIX, RegistryError, call, experiment_id, who

EXPERIMENT = "pbp-registry-audit"
KEY_TAG, SEQ_TAG, HEAD_TAG = "pbp.audit.model_key", "pbp.audit.seq", "pbp.audit.head"
MAX_RECORD = 6000  # MLflow's limit on a param value
MAX_TEXT = 1000
COLUMNS = ("seq", "time", "user", "action", "decision", "version", "champion_before", "champion_after", "metric",
           "candidate_value", "champion_value", "reason")  # fmt: skip


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record).encode()).hexdigest()


@dataclass
class Trail:
    model: str
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Breaks of the chain: a missing, deleted, altered or out-of-order record. Empty: the trail verifies."""

    @property
    def head(self) -> str:
        return digest(self.records[-1]) if self.records else ""

    def champions(self) -> list[str]:
        """The champion stack the trail describes: a promotion pushes its version, a rollback pops one. Its last
        entry is the current champion; the one before it is where a rollback goes."""
        stack: list[str] = []
        for r in self.records:
            if r.get("decision") == "promoted":
                stack.append(str(r.get("version")))
            elif r.get("decision") == "rolled_back" and stack:
                stack.pop()
        return stack

    def table(self) -> str:
        from pbp.console import aligned

        cells = [[_cell(r.get(c)) for c in COLUMNS] for r in self.records]
        lines = aligned(COLUMNS, cells)
        status = "chain verified" if not self.problems else "CHAIN BROKEN: " + "; ".join(self.problems)
        long = any(len(str(r.get(c))) > CELL_WIDTH for r in self.records for c in COLUMNS if r.get(c) is not None)
        cut = f"; cells over {CELL_WIDTH} characters are cut (...): --json has them whole" if long else ""
        lines.append(f"{len(self.records)} decision(s) for model {self.model}; {status}{cut}")
        return "\n".join(lines)


CELL_WIDTH = 40


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    s = str(v)
    return s if len(s) <= CELL_WIDTH else s[: CELL_WIDTH - 3] + "..."


def _experiment_id(client: Any, create: bool) -> str | None:
    if not create:
        exp = call(f"audit experiment {EXPERIMENT}", lambda: client.get_experiment_by_name(EXPERIMENT))
        return exp.experiment_id if exp is not None else None
    return experiment_id(client, EXPERIMENT)


def read(client: Any, model: str) -> Trail:
    """The model's decisions in order, with the chain checked (deleted runs are looked at too)."""
    from mlflow.entities import ViewType

    trail = Trail(model)
    exp = _experiment_id(client, create=False)
    runs, token = [], None
    while exp is not None:
        page = client.search_runs([exp], filter_string=f"tags.`{KEY_TAG}` = '{name_key(model)}'",
                                  run_view_type=ViewType.ALL, max_results=1000, page_token=token)  # fmt: skip
        runs.extend(page)
        token = page.token
        if not token:
            break
    found: list[dict[str, Any]] = []
    for run in runs:
        rec = _record_of(run, trail)
        if rec is not None:
            found.append(rec)
    found.sort(key=lambda r: r["seq"])
    prev, expected, seen = "", 1, set()
    for rec in found:
        if rec["seq"] in seen:
            trail.problems.append(f"record {rec['seq']} appears twice")
        else:
            if rec["seq"] != expected:
                trail.problems.append(f"record {expected} is missing (next found: {rec['seq']})")
            expected = rec["seq"] + 1
            seen.add(rec["seq"])
        if rec.get("prev_sha256") != prev:
            trail.problems.append(f"record {rec['seq']}: does not chain to the record before it")
        prev = digest(rec)
    trail.records = found
    rm = _registered_model(client, model)
    head = dict(rm.tags).get(HEAD_TAG) if rm is not None else None
    last = f"{found[-1]['seq']}:{digest(found[-1])}" if found else ""
    if head and head != last:
        trail.problems.append(f"the model's {HEAD_TAG} names record {head.split(':')[0]}, the trail ends at "
                              f"{last.split(':')[0] or 'nothing'}: records were removed or retagged at its end")  # fmt: skip
    live = str(dict(rm.aliases).get(CHAMPION_ALIAS) or "") if rm is not None else ""
    recorded = str(found[-1].get("champion_after") or "") if found else ""
    if live != recorded:
        trail.problems.append(
            f"@{CHAMPION_ALIAS} is {f'version {live}' if live else 'unset'} in the registry, but "
            + (f"the trail's last record ({found[-1]['seq']}) leaves {f'version {recorded}' if recorded else 'none'}"
               if found else "the trail holds no decision")
            + ": a change the trail does not record (a promotion or rollback interrupted after moving the alias, or "
            "the alias moved outside pbp); `pbp registry promote --force --reason TEXT` records a decision again"
            + (" (a decision is in progress now: its lock is held; read the trail again once it is made)"
               if _registered_model(client, model + LOCK_SUFFIX) is not None else "")
        )  # fmt: skip
    return trail


def _record_of(run: Any, trail: Trail) -> dict[str, Any] | None:
    raw, sha = run.data.params.get("record"), run.data.params.get("sha256")
    try:
        rec = json.loads(raw or "")
        if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int):
            raise ValueError("not a record")
    except ValueError:
        trail.problems.append(f"run {run.info.run_id}: holds no valid audit record")
        return None
    if digest(rec) != sha:
        trail.problems.append(f"record {rec['seq']}: its content does not match its sha256")
    if run.info.lifecycle_stage == "deleted":
        trail.problems.append(f"record {rec['seq']} (run {run.info.run_id}) was deleted")
    if rec.get("model") != trail.model:
        trail.problems.append(f"run {run.info.run_id}: a record of model {rec.get('model')!r} tagged as this model's")
        return None
    return rec


def _registered_model(client: Any, model: str) -> Any | None:
    """The registered model as the server has it now (its tags and aliases), None if it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model)
    except MlflowException:
        return None


def build(trail: Trail, decision: dict[str, Any]) -> dict[str, Any]:
    """The record that follows ``trail`` (call under the model's lock), checked to fit MLflow's param limit."""
    rec = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in decision.items()}
    for k in ("reason", "gate"):
        text = rec.get(k)
        if isinstance(text, str):
            rec[k] = text[:MAX_TEXT]
    rec.update(who())
    rec.update(model=trail.model, seq=max((r["seq"] for r in trail.records), default=0) + 1, prev_sha256=trail.head,
               time=datetime.now(UTC).isoformat(timespec="seconds"))  # fmt: skip
    if len(canonical(rec)) > MAX_RECORD:
        raise RegistryError(f"model {trail.model}: the audit record would be {len(canonical(rec))} characters, over "
                            f"MLflow's {MAX_RECORD}; shorten --reason")  # fmt: skip
    return rec


def open_run(client: Any, model: str) -> str:
    """The run that will hold the next record, created before anything changes: a user who may not write the
    trail is refused here, with nothing moved. Until ``commit`` tags it, it is not part of any trail."""
    exp = _experiment_id(client, create=True)
    run = call(f"model {model}: writing its audit record", lambda: client.create_run(exp, run_name=f"{model}-pending"),
               permission=f"EDIT on the experiment {EXPERIMENT}")  # fmt: skip
    return run.info.run_id


def commit(client: Any, model: str, run_id: str, rec: dict[str, Any]) -> dict[str, Any]:
    from mlflow.entities import Param, RunTag

    params = [Param("record", canonical(rec)), Param("sha256", digest(rec))]
    tags = [RunTag(KEY_TAG, name_key(model)), RunTag(SEQ_TAG, str(rec["seq"])),
            RunTag("mlflow.runName", f"{model}-{rec['seq']:06d}")]  # fmt: skip
    what = f"model {model}: writing audit record {rec['seq']}"
    call(what, lambda: client.log_batch(run_id, params=params, tags=tags), permission=f"EDIT on {EXPERIMENT}")
    client.set_terminated(run_id)
    call(what, lambda: client.set_registered_model_tag(model, HEAD_TAG, f"{rec['seq']}:{digest(rec)}"),
         permission="EDIT on the registered model")  # fmt: skip
    return rec


def require_intact(trail: Trail) -> None:
    if trail.problems:
        raise RegistryError(f"model {trail.model}: its audit trail does not verify ({'; '.join(trail.problems)}); "
                            "nothing was changed. Investigate with `pbp registry history` before promoting.")  # fmt: skip

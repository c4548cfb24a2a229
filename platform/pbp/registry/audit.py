"""The registry's audit trail: every promotion decision and rollback, append-only, hash-chained, kept in MLflow.

MLflow keeps no alias history. pbp writes each decision as one run of the experiment ``pbp-registry-audit``:
  tags    ``pbp.audit.model_key`` (sha256 of the model name: no user text in a search filter), ``pbp.audit.seq``
  params  ``record`` (the decision as canonical JSON) and ``sha256`` (of that JSON)
MLflow params cannot be changed once logged, so a record cannot be edited in place. Each record holds the sha256 of
the one before it (``prev_sha256``): a record removed (a deleted run) or forged into the middle breaks the chain,
which ``read`` reports (``Trail.problems``) rather than hides. Records are appended under the model's promotion lock
(``pbp.registry.lock``), so their sequence numbers are contiguous and say who was champion when.

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
from pbp.registry.server import RegistryError, call, experiment_id, who

EXPERIMENT = "pbp-registry-audit"
KEY_TAG, SEQ_TAG = "pbp.audit.model_key", "pbp.audit.seq"
MAX_REASON = 2000
COLUMNS = ("seq", "time", "user", "action", "decision", "version", "champion_before", "champion_after", "metric",
           "candidate_value", "champion_value", "reason")  # fmt: skip


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)


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

    def champion_before(self, version: str) -> str | None:
        """Who was champion before ``version`` last became champion (None: nobody, or the trail does not say)."""
        for r in reversed(self.records):
            if r.get("champion_after") == version and r.get("champion_before") != version:
                return r.get("champion_before")
        return None

    def table(self) -> str:
        rows = [[_cell(r.get(c)) for c in COLUMNS] for r in self.records]
        widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(COLUMNS)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
        status = "chain verified" if not self.problems else "CHAIN BROKEN: " + "; ".join(self.problems)
        lines.append(f"{len(self.records)} decision(s) for model {self.model}; {status}")
        return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    s = str(v)
    return s if len(s) <= 40 else s[:37] + "..."


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
    if exp is None:
        return trail
    runs, token = [], None
    while True:
        page = client.search_runs([exp], filter_string=f"tags.`{KEY_TAG}` = '{name_key(model)}'",
                                  run_view_type=ViewType.ALL, max_results=1000, page_token=token)  # fmt: skip
        runs.extend(page)
        token = page.token
        if not token:
            break
    found = []
    for run in runs:
        raw, sha = run.data.params.get("record"), run.data.params.get("sha256")
        try:
            rec = json.loads(raw or "")
        except json.JSONDecodeError:
            trail.problems.append(f"run {run.info.run_id}: record is not JSON")
            continue
        if digest(rec) != sha:
            trail.problems.append(f"record {rec.get('seq')}: its content does not match its sha256")
        if run.info.lifecycle_stage == "deleted":
            trail.problems.append(f"record {rec.get('seq')} (run {run.info.run_id}) was deleted")
        if rec.get("model") != model:
            continue
        found.append(rec)
    found.sort(key=lambda r: int(r.get("seq", 0)))
    prev = ""
    for i, rec in enumerate(found, 1):
        if rec.get("seq") != i:
            trail.problems.append(f"record {i} is missing (next found: {rec.get('seq')})")
        if rec.get("prev_sha256") != prev:
            trail.problems.append(f"record {rec.get('seq')}: does not chain to the record before it")
        prev = digest(rec)
    trail.records = found
    return trail


def append(client: Any, model: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Write one decision after the trail's last record (call it under the model's lock) -> the stored record."""
    trail = read(client, model)
    rec = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in decision.items()}
    rec.update(who())
    rec.update(model=model, seq=len(trail.records) + 1, prev_sha256=trail.head,
               time=datetime.now(UTC).isoformat(timespec="seconds"), reason=str(rec.get("reason") or "")[:MAX_REASON])  # fmt: skip
    exp = _experiment_id(client, create=True)
    what = f"writing the audit record of model {model}"
    run = call(what, lambda: client.create_run(exp, run_name=f"{model}-{rec['seq']:06d}",
                                               tags={KEY_TAG: name_key(model), SEQ_TAG: str(rec["seq"])}),
               permission="EDIT on the experiment pbp-registry-audit")  # fmt: skip
    from mlflow.entities import Param

    params = [Param("record", canonical(rec)), Param("sha256", digest(rec))]
    call(what, lambda: client.log_batch(run.info.run_id, params=params), permission="EDIT on pbp-registry-audit")
    client.set_terminated(run.info.run_id)
    return rec


def require_intact(trail: Trail) -> None:
    if trail.problems:
        raise RegistryError(f"model {trail.model}: its audit trail does not verify ({'; '.join(trail.problems)}); "
                            "nothing was changed. Investigate with `pbp registry history` before promoting.")  # fmt: skip

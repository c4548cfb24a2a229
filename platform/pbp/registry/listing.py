"""``pbp registry list``: what the registry holds, read from the versions' pbp tags, for choosing what to promote.

Without a name: one row per registered model (its versions, its @champion, its task). With a name: one row per
version, newest first: its aliases, what it was registered from (a campaign's best trial, a fine-tuning run, a
pretraining run), its headline test metric beside that metric's trivial baseline, and the test split the metric was
computed on: file, digest and row limit (the gate compares versions on the champion's split and re-scores a version
measured on another).
pbp's own lock models (``pbp.registry.lock``) are not listed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pbp.registry.lineage import SplitRef
from pbp.registry.server import CHAMPION, LOCK_SUFFIX, call, check_model_name, client


@dataclass
class VersionRow:
    version: str
    created: str
    aliases: list[str]
    kind: str
    origin: str
    metric: str
    value: float
    baseline: float
    split: str


def _created(ms: int | None) -> str:
    return datetime.fromtimestamp((ms or 0) / 1000, UTC).strftime("%Y-%m-%d %H:%M") if ms else "-"


def _origin(tags: dict[str, str]) -> str:
    if tags.get("pbp.campaign"):
        return f"campaign {tags['pbp.campaign']}"
    for key, what in (("pbp.finetune.run", "fine-tuning"), ("pbp.pretrain.run", "pretraining")):
        if tags.get(key):
            return f"{what} {tags[key]}"
    return tags.get("pbp.source", "-")


def version_rows(name: str) -> list[VersionRow]:
    """The versions of model ``name``, newest first."""
    from pbp.registry.gate import headline
    from pbp.train.metrics import BASELINE_SUFFIX

    name = check_model_name(name)  # checked: safe in the filter
    c = client()
    rm = call(f"model {name}", lambda: c.get_registered_model(name))
    by_version: dict[str, list[str]] = {}
    for alias, v in dict(rm.aliases or {}).items():
        by_version.setdefault(str(v), []).append(str(alias))
    rows = []
    for mv in call(f"model {name}", lambda: c.search_model_versions(f"name = '{name}'")):
        tags = dict(mv.tags)
        metric = headline(tags) if tags.get("pbp.kind") == "finetuned" and "pbp.task.kind" in tags else ""
        value = float(tags.get(f"pbp.metric.{metric}", "nan")) if metric else math.nan
        baseline = float(tags.get(f"pbp.metric.{metric}{BASELINE_SUFFIX}", "nan")) if metric else math.nan
        split = SplitRef.from_tags(tags)  # with its row limit: a metric on the first N rows is not one on the file
        rows.append(VersionRow(str(mv.version), _created(mv.creation_timestamp), sorted(by_version.get(str(mv.version), [])),
                               tags.get("pbp.kind", "-"), _origin(tags), metric, value, baseline,
                               split.describe() if split else "-"))  # fmt: skip
    return sorted(rows, key=lambda r: int(r.version), reverse=True)


def versions_table(name: str) -> str:
    from pbp.console import aligned

    rows = version_rows(name)
    if not rows:
        return f"model {name}: no versions (pbp registry register SOURCE --name {name})"
    cells = [[r.version, r.created, ", ".join(f"@{a}" for a in r.aliases) or "-", r.kind,
              f"{r.metric} {r.value:.4f}" if r.metric and math.isfinite(r.value) else (r.metric or "-"),
              f"{r.baseline:.4f}" if math.isfinite(r.baseline) else "-", r.origin, r.split] for r in rows]  # fmt: skip
    lines = aligned(["version", "created (UTC)", "aliases", "kind", "test metric", "baseline", "from", "test split"],
                    cells, right=(0, 5))  # fmt: skip
    champion = next((r.version for r in rows if CHAMPION in r.aliases), None)
    lines.append(
        f"{len(rows)} version(s) of {name}; @{CHAMPION}: "
        + (f"version {champion}" if champion else f"none yet (pbp registry promote {name} --version V)")
    )
    return "\n".join(lines)


@dataclass
class ModelRow:
    name: str
    latest: str
    champion: str
    updated: str
    task: str


def model_rows() -> list[ModelRow]:
    """Every registered model but pbp's locks, by name."""
    c = client()
    models = [m for m in call("the registered models", lambda: _all_models(c)) if not m.name.endswith(LOCK_SUFFIX)]
    rows = []
    for m in sorted(models, key=lambda m: m.name):
        latest = str(max((int(v.version) for v in m.latest_versions or []), default=0) or "")
        champion = str(dict(m.aliases or {}).get(CHAMPION, ""))
        rows.append(ModelRow(m.name, latest, champion, _created(m.last_updated_timestamp),
                             _task_of(c, m.name, champion or latest)))  # fmt: skip
    return rows


def models_table() -> str:
    from pbp.console import aligned

    rows = model_rows()
    if not rows:
        return "no registered models (pbp registry register SOURCE --name NAME)"
    cells = [[r.name, r.latest or "-", r.champion or "-", r.updated, r.task] for r in rows]
    lines = aligned(["model", "latest", f"@{CHAMPION}", "updated (UTC)", "task"], cells, right=(1, 2))
    lines.append(f"{len(rows)} model(s); `pbp registry list NAME` shows a model's versions")
    return "\n".join(lines)


def listing_json(name: str = "") -> dict[str, Any]:
    """``pbp registry list [NAME] --json``: the same rows for machines (a missing figure is null; times are UTC)."""
    from dataclasses import asdict

    def plain(row: Any) -> dict[str, Any]:
        return {k: None if _missing(v) else v for k, v in asdict(row).items()}

    if not name:
        return {"models": [plain(r) for r in model_rows()]}
    rows = version_rows(name)
    champion = next((r.version for r in rows if CHAMPION in r.aliases), None)
    return {"model": name, CHAMPION: champion, "versions": [plain(r) for r in rows]}


def _missing(value: Any) -> bool:
    """A cell the tables show as ``-`` (or leave empty, or NaN)."""
    return value in ("", "-") or (isinstance(value, float) and not math.isfinite(value))


def _all_models(c: Any) -> list[Any]:
    out, token = [], None
    while True:
        page = c.search_registered_models(max_results=200, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _task_of(c: Any, name: str, version: str) -> str:
    if not version:
        return "-"
    tags = dict(call(f"model {name} version {version}", lambda: c.get_model_version(name, version)).tags)
    if tags.get("pbp.kind") == "finetuned":
        return f"{tags.get('pbp.task.name') or '?'} ({tags.get('pbp.task.kind', '?')})"
    return tags.get("pbp.kind", "-")

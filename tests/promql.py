"""Queries against the stack's real Prometheus, for the stack and dashboard tests."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards" / "grafana"


def query_range(prom_url: str, expr: str, start: float, end: float | None = None, step: int = 5) -> list[dict]:
    """The series ``expr`` returns over [start, end] (as a Grafana panel asks for it)."""
    q = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{(end or time.time()):.3f}",
                                "step": str(step)})  # fmt: skip
    with urllib.request.urlopen(f"{prom_url}/api/v1/query_range?{q}", timeout=30) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def panels() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every panel target in dashboards/grafana/."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            out += [(path.name, panel["title"], t["expr"]) for t in panel["targets"]]
    return out


def panels_without_data(prom_url: str, start: float, wait_s: float = 60) -> list[str]:
    """Panels whose query returns no series since ``start``, after waiting up to ``wait_s`` for late scrapes."""
    deadline = time.time() + wait_s
    while True:
        empty = [f"{f} / {title}: {expr}" for f, title, expr in panels() if not query_range(prom_url, expr, start)]
        if not empty or time.time() > deadline:
            return empty
        time.sleep(5)

"""``pbp bench report DIR``: every benchmark's JSON in DIR (as ``make bench`` writes them) in one markdown table and
one JSON, each figure a ratio against the baseline the same benchmark measured in the same run, with the machine.

A figure is a numeric field whose name says it is a ratio (``ratio``, ``*_ratio``, ``*_over_*``,
``fraction_of_peak``, ``speedup``); the absolute numbers it was computed from stay in each benchmark's own JSON.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from pbp.hardware import describe

RATIO = re.compile(r"(^|_)(ratio|speedup)$|_over_|^fraction_of_peak$|_ratio_")


def figures(doc: Any, path: str = "") -> list[tuple[str, float]]:
    """(dotted path, value) of every ratio-named numeric leaf; list items are keyed by their index, or by a
    ``seq_len`` / ``dtype`` / ``config`` / ``model`` field when they have one."""
    out: list[tuple[str, float]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            p = f"{path}.{k}" if path else str(k)
            if isinstance(v, int | float) and not isinstance(v, bool) and RATIO.search(str(k)):
                out.append((p, float(v)))
            elif isinstance(v, dict | list):
                out += figures(v, p)
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            label = str(i)
            if isinstance(item, dict):
                named = [f"{k}={item[k]}" for k in ("dtype", "seq_len", "config", "model") if k in item]
                label = ",".join(named) or label
            out += figures(item, f"{path}[{label}]")
    return out


def build_report(bench_dir: Path) -> dict[str, Any]:
    files = sorted(p for p in bench_dir.glob("*.json") if p.name != "report.json")
    if not files:
        raise FileNotFoundError(f"{bench_dir}: no benchmark JSON here (run `make bench`, or a `pbp bench ... --json`)")
    benches: dict[str, Any] = {}
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not JSON ({e})") from None
        benches[f.stem] = [{"figure": k, "ratio": v} for k, v in figures(doc)]
    return {"machine": describe(), "benchmarks": benches}


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = ["# pbp benchmark report", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()), "",
             "Every figure is a ratio against a baseline measured in the same run (definitions: docs/benchmarks.md).",
             "", "| benchmark | figure | ratio |", "| --- | --- | --- |"]  # fmt: skip
    for bench, rows in report["benchmarks"].items():
        for r in rows:
            v = r["ratio"]
            lines.append(f"| {bench} | `{r['figure']}` | {'n/a' if not math.isfinite(v) else f'{v:.3g}'} |")
        if not rows:
            lines.append(f"| {bench} | (no ratio figure in its JSON) | |")
    return "\n".join(lines) + "\n"


def write_report(bench_dir: Path) -> tuple[Path, Path]:
    report = build_report(bench_dir)
    md, js = bench_dir / "report.md", bench_dir / "report.json"
    md.write_text(render(report))
    js.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    return md, js

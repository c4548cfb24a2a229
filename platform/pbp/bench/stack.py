"""``pbp bench stack``: how long the local stack takes to become healthy and to stop."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from pbp.stack import manager

TARGET_HEALTHY_S = 20.0


def bench_stack(workers: int = 2, rounds: int = 2, state_dir: Path | None = None) -> dict[str, object]:
    """Cold start (new state dir), then ``rounds`` of down + warm start (same state), timing each phase."""
    own = state_dir is None
    tmp = tempfile.TemporaryDirectory(prefix="pbp-bench-stack-") if own else None
    d = Path(tmp.name) if tmp else Path(state_dir)  # type: ignore[arg-type]
    rows: list[dict[str, object]] = []
    try:
        for i in range(rounds + 1):
            lines: list[str] = []
            t0 = time.perf_counter()
            manager.up(d, workers=workers, log=lines.append, timeout=180)
            up_s = time.perf_counter() - t0
            per_service = {
                m.group(1): float(m.group(2))
                for ln in lines
                if (m := re.match(r"\s*(\S+)\s+started \(pid \d+\) in ([\d.]+)s", ln))
            }
            t0 = time.perf_counter()
            manager.down(d, log=lambda _m: None)
            down_s = time.perf_counter() - t0
            rows.append({"start": "cold" if i == 0 else "warm", "up_s": up_s, "down_s": down_s,
                         "per_service_s": per_service})  # fmt: skip
    finally:
        manager.down(d, log=lambda _m: None)
        if tmp:
            tmp.cleanup()
    worst = max(float(r["up_s"]) for r in rows)  # type: ignore[arg-type]
    return {"workers": workers, "rounds": rows, "target_healthy_s": TARGET_HEALTHY_S,
            "worst_up_over_target": worst / TARGET_HEALTHY_S}  # fmt: skip

"""``pbp bench predict`` runs end to end on a few sequences (its figures are measured, not asserted here) and
reports each ratio with what it divides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..conftest import REPO


def test_bench_predict_reports_predict_and_served_ratios(tmp_path):
    out = tmp_path / "b.json"
    cmd = [str(Path(sys.executable).with_name("pbp")), "bench", "predict", "--model", "tiny", "--n", "64",
           "--serve-seconds", "0.5", "--json", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    env["PATH"] = (
        f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"  # `mlflow models serve` runs uvicorn
    )
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(out.read_text())
    p = doc["predict"]
    assert p["n"] == 64 and p["ratio"] == p["bare_s"] / p["predict_s"] > 0
    assert [b["batch"] for b in doc["serve"]["batches"]] == [1, 64]
    for b in doc["serve"]["batches"]:
        assert b["seq_per_s"] == b["requests_per_s"] * b["batch"] and b["ratio"] > 0
    assert "pbp predict seq/s / bare forward seq/s" in res.stdout and "batch 64" in res.stdout

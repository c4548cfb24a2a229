"""The Grafana dashboards and provisioning files: generated from dashboards/generate.py, valid, and every query is
PromQL that Prometheus accepts. (That every panel has data after a real run is checked in tests/test_demo.py,
against the stack's live Prometheus.)"""

from __future__ import annotations

import json
import runpy
import subprocess

import yaml

from .conftest import REPO
from .promql import DASHBOARDS, panels


def test_dashboards_match_their_generator_and_are_well_formed(tmp_path):
    gen = runpy.run_path(str(REPO / "dashboards" / "generate.py"))
    assert {p.stem for p in DASHBOARDS.glob("*.json")} == set(gen["DASHBOARDS"]) == {
        "pbp-training", "pbp-data", "pbp-campaigns"}  # fmt: skip
    uids = set()
    for name, doc in gen["DASHBOARDS"].items():
        assert json.loads((DASHBOARDS / f"{name}.json").read_text()) == doc, f"{name}: run dashboards/generate.py"
        assert doc["uid"] not in uids and doc["panels"]
        uids.add(doc["uid"])
        assert [v["name"] for v in doc["templating"]["list"]] == ["datasource"]
        for panel in doc["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"][0]["expr"], panel["title"]
    for f in ("datasources/prometheus.yaml", "dashboards/pbp.yaml"):
        assert yaml.safe_load((REPO / "dashboards" / "provisioning" / f).read_text())["apiVersion"] == 1


def test_every_panel_query_is_valid_promql(tmp_path):
    """promtool (from the prometheus package `make test` installs) parses each expression as a recording rule."""
    import shutil

    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    rules = {"groups": [{"name": "pbp-panels", "rules": [
        {"record": f"pbp:panel_{i}", "expr": expr} for i, (_, _, expr) in enumerate(panels())]}]}  # fmt: skip
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    res = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(panels())} rules found" in res.stdout


def test_every_pbp_metric_a_panel_queries_is_exported_and_every_exported_one_is_charted():
    """Panel queries name Ray's export names (``ray_`` + name, ``_total`` for counters) of pbp.telemetry's metrics;
    the registry counter is the one left out of the dashboards (docs/metrics.md says why)."""
    import re

    from pbp import telemetry

    exported = {
        f"ray_{n}" + ("_total" if kind == "counter" else ""): n for n, (kind, _, _) in telemetry.METRICS.items()
    }
    queried = {m for _, _, expr in panels() for m in re.findall(r"\bray_pbp_\w+", expr)}
    assert queried <= set(exported), queried - set(exported)
    assert {exported[m] for m in set(exported) - queried} == {"pbp_registry_events"}


def test_telemetry_outside_ray_is_a_silent_no_op():
    import ray

    from pbp import telemetry

    assert not ray.is_initialized()
    telemetry.training("pretrain", "r", 1, {"loss": 1.0}, {"tokens_per_s": 5.0}, 0.1, 0)
    telemetry.campaign("c", {"running": 1}, "valid_spearman", None)
    telemetry.registry_event("m", "promoted")
    assert telemetry._made == {}  # nothing was created, so nothing can leak into a later Ray session

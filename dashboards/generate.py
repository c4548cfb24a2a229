"""Writes dashboards/grafana/*.json (Grafana dashboards over pbp's Ray-exported metrics, pbp/telemetry.py).

    python dashboards/generate.py      # after changing a panel; tests/test_dashboards.py checks every query has data
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "grafana"
DS = {"type": "prometheus", "uid": "${datasource}"}


def panel(i: int, title: str, expr: str, unit: str, legend: str, desc: str) -> dict:
    return {
        "id": i, "type": "timeseries", "title": title, "description": desc, "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": (i - 1) % 2 * 12, "y": (i - 1) // 2 * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": "A", "expr": expr, "legendFormat": legend, "datasource": DS}],
    }  # fmt: skip


def dashboard(uid: str, title: str, tag: str, panels: list[tuple[str, str, str, str, str]]) -> dict:
    return {
        "uid": uid, "title": title, "tags": ["pbp", "ray", tag], "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "description": "pbp's metrics (platform/pbp/telemetry.py), exported through Ray's metrics agents; loads "
                       "beside Ray's own dashboards. Datasource: any Prometheus that scrapes the Ray cluster.",
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0}]},
        "annotations": {"list": []},
        "panels": [panel(i, *p) for i, p in enumerate(panels, 1)],
    }  # fmt: skip


BY_RUN = "{{kind}} {{run}}"
DASHBOARDS = {
    "pbp-training": dashboard("pbp-training", "pbp / Training", "training", [
        ("Tokens per second", "max by (kind, run) (ray_pbp_train_tokens_per_second)", "short", BY_RUN,
         "Non-pad tokens per second over all ranks, per logging window (pretraining)."),
        ("Samples per second", "max by (kind, run) (ray_pbp_train_samples_per_second)", "short", BY_RUN,
         "Sequences per second over all ranks (pretraining: per logging window; fine-tuning: per epoch)."),
        ("Step time", "max by (kind, run) (ray_pbp_train_step_seconds)", "s", BY_RUN,
         "Wall seconds per optimizer step (pretraining) or per epoch (fine-tuning)."),
        ("Training loss", "max by (kind, run) (ray_pbp_train_loss)", "short", BY_RUN,
         "Loss at the last logging step (rank 0)."),
        ("Progress", "max by (kind, run) (ray_pbp_train_step)", "short", BY_RUN,
         "Steps (pretraining) or epochs (fine-tuning) done."),
        ("Skipped steps (non-finite loss)", "max by (kind, run) (ray_pbp_train_skipped_steps)", "short", BY_RUN,
         "Steps whose loss was NaN/inf on some rank: skipped on every rank and counted."),
        ("Checkpoint save time", "max by (kind, run) (ray_pbp_checkpoint_save_seconds)", "s", BY_RUN,
         "Seconds the last checkpoint took: local write, upload through Ray Train, commit, retention."),
        ("Checkpoints saved", "sum by (kind, run) (ray_pbp_checkpoints_saved_total)", "short", BY_RUN,
         "Complete checkpoints saved by the run."),
    ]),
    "pbp-data": dashboard("pbp-data", "pbp / Data", "data", [
        ("Shard bytes read per second", "sum by (kind, run) (rate(ray_pbp_data_bytes_read_total[1m]))", "Bps",
         BY_RUN, "Bytes of WebDataset shards read from object storage, all ranks."),
        ("Data wait", "max by (kind, run) (ray_pbp_train_data_wait_fraction)", "percentunit", BY_RUN,
         "Share of wall time the training loop waited for the data loader (rank 0)."),
        ("Shard bytes read", "sum by (kind, run) (ray_pbp_data_bytes_read_total)", "bytes", BY_RUN,
         "Shard bytes read by the run so far."),
        ("Node CPU utilisation", "avg by (instance) (ray_node_cpu_utilization)", "percent", "{{instance}}",
         "Ray's own node metric, to put data wait beside CPU load."),
    ]),
    "pbp-campaigns": dashboard("pbp-campaigns", "pbp / Search campaigns", "tune", [
        ("Trials by state", "max by (campaign, state) (ray_pbp_tune_trials)", "short", "{{campaign}} {{state}}",
         "Running, completed (full budget), pruned (stopped early by ASHA) and failed trials."),
        ("Best validation metric so far", "max by (campaign, metric) (ray_pbp_tune_best_metric)", "short",
         "{{campaign}} {{metric}}", "The best finished trial's validation metric."),
        ("Fine-tuning samples per second", 'max by (run) (ray_pbp_train_samples_per_second{kind="finetune"})',
         "short", "{{run}}", "Each trial's fine-tuning throughput (one series per trial run)."),
        ("Fine-tuning loss", 'max by (run) (ray_pbp_train_loss{kind="finetune"})', "short", "{{run}}",
         "Each trial's training loss per epoch."),
    ]),
}  # fmt: skip


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, doc in DASHBOARDS.items():
        (OUT / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""A small search campaign end to end on the local stack: Ray Tune + Optuna TPE + ASHA over the tiny fine-tuning
on a few rows of the paper's stability benchmark; MLflow parent and child runs, the report, pruned trials recorded
as PRUNED in the study; a bad search-space key fails before any trial starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.timeout(1200)


def _pbp(stack_dir: Path, *args: str, timeout: int = 1000) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    env.update(PBP_STACK_DIR=str(stack_dir))
    cmd = [str(Path(sys.executable).with_name("pbp")), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_unknown_search_space_key_fails_before_any_trial(stack_dir):
    res = _pbp(stack_dir, "tune", "--config", "configs/tune/tiny.yaml", "name=bad-space",
               "space={stages.0.lrr: {type: uniform, low: 0.1, high: 0.2}}", timeout=120)  # fmt: skip
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "space.stages.0.lrr" in res.stderr and "lrr" in res.stderr
    assert "Connected to Ray" not in res.stdout + res.stderr


def test_small_campaign_parent_children_report_and_pruned_trials(stack_dir, endpoints, tmp_path, monkeypatch):
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    name = f"camp-{os.getpid()}"
    res = _pbp(stack_dir, "tune", "--config", "configs/tune/tiny.yaml", f"name={name}", "num_samples=4",
               f"report_dir={tmp_path}", "storage_path=s3://pbp-runs/tests-tune",
               "finetune_overrides=[task.max_rows=120, stages.0.max_epochs=2, stages.1.max_epochs=2, "
               "stages.2.max_epochs=1]", "asha.grace_period=1")  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert f"[{name}] trial" in out and "best so far" in out  # the live lines
    report = tmp_path / name / "report.html"
    assert report.is_file() and report.read_text().count("data:image/png;base64,") >= 3
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / name / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and "COMPLETE" in states
    assert "PRUNED" in states, f"ASHA stopped no trial: {states}"
    for t in study.trials:
        if t.state.name == "PRUNED":  # recorded with its per-epoch values, never as a complete low-budget value
            assert t.value is None and t.intermediate_values

    for k, v in endpoints.mlflow_env().items():
        monkeypatch.setenv(k, v)
    mlflow.set_tracking_uri(endpoints.mlflow_uri)
    try:
        client = MlflowClient(endpoints.mlflow_uri)
        exp = client.get_experiment_by_name("pbp-tune")
        from pbp.train.tracking import find_run

        parent = find_run(client, exp.experiment_id, name)
        assert parent is not None
        children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
        assert len(children) == 4
        statuses = {c.data.tags.get("pbp.trial_status") for c in children}
        assert statuses <= {"completed", "pruned", "failed"} and "completed" in statuses
        for c in children:
            assert "train_loss" in c.data.metrics and "valid_loss" in c.data.metrics
        p = client.get_run(parent)
        assert p.data.metrics["trials_completed"] >= 1 and p.data.metrics["cost_total"] > 0
        best_uri = p.data.tags["pbp.best_model_uri"]
        model = mlflow.pyfunc.load_model(best_uri)
        preds = model.predict({"seq": ["MKTAYIAKQRQISFVKSHFSRQ", "MSV"]})
        assert len(preds) == 2
        arts = {a.path for a in client.list_artifacts(parent, "campaign")}
        assert {"campaign/report.html", "campaign/study.db", "campaign/ledger.json"} <= arts
    finally:
        mlflow.set_tracking_uri(None)

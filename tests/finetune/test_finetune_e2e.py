"""``pbp finetune`` end to end on the local stack (SeaweedFS, MLflow with auth, 3-node Ray): the paper's benchmark
files, tiny budgets; checkpoints in S3, the MLflow run and its pyfunc model; a resume after completion; a bad input
refused on the driver before Ray starts anything."""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from pbp.model import ProteinBERT
from pbp.train import checkpoint as ckpt
from pbp.train.tracking import find_run

from ..conftest import REPO, SHARED_DATA, pbp_env, signal_when

pytestmark = pytest.mark.timeout(900)
BENCH = SHARED_DATA / "proteinbert_benchmarks"
PREFIX = "pbp-runs/tests-ft"
# 1 + 1 + 1 epochs over the tiny config's three stages (frozen, unfrozen, final at seq_len 256).
SHORT = ["stages.0.max_epochs=2", "stages.1.max_epochs=1", "stages.2.max_epochs=1"]
EPOCHS = 4


def _finetune(stack_dir: Path, run: str, *overrides: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = pbp_env(stack_dir)
    cmd = [
        str(Path(sys.executable).with_name("pbp")), "finetune", "--config", str(REPO / "configs/finetune/tiny.yaml"),
        f"run_name={run}", f"checkpoint.storage_path=s3://{PREFIX}", *overrides,
    ]  # fmt: skip
    # cwd: the config's task paths (../shared/...) are relative to the repository root.
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    return res.stdout + res.stderr


@pytest.fixture
def mlflow_client(endpoints, monkeypatch):
    """An MLflow client of the stack's server; this process' tracking URI and credentials restored afterwards."""
    import mlflow
    from mlflow.tracking import MlflowClient

    for k, v in endpoints.mlflow_env().items():
        monkeypatch.setenv(k, v)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(endpoints.mlflow_uri)
    yield MlflowClient(endpoints.mlflow_uri)
    mlflow.set_tracking_uri(previous)


def _mlflow_run(client, run_name: str):
    exp = client.get_experiment_by_name("pbp-finetune")
    assert exp is not None, "no MLflow experiment pbp-finetune"
    run_id = find_run(client, exp.experiment_id, run_name)
    assert run_id, f"no MLflow run named {run_name}"
    return client.get_run(run_id)


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _run_dir(endpoints, run: str) -> ckpt.StorageDir:
    return ckpt.StorageDir(endpoints.pyarrow_fs(), f"{PREFIX}/{run}")


@pytest.fixture(scope="module")
def numeric_run(stack_dir):
    """Stability (numeric), no pretraining, 120 rows: run once, shared by the checks and the resume test."""
    run = f"ft-num-{random.randrange(10**6)}"
    t0 = time.time()
    out = _ok(_finetune(stack_dir, run, "task.max_rows=120", *SHORT))
    print(f"numeric fine-tuning run took {time.time() - t0:.0f}s")
    return run, out


def test_numeric_from_nothing_tracked_checkpointed_and_exported(numeric_run, endpoints, mlflow_client):
    import mlflow.pyfunc

    run, out = numeric_run
    # The printed table: each figure beside its trivial baseline.
    row = re.search(r"^test_spearman\s+(\S+)\s+(\S+)$", out, re.M)
    assert row, out[-3000:]
    assert row.group(2) == "0.0000" and -1.0 <= float(row.group(1)) <= 1.0
    assert re.search(r"^test_mse\s+\S+\s+\d+\.\d{4}$", out, re.M)
    # The MLflow run: per-epoch histories, test metrics, the task files' digests, lineage.
    mrun = _mlflow_run(mlflow_client, run)
    rid = mrun.info.run_id
    assert _steps(mlflow_client, rid, "train_loss") == list(range(1, EPOCHS + 1))
    assert sorted(set(_steps(mlflow_client, rid, "valid_loss"))) == list(range(1, EPOCHS + 1))
    for key in ("test_spearman", "test_spearman_baseline", "test_mse", "test_mse_baseline", "test_le512_spearman"):
        assert key in mrun.data.metrics, key
    tags = mrun.data.tags
    train_csv = BENCH / "stability.train.csv"
    assert tags["pbp.task.train_sha256"] == hashlib.sha256(train_csv.read_bytes()).hexdigest()
    assert tags["pbp.task.kind"] == "numeric" and tags["pbp.init"] == "none"
    for secret in (endpoints.s3_secret_key, endpoints.mlflow_password):
        assert secret not in str(mrun.data.params) and secret not in str(tags)
    # The pyfunc model, loaded from the server in this process.
    model = mlflow.pyfunc.load_model(f"runs:/{rid}/model")
    pred = model.predict(pd.DataFrame({"seq": ["MKTAYIAKQR", "GSSGSSG", "MKVLAAGIVG" * 5]}))
    assert list(pred.columns) == ["prediction"] and len(pred) == 3 and pred["prediction"].notna().all()
    # Checkpoints in S3: the newest is complete (the last epoch's), retention kept two; the final model beside them.
    rdir = _run_dir(endpoints, run)
    assert ckpt.newest_complete(rdir) == ckpt.checkpoint_name(EPOCHS)
    assert rdir.checkpoints() == [ckpt.checkpoint_name(EPOCHS), ckpt.checkpoint_name(EPOCHS - 1)]
    commit = rdir.read_json(f"{ckpt.checkpoint_name(EPOCHS)}/{ckpt.COMMIT}")
    assert commit["mlflow_run_id"] == rid and commit["job"]["stage"] == 2 and commit["job"]["stage_done"]
    # the closing lines name that run (the id its checkpoint records)
    assert f"register it: pbp registry register {rid} --name MODEL_NAME" in out
    assert rdir.size("final_model/model.safetensors") and rdir.read_json("final_model/finetuned.json")["task"][
        "kind"] == "numeric"  # fmt: skip
    assert rdir.read_json("final_metrics.json")["test_spearman"] == pytest.approx(float(row.group(1)), abs=1e-4)


def test_a_finetune_run_registered_by_run_id_carries_its_lineage(numeric_run, stack_dir, mlflow_client):
    """`pbp registry register RUN_ID`: the run's own pyfunc is registered as it is, with the run's test metrics on
    the recorded test split, the task files' digests, the git commit and the run, as version tags."""
    run, _ = numeric_run
    mrun = _mlflow_run(mlflow_client, run)
    name = f"reg-{run}"
    env = pbp_env(stack_dir)
    res = subprocess.run([str(Path(sys.executable).with_name("pbp")), "registry", "register", mrun.info.run_id,
                          "--name", name], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    out = _ok(res)
    assert f"model {name} version 1" in out and "test_spearman" in out
    mv = mlflow_client.get_model_version(name, "1")
    tags, rtags = mv.tags, mrun.data.tags
    assert mv.run_id == mrun.info.run_id and tags["pbp.source_run_id"] == mrun.info.run_id
    assert tags["pbp.kind"] == "finetuned" and tags["pbp.finetune.run"] == run and tags["pbp.task.name"] == "stability"
    assert tags["pbp.git_commit"] == rtags["pbp.git_commit"]
    assert tags["pbp.test.sha256"] == rtags["pbp.task.test_sha256"] == tags["pbp.task.test_sha256"]
    assert tags["pbp.metric.split"] == f"{rtags['pbp.task.test_sha256']}:120"  # the 120-row test split
    assert float(tags["pbp.metric.test_spearman"]) == pytest.approx(mrun.data.metrics["test_spearman"])
    # `pbp registry list NAME` says the metric is on the first 120 rows, not the whole file
    res = subprocess.run([str(Path(sys.executable).with_name("pbp")), "registry", "list", name], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    sha = tags["pbp.test.sha256"]
    assert f"fine-tuning {run}  stability.test.csv (sha256 {sha[:8]}, first 120 rows)" in _ok(res)


def _model_copies() -> set[Path]:
    """pbp's temporary directories that hold a model's weights (the workers share this machine's temp dir)."""
    return {p.parent for p in Path(tempfile.gettempdir()).glob("pbp-*/**/*.safetensors")}


def test_residue_task_from_a_pretrained_export(stack_dir, endpoints, mlflow_client, tiny_cfg, tmp_path):
    pre = ProteinBERT(tiny_cfg).save_pretrained(tmp_path / "pre", metadata={"run_name": "pre-x"})
    run = f"ft-ss-{random.randrange(10**6)}"
    copies = _model_copies()
    out = _ok(_finetune(
        stack_dir, run, f"init={pre}", "task.kind=residue_categorical",
        f"task.train={BENCH / 'secondary_structure.valid.csv'}", "task.valid=",
        f"task.test={BENCH / 'secondary_structure.test.csv'}", "task.max_rows=60", "too_long=crop",
        "stages.0.max_epochs=1", "stages.1.max_epochs=1", "stages.2.max_epochs=1",
    ))  # fmt: skip
    assert re.search(r"^test_accuracy\s+\S+\s+\d\.\d{4}$", out, re.M), out[-3000:]
    mrun = _mlflow_run(mlflow_client, run)
    tags = mrun.data.tags
    assert tags["pbp.init"] == str(pre) and tags["pbp.init_pretrain_run"] == "pre-x"
    assert tags["pbp.task.kind"] == "residue_categorical"
    assert _steps(mlflow_client, mrun.info.run_id, "train_loss") == [1, 2, 3]
    doc = _run_dir(endpoints, run).read_json("final_model/finetuned.json")
    assert doc["task"]["classes"] == ["0", "1", "2"] and doc["metadata"]["pbp.init_pretrain_run"] == "pre-x"
    # The model's local copies (the export, the MLflow pyfunc) are gone once the model is in storage and MLflow.
    assert _model_copies() <= copies, sorted(map(str, _model_copies() - copies))


def _subset(src: Path, dst: Path, classes: set[str], per_class: int, max_len: int = 120) -> Path:
    rows: dict[str, list[dict]] = {c: [] for c in classes}
    with src.open() as f:
        for r in csv.DictReader(f):
            if r["label"] in classes and len(r["seq"]) <= max_len and len(rows[r["label"]]) < per_class:
                rows[r["label"]].append(r)
    with dst.open("w", newline="") as f:
        w = csv.DictWriter(f, ["seq", "label"])
        w.writeheader()
        for c in sorted(classes):
            w.writerows(rows[c])
    return dst


def test_categorical_remote_homology_subset_on_two_workers(stack_dir, endpoints, mlflow_client, tmp_path):
    """Three fold classes of the real files (the test file's labels are all in train), on 2 Ray Train workers."""
    classes = {"22", "36", "153"}  # each with short sequences in every file
    files = {role: _subset(BENCH / f"remote_homology.{role}.csv", tmp_path / f"{role}.csv", classes, n)
             for role, n in (("train", 30), ("valid", 8), ("test", 8))}  # fmt: skip
    run = f"ft-rh-{random.randrange(10**6)}"
    out = _ok(_finetune(
        stack_dir, run, "task.kind=categorical", *(f"task.{role}={p}" for role, p in files.items()),
        "stages.0.max_epochs=1", "stages.1.max_epochs=1", "stages.2.max_epochs=1", "scaling.num_workers=2",
    ))  # fmt: skip
    row = re.search(r"^test_accuracy\s+(\S+)\s+(\S+)$", out, re.M)
    assert row, out[-3000:]
    assert 0.0 <= float(row.group(1)) <= 1.0 and 0.0 < float(row.group(2)) < 1.0  # majority-class baseline
    # The local stack's nodes share one IP, so Ray Train puts both workers on one node: they share one cache.
    assert re.search(r"feature cache: train, 90 rows x \d+ features, float32 \(0 MiB\), shared by the node's 2", out)
    assert out.count("feature cache: train,") == 1, out[-3000:]  # said by rank 0 only (each rank said it before)
    assert "View run" not in out  # MLflow's own link lines, off in every worker: the driver prints the run's link
    mrun = _mlflow_run(mlflow_client, run)
    assert mrun.data.tags["pbp.task.kind"] == "categorical"
    assert mrun.data.tags["pbp.task.rows"].startswith("train=90 valid=")
    # Both ranks trained and checkpointed; the test metric covers every test row once (the ranks' parts merged).
    rdir = _run_dir(endpoints, run)
    newest = ckpt.newest_complete(rdir)
    assert newest and rdir.read_json(f"{newest}/{ckpt.COMMIT}")["world_size"] == 2
    final = rdir.read_json("final_metrics.json")
    assert sum(v for k, v in final.items() if k.startswith("test_") and k.endswith("_n")) == 24, final


def test_a_worker_lost_after_an_epoch_resumes_from_its_checkpoint_to_the_same_model(stack_dir, endpoints):
    """The worker exits after epoch 1's checkpoint (a test hook: a lost worker on cue); Ray Train starts another,
    which continues from that checkpoint. The run ends with exactly the uninterrupted run's metrics: the batch order
    and dropout's draws are seeded by the epoch, so a resumed epoch draws what the uninterrupted one drew (with head
    dropout 0.3, before this the resumed run's epoch-2 train_loss was 1.45 against 1.84)."""
    args = ("task.max_rows=60", "head_dropout=0.3", "stages.0.max_epochs=2", "stages.1.max_epochs=2",
            "stages.2.max_epochs=1", "tracking.enabled=false", "scaling.max_failures=1")  # fmt: skip
    whole, lost = (f"ft-{k}-{random.randrange(10**6)}" for k in ("whole", "lost"))
    _ok(_finetune(stack_dir, whole, *args))
    os.environ["PBP_TEST_KILL_AFTER_EPOCH"] = "1"
    try:
        out = _ok(_finetune(stack_dir, lost, *args))
    finally:
        del os.environ["PBP_TEST_KILL_AFTER_EPOCH"]
    assert re.search(rf"resuming {lost} from s3://\S+/checkpoint-000000001 \(stage 0, epoch 1\)", out), out[-3000:]
    a = _run_dir(endpoints, whole).read_json("final_metrics.json")
    b = _run_dir(endpoints, lost).read_json("final_metrics.json")
    assert a and b and a.keys() == b.keys()
    assert b == pytest.approx(a, rel=1e-6, abs=1e-9), (a, b)


def test_ctrl_c_stops_a_run_says_how_to_continue_and_the_same_command_does(stack_dir, mlflow_client):
    """Before: Ray Train's Ctrl-C handler aborted the run and exited the process with status 1 and no word."""
    run = f"ft-int-{random.randrange(10**6)}"
    args = ("task.max_rows=60", "stages.0.max_epochs=1", "stages.1.max_epochs=40", "stages.2.max_epochs=1",
            "schedule.early_stopping_patience=0")  # fmt: skip
    cmd = [str(Path(sys.executable).with_name("pbp")), "finetune", "--config", str(REPO / "configs/finetune/tiny.yaml"),
           f"run_name={run}", f"checkpoint.storage_path=s3://{PREFIX}", *args]  # fmt: skip
    rc, out = signal_when(cmd, stack_dir, rf"\[{run}\] stage unfrozen epoch 2/40", signal.SIGINT)  # what Ctrl-C sends
    assert rc == 130, out[-3000:]
    assert f"pbp: interrupted: run {run} stopped: the same command (the same run_name) continues it" in out, out[-3000:]
    assert _mlflow_run(mlflow_client, run).info.status == "KILLED"
    again = _ok(_finetune(stack_dir, run, *args))
    assert re.search(rf"resuming {run} from s3://\S+ \(stage 1, epoch \d+\)", again), again[-3000:]
    assert f"run {run}: finished" in again


def test_a_stage_that_keeps_an_earlier_epochs_weights_says_so_with_their_figures(stack_dir):
    """The epoch lines show each epoch's own weights; the stage then restores its best epoch's (Keras'
    restore_best_weights), and a campaign's report of that epoch carries those. A line says which were kept. Here no
    epoch after the first improves by schedule.min_delta, so every stage keeps its first epoch."""
    run = f"ft-kept-{random.randrange(10**6)}"
    out = _ok(_finetune(stack_dir, run, "task.max_rows=40", "stages.0.max_epochs=2", "stages.1.max_epochs=1",
                        "stages.2.max_epochs=1", "schedule.min_delta=1000000", "tracking.enabled=false"))  # fmt: skip
    kept = re.findall(rf"\[{run}\] stage (\S+): kept epoch (\d+)'s weights \(lowest valid_loss\) "
                      r"valid_loss=(\S+) valid_spearman=(\S+)", out)  # fmt: skip
    assert [(k[0], k[1]) for k in kept] == [("frozen", "1")], out[-3000:]  # one-epoch stages keep their only epoch
    first = re.search(rf"\[{run}\] stage frozen epoch 1/2 .*valid_loss=(\S+) valid_spearman=(\S+)", out)
    assert first and (first.group(1), first.group(2)) == kept[0][2:], out[-3000:]  # epoch 1's figures, again


def test_rerun_after_completion_starts_nothing_and_reports_the_run(numeric_run, stack_dir, endpoints, mlflow_client):
    run, _ = numeric_run
    mrun = _mlflow_run(mlflow_client, run)
    assert mrun.data.tags["pbp.model_logged"] == "true"  # what a re-run checks, with the checkpoint and the export
    logged = mlflow_client.search_logged_models([mrun.info.experiment_id])
    out = _ok(_finetune(stack_dir, run, "task.max_rows=120", *SHORT))
    # no worker, no stage, no second export: the closing lines from the run's final_metrics.json
    assert "Started training worker group" not in out and not re.search(r"stage \S+ epoch \d+/", out)
    assert f"run {run}: already finished (nothing left to train); model in" in out
    assert "(a finished run is not trained further, also with larger stages' max_epochs" in out
    assert re.search(r"^test_spearman\s+\S+\s+0\.0000$", out, re.M)
    assert f"register it: pbp registry register {mrun.info.run_id} --name MODEL_NAME" in out
    assert len(mlflow_client.search_logged_models([mrun.info.experiment_id])) == len(logged)
    assert _steps(mlflow_client, mrun.info.run_id, "train_loss") == list(range(1, EPOCHS + 1))
    assert ckpt.newest_complete(_run_dir(endpoints, run)) == ckpt.checkpoint_name(EPOCHS)


def test_a_rerun_with_another_model_or_task_is_refused_and_other_settings_are_not(numeric_run, stack_dir, endpoints):
    """Before: the old checkpoint loaded into the other model, a size-mismatch traceback in each of 3 retried workers
    (or, with the same shapes, a silent continuation on other data)."""
    run, _ = numeric_run
    res = _finetune(stack_dir, run, "task.max_rows=100", "model.d_global=32", *SHORT)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert f"pbp: error: run '{run}' already exists (s3://{PREFIX}/{run}, newest checkpoint checkpoint-" in out
    assert "model.d_global: 64 -> 32" in out and "task.max_rows: 120 -> 100" in out and f"run_name={run}-2" in out
    assert "Connected to Ray cluster" not in out and "Traceback" not in out
    assert ckpt.newest_complete(_run_dir(endpoints, run)) == ckpt.checkpoint_name(EPOCHS)
    # what a re-run may change: budgets, checkpoint retention, evaluation batching, workers
    out = _ok(_finetune(stack_dir, run, "task.max_rows=120", *SHORT[:2], "stages.2.max_epochs=2",
                        "checkpoint.keep_last=3", "eval_batch_tokens=8192", "scaling.num_workers=2"))  # fmt: skip
    assert f"run {run}: already finished (nothing left to train)" in out


def test_a_missing_column_fails_on_the_driver_in_seconds(stack_dir, endpoints, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence,label\nMKV,1.0\n")
    run = f"ft-bad-{random.randrange(10**6)}"
    t0 = time.time()
    res = _finetune(stack_dir, run, f"task.train={bad}", timeout=120)
    elapsed = time.time() - t0
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert lines == [f"pbp: error: {bad}:1: no column 'seq' in the header ['sequence', 'label'] "
                     "(set task.seq_column / task.label_column)"], res.stderr  # fmt: skip
    assert elapsed < 60, elapsed  # the interpreter's start; no cluster round trip
    assert "Ray" not in res.stdout + res.stderr
    assert _run_dir(endpoints, run).checkpoints() == []
    from pyarrow import fs as pafs

    info = endpoints.pyarrow_fs().get_file_info(f"{PREFIX}/{run}")
    assert info.type == pafs.FileType.NotFound  # Ray Train never created the run's directory


def test_a_job_submitted_to_the_local_stack_reads_the_configs_relative_task_files(stack_dir, mlflow_client):
    """`pbp submit finetune --config configs/finetune/tiny.yaml`: the config's task files are ../shared/... paths,
    relative to the project. Ray unpacks the project elsewhere; on a cluster on this machine the job runs in the
    project it was submitted from (PBP_SUBMIT_DIR), so it finds them as the direct command does."""
    run = f"ft-sub-{random.randrange(10**6)}"
    env = pbp_env(stack_dir)
    cmd = [str(Path(sys.executable).with_name("pbp")), "submit", "finetune", "--config", "configs/finetune/tiny.yaml",
           f"run_name={run}", f"checkpoint.storage_path=s3://{PREFIX}", "task.max_rows=40", "stages.0.max_epochs=1",
           "stages.1.max_epochs=1", "stages.2.max_epochs=1", "--wait", "--timeout", "600"]  # fmt: skip
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=700)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    assert "SUCCEEDED" in res.stdout
    assert f"run {run}: finished; model in" in res.stdout and "test_spearman" in res.stdout  # the command's ending
    assert re.search(r"\ntokens <= 512 +40 ", res.stdout), res.stdout[-3000:]  # the test rows by length, counted
    assert "] test_le512_n" not in res.stdout  # printed once, by the driver, not also by the worker
    out = res.stdout + res.stderr  # Ray's packaging lines (a dozen per submission) and Train chatter are dropped
    assert "uploading " in out and "Ignoring upload to cluster" not in out and "is now ignored by default" not in out
    assert "'PreemptionWatcher'" not in out and "Cleaning up placement group" not in out
    got = _mlflow_run(mlflow_client, run)
    assert got.info.status == "FINISHED" and "test_spearman" in got.data.metrics
    assert f"register it: pbp registry register {got.info.run_id} --name MODEL_NAME" in res.stdout  # the run's id
    assert re.search(rf"MLflow:  http://\S+/#/experiments/\d+/runs/{got.info.run_id}\n", res.stdout)  # not the bare id


def test_more_workers_than_the_local_stack_holds_fail_at_once_naming_the_fix(stack_dir):
    """The local stack has no autoscaler: the run waited scaling.resource_wait_s (300 s) printing Ray Train's
    tracebacks, then told the user to resume from a checkpoint it never wrote."""
    t0 = time.time()
    res = _finetune(stack_dir, f"ft-big-{random.randrange(10**6)}", "scaling.num_workers=64", "tracking.enabled=false",
                    timeout=200)  # fmt: skip
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    err = res.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"pbp: error: the local stack's Ray cluster has \d+ node\(s\) with \d+ CPU: room for \d+ of "
                        r"64 worker\(s\) x 1 CPU, and it has no autoscaler: add worker nodes \(`pbp stack up "
                        r"--workers N`.*\) or lower scaling\.num_workers / scaling\.cpus_per_worker", err), err  # fmt: skip
    assert time.time() - t0 < 100 and "WorkerGroupStartupTimeoutError" not in res.stdout + res.stderr

"""MLflow unreachable during training: nothing stalls or stops, metrics are buffered and delivered in order when the
server answers again, a run that ends badly is marked FAILED. The outage is injected in the client (the one fault
here a real server cannot produce on cue: refusing exactly some requests, then answering again)."""

from __future__ import annotations

import json
import logging
import time

import pytest

from pbp.train import tracking
from pbp.train.tracking import Tracker, finish_on_error


class FlakyClient:
    """Enough of MlflowClient for a Tracker; ``down`` makes every request fail like a refused connection."""

    def __init__(self) -> None:
        self.down, self.calls, self.metrics, self.status = False, 0, [], None

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("[Errno 111] Connection refused")

    def get_experiment_by_name(self, name):
        return type("E", (), {"experiment_id": "1"})

    def search_runs(self, *a, **k):
        return []

    def create_run(self, exp, run_name, tags):
        return type("R", (), {"info": type("I", (), {"run_id": "r1"})})

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._call()
        self.metrics.extend((m.key, m.step, m.value) for m in metrics)

    def set_terminated(self, run_id, status="FINISHED"):
        self._call()
        self.status = status

    def get_metric_history(self, run_id, key):
        self._call()
        return [type("M", (), {"step": step}) for k, step, _ in self.metrics if k == key]

    def update_run(self, run_id, status):
        self._call()
        self.status = status


@pytest.fixture
def fast_retry(monkeypatch):
    monkeypatch.setattr(tracking, "RETRY_S", 0.2)


def test_an_outage_neither_stalls_nor_loses_metrics(fast_retry, caplog):
    client = FlakyClient()
    t = Tracker("exp", "run", None, client=client)
    t.log_metrics(1, {"loss": 1.0})
    client.down = True
    with caplog.at_level(logging.WARNING, "pbp.tracking"):
        t0 = time.monotonic()
        for step in range(2, 50):
            t.log_metrics(step, {"loss": 1.0 / step})
        assert time.monotonic() - t0 < 1.0  # no request waits for a server that is down
        assert client.calls < 10  # tried again every RETRY_S, not on every step
        client.down = False
        time.sleep(0.25)
        t.log_metrics(50, {"loss": 0.02})
    assert [s for _, s, _ in client.metrics] == list(range(1, 51))  # everything, in order, once
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("MLflow did not take a request" in w for w in warnings) == 1
    assert any("takes requests again" in w for w in warnings)
    t.finish()
    assert client.status == "FINISHED"


def test_a_server_down_for_good_ends_the_run_with_a_warning_not_an_error(fast_retry, caplog):
    client = FlakyClient()
    t = Tracker("exp", "run", None, client=client)
    client.down = True
    t.log_metrics(1, {"loss": 1.0})
    with caplog.at_level(logging.WARNING, "pbp.tracking"):
        t.finish()
    assert client.status is None and "1 metrics not delivered" in caplog.text


def test_metrics_undelivered_at_a_checkpoint_reach_mlflow_when_the_run_resumes(fast_retry):
    """A chaos run: MLflow down at the end of `pbp finetune`; the re-run (after MLflow was back) resumed from the
    last checkpoint, logged the model and FINISHED the run, but epochs 5-8 of the curves were gone for good (the
    buffer lived only in the worker). The checkpoint now keeps the buffer and the resumed run's tracker sends it."""
    client = FlakyClient()
    t = Tracker("exp", "run", None, client=client, progress_metric="train_loss")
    for step in (1, 2):
        t.log_metrics(step, {"train_loss": 1.0 / step, "valid_loss": 2.0 / step})
    client.down = True
    for step in (3, 4, 5):
        t.log_metrics(step, {"train_loss": 1.0 / step, "valid_loss": 2.0 / step})
    kept = json.loads(json.dumps(t.backlog()))  # what the checkpoint of epoch 5 holds
    assert [(k, s) for k, _, _, s in kept] == [(k, s) for s in (3, 4, 5) for k in ("train_loss", "valid_loss")]
    t.finish()  # MLflow still down: nothing delivered, the worker ends
    client.down = False
    client.metrics.append(("train_loss", 3, 1 / 3))  # a step MLflow took after the checkpoint was saved
    resumed = Tracker("exp", "run", "r1", client=client, progress_metric="train_loss", backlog=kept)
    resumed.log_metrics(6, {"train_loss": 1 / 6, "valid_loss": 2 / 6})
    for key in ("train_loss", "valid_loss"):
        assert sorted(s for k, s, _ in client.metrics if k == key) == [1, 2, 3, 4, 5, 6]  # every epoch, once
    assert resumed.backlog() == []


def test_a_run_that_fails_is_marked_failed_and_the_error_goes_on():
    client = FlakyClient()
    t = Tracker("exp", "run", None, client=client)
    with pytest.raises(ZeroDivisionError), finish_on_error(t):
        1 / 0  # noqa: B018
    assert client.status == "FAILED"
    with pytest.raises(KeyboardInterrupt), finish_on_error(t):
        raise KeyboardInterrupt
    assert client.status == "KILLED"


@pytest.mark.parametrize("job", ["pretrain --config configs/pretrain/tiny.yaml data.url=s3://pbp-data/none/",
                                 "finetune --config configs/finetune/tiny.yaml"])  # fmt: skip
def test_a_tracking_server_down_at_the_start_fails_the_command_at_once_naming_it(job):
    """Before: the workers started, each request waited ~255 s in MLflow's retries, then a traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ..conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    env.update(PBP_STACK_DIR="/nonexistent", MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    t0 = time.monotonic()
    res = subprocess.run([str(Path(sys.executable).with_name("pbp")), *job.split()], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "MLflow at http://127.0.0.1:9 does not answer" in res.stderr, res.stderr[-2000:]
    assert "tracking.enabled=false" in res.stderr and time.monotonic() - t0 < 60


@pytest.mark.parametrize(("stop", "status"), [(SystemExit(15), "KILLED"), (KeyboardInterrupt(), "KILLED"),
                                              (RuntimeError("a worker died"), "FAILED")])  # fmt: skip
def test_the_driver_marks_a_stopped_run_killed_and_a_failed_one_failed(stop, status, endpoints, monkeypatch):
    """`pbp jobs stop` sends the job's driver SIGTERM, which Ray's driver turns into SystemExit: the run was stopped
    by its user (KILLED), not FAILED; its workers are killed with no chance to say so themselves."""
    import random

    from mlflow.tracking import MlflowClient

    from pbp.train.tracking import marked_if_unfinished

    for k, v in endpoints.mlflow_env().items():
        monkeypatch.setenv(k, v)
    name = f"stopped-{random.randrange(10**9)}"
    t = Tracker("pbp-tests-stop", name, None)
    with pytest.raises(type(stop)), marked_if_unfinished(True, "pbp-tests-stop", name):
        raise stop
    assert MlflowClient(endpoints.mlflow_uri).get_run(t.run_id).info.status == status


def test_a_stopped_campaign_leaves_no_run_running(endpoints, monkeypatch):
    """The trials' workers die with the campaign's driver: the driver marks the parent and every child still
    RUNNING; a finished trial keeps its status."""
    from mlflow.tracking import MlflowClient

    from pbp.train.tracking import mark_family_unfinished

    for k, v in endpoints.mlflow_env().items():
        monkeypatch.setenv(k, v)
    client = MlflowClient(endpoints.mlflow_uri)
    exp = client.get_experiment_by_name("pbp-tests-stop") or client.get_experiment(
        client.create_experiment("pbp-tests-stop")
    )
    parent = client.create_run(exp.experiment_id).info.run_id
    running, done = (client.create_run(exp.experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
                     for _ in range(2))  # fmt: skip
    client.set_terminated(done, "FINISHED")
    other = client.create_run(exp.experiment_id).info.run_id  # another campaign's run: untouched
    mark_family_unfinished(parent, "KILLED")
    status = {r: client.get_run(r).info.status for r in (parent, running, done, other)}
    assert status == {parent: "KILLED", running: "KILLED", done: "FINISHED", other: "RUNNING"}


def test_pretraining_whose_mlflow_run_is_not_finished_fails_saying_how_to_finish_it(monkeypatch, capsys):
    """A chaos run: MLflow down at the end of `pbp pretrain`; the worker said '621 metrics not delivered', the driver
    printed a raw lookup error, then 'run chaos-pt7: finished at step 600' and exit 0 (51 of 120 loss points and no
    model in MLflow; the same command again would have fixed it, and nothing said so)."""
    from pbp.cli.train_cmds import pretrain_and_report
    from pbp.config import load_config
    from pbp.train import checkpoint, launch
    from pbp.train.config import PretrainConfig

    from ..conftest import REPO

    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", ["run_name=pt7", "data.url=s3://d/v1/"])
    url = "s3://pbp-runs/pretrain/pt7"
    commit = checkpoint.CommitRecord(step=600, world_size=2, run_name="pt7", mlflow_run_id="a" * 32)
    monkeypatch.setattr(checkpoint, "newest_commit", lambda run: (f"{url}/checkpoint-000000600", commit))
    monkeypatch.setattr(checkpoint, "storage_dir", lambda u: None)
    monkeypatch.setattr(launch, "_pretrain", lambda cfg, meta_extra, address: launch.PretrainResult(
        url, {"step": 600}, f"{url}/checkpoint-000000600", trained=True))  # fmt: skip
    monkeypatch.setattr(tracking, "missing_from_run", lambda run_id: None)  # MLflow cannot say: not known complete
    monkeypatch.setattr(tracking, "run_link", lambda run_id: run_id)
    assert pretrain_and_report(cfg) is False
    err = capsys.readouterr().err
    assert "its MLflow run is not complete (MLflow does not answer)" in err
    assert "Run the same command again (once MLflow answers)" in err
    monkeypatch.setattr(tracking, "missing_from_run", lambda run_id: [])
    assert pretrain_and_report(cfg) is True and "not complete" not in capsys.readouterr().err


def test_an_mlflow_run_is_complete_once_finished_with_its_model_logged(endpoints, monkeypatch, tmp_path):
    """One rule for pretraining and fine-tuning (pretraining's was "FINISHED" alone): a run whose model upload failed
    in a short MLflow outage, and whose finish then went through, was complete by it with no model in MLflow, and a
    re-run did nothing to mend it."""
    import random

    from pbp.train import checkpoint, launch

    for k, v in endpoints.mlflow_env().items():
        monkeypatch.setenv(k, v)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    logged = Tracker("pbp-tests-complete", f"logged-{random.randrange(10**9)}", None)
    assert tracking.missing_from_run(logged.run_id) == [
        "its status is RUNNING, not FINISHED",
        "its model is not logged",
    ]
    assert logged.log_model_dir(model) is True
    assert tracking.missing_from_run(logged.run_id) == ["its status is RUNNING, not FINISHED"]
    logged.finish()
    assert tracking.missing_from_run(logged.run_id) == []

    blip = Tracker("pbp-tests-complete", f"blip-{random.randrange(10**9)}", None)
    monkeypatch.setattr(blip.client, "log_artifacts", lambda *a: (_ for _ in ()).throw(ConnectionError("refused")))
    assert blip.log_model_dir(model) is False
    blip.finish()
    assert tracking.missing_from_run(blip.run_id) == ["its model is not logged"]
    commit = checkpoint.CommitRecord(step=10, world_size=1, run_name="blip", mlflow_run_id=blip.run_id)
    monkeypatch.setattr(checkpoint, "newest_commit", lambda run: ("checkpoint-000000010", commit))
    monkeypatch.setattr(checkpoint, "storage_dir", lambda url: None)
    res = launch._with_tracking(launch.PretrainResult("s3://r/blip", {"step": 10}, None))
    assert res.mlflow_run_id == blip.run_id and res.tracking_complete is False
    assert tracking.missing_from_run("0" * 32) is None  # no such run: nothing known
    assert tracking.tracking_gaps("0" * 32) == ["MLflow does not answer"] and tracking.tracking_gaps(None)

    older = Tracker("pbp-tests-complete", f"older-{random.randrange(10**9)}", None)  # logged before the tag existed
    older.client.log_artifacts(older.run_id, str(model), "model")
    assert tracking.missing_from_run(older.run_id) == ["its status is RUNNING, not FINISHED", "its model is not logged"]
    older.finish()
    assert tracking.missing_from_run(older.run_id) == []  # FINISHED, the model's files there: complete


def test_the_health_check_goes_through_mlflows_own_client_settings(tmp_path, monkeypatch):
    """The check before a run asked ``/health`` with a bare request, ignoring what MLflow's client honours (a token,
    a private CA, a client certificate): behind a gateway that checks MLflow's token on every path, pbp refused to
    start runs against a server its own MLflow client reached. (A stand-in server: MLflow's own leaves /health open.)"""
    import http.server
    import threading

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health" and self.headers.get("Authorization") == "Bearer s3cret"
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"OK" if ok else b"unauthorized")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("PBP_STACK_DIR", str(tmp_path / "no-stack"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(var, raising=False)
        refused = tracking.tracking_unanswered()
        assert refused is not None and refused.startswith(f"MLflow at {uri} does not answer (")
        assert "401" in refused or "Unauthorized" in refused
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret")
        assert tracking.tracking_unanswered() is None
    finally:
        server.shutdown()
        server.server_close()
    assert tracking.tracking_unanswered().startswith(f"MLflow at {uri} does not answer (connection refused")

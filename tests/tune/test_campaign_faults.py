"""A campaign's faults found by a chaos run, without killing the test stack's services: a resumed campaign keeps its
ASHA rungs, stop counts and best so far (``pbp.tune.progress.ResumeState``); MLflow not answering stops a campaign
with one line saying how to resume (``TrackingWatch``, ``_tracking_lost_says_resume``).

Tune rebuilds the scheduler and stopper from ``tuner.pkl`` as the campaign first made them: a chaos run killed a
campaign's driver after a trial was announced as pruned, and the resumed campaign, its rungs empty, ran that trial to
the end and pruned others than the uninterrupted campaign did (2 completed / 4 pruned became 4 / 2, another best)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SCRIPT = r"""
import json, sys
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from pbp.tune.progress import CampaignStopper, LiveProgress, ResumeState

storage = sys.argv[1]

def trainable(config):
    for epoch in range(1, 5):
        tune.report({"epoch": epoch, "m": config["x"] * epoch, "finished": int(epoch == 4)})

def rungs(s):
    return [[m, sorted(rec.values())] for b in s._brackets for m, rec in b._rungs]

ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
sched = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=5, grace_period=1, reduction_factor=2)
stopper, progress = CampaignStopper("m", "max", None, 3), LiveProgress("c", "m", "max", 4)
callbacks = [progress, ResumeState(sched, stopper, progress)]
tuner = tune.Tuner(trainable, param_space={"x": tune.grid_search([4, 1, 3, 2])},
                   tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=1),
                   run_config=tune.RunConfig(name="c", storage_path=storage, stop=stopper, callbacks=callbacks,
                                             verbose=0))
tuner.fit()
before = {"rungs": rungs(sched), "stopper": [stopper.best, stopper.since_best], "best": progress.best[0]}
again = tune.Tuner.restore(f"{storage}/c", trainable)
again.fit()  # every trial ended: nothing runs, but Tune restores the campaign's state first
inner = again._local_tuner
s2, st2 = inner._tune_config.scheduler, inner._run_config.stop
p2 = inner._run_config.callbacks[0]
after = {"rungs": rungs(s2), "stopper": [st2.best, st2.since_best], "best": p2.best[0] if p2.best else None}
print("RESULT " + json.dumps({"before": before, "after": after}))
"""


def test_a_restored_campaign_has_the_rungs_stop_counts_and_best_it_was_interrupted_with(tmp_path):
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, res.stdout[-2000:] + res.stderr[-4000:]
    r = json.loads(line[len("RESULT ") :])
    before, after = r["before"], r["after"]
    assert any(values for _, values in before["rungs"])  # ASHA recorded values at its rungs (x=1 was cut at epoch 1)
    assert after == before
    assert before["best"] == 16 and before["stopper"][0] == 16


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def mlflow_at(monkeypatch):
    """Point pbp at an MLflow URI (no stack state): a live stand-in answering /health, or a dead port."""
    monkeypatch.setenv("PBP_STACK_DIR", "/nonexistent")

    def at(live: bool) -> str:
        if not live:
            uri = "http://127.0.0.1:9"
        else:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            uri = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        return uri

    return at


INTERRUPTED = r"""
import json, os, sys, time
import ray
from ray import tune
from pbp.tune.progress import TrackingWatch

storage, marker, dead, live = sys.argv[1:5]

def trainable(config):
    if config["x"] == 1 and not os.path.exists(marker):  # its first attempt fails, as a trial does without MLflow
        open(marker, "w").close()
        raise RuntimeError("MLflow at ... does not answer")
    for epoch in range(1, 4):
        time.sleep(0.5)
        tune.report({"epoch": epoch, "m": config["x"] * epoch})

ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
os.environ["MLFLOW_TRACKING_URI"] = dead
watch = TrackingWatch()
tuner = tune.Tuner(trainable, param_space={"x": tune.grid_search([3, 1, 4, 2])},
                   tune_config=tune.TuneConfig(max_concurrent_trials=2),
                   run_config=tune.RunConfig(name="c", storage_path=storage, callbacks=[watch], verbose=0,
                                             failure_config=tune.FailureConfig(max_failures=1)))
first = tuner.fit()
ended_first = sorted(r.metrics.get("epoch", 0) for r in first)
os.environ["MLFLOW_TRACKING_URI"] = live
again = tune.Tuner.restore(f"{storage}/c", trainable, resume_errored=True).fit()
print("RESULT " + json.dumps({"lost": watch.lost, "first": ended_first,
                              "again": sorted((r.config["x"], r.metrics.get("epoch")) for r in again)}))
"""


def test_a_trial_failing_while_mlflow_does_not_answer_interrupts_the_campaign_and_resume_runs_every_trial(
    tmp_path, mlflow_at
):
    """A chaos run killed MLflow mid-campaign: every trial started afterwards failed at once on its MLflow run (4 of 6
    FAILED within 3 minutes, retries included). Stopping the campaign then (a stopper) ended the running trials for
    good: the resumed campaign "finished" with 4 of 6 trials. The first failure or retry while MLflow is down now
    interrupts the fit as Ctrl-C does, and a resume runs every trial to its end."""
    live = mlflow_at(live=True)
    res = subprocess.run([sys.executable, "-c", INTERRUPTED, str(tmp_path / "runs"), str(tmp_path / "marker"),
                          "http://127.0.0.1:9", live], capture_output=True, text=True, timeout=300)  # fmt: skip
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, res.stdout[-2000:] + res.stderr[-4000:]
    r = json.loads(line[len("RESULT ") :])
    assert r["lost"].startswith("MLflow at http://127.0.0.1:9 does not answer")
    assert r["first"].count(3) < 4  # interrupted: not every trial had ended
    assert r["again"] == [[1, 3], [2, 3], [3, 3], [4, 3]]  # resumed: every trial ran to its last epoch


def test_the_watch_interrupts_only_through_tunes_handler_and_only_when_mlflow_is_down(mlflow_at):
    import signal

    from pbp.tune.progress import TrackingWatch

    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: got.append(sig))
    try:
        mlflow_at(live=True)
        watch = TrackingWatch()
        watch.on_trial_recover(1, [], None)  # a trial failed for another reason: the campaign goes on
        assert not got and not watch.lost
        mlflow_at(live=False)
        watch.on_trial_error(2, [], None)
        assert got == [signal.SIGUSR1] and watch.lost
        # Tune's handler would log "Stop signal received (e.g. via SIGINT/Ctrl+C) ...": not the user's Ctrl-C, dropped
        tune_log = logging.getLogger("ray.tune.tune")
        assert not all(f.filter(logging.makeLogRecord({"msg": "Stop signal received (e.g. via SIGINT/Ctrl+C)"}))
                       for f in tune_log.filters)  # fmt: skip
        assert not tune_log.filters  # once: the filter is gone with the note it dropped
        watch.on_trial_error(3, [], None)  # once
        assert got == [signal.SIGUSR1]
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # no Tune handler (a fit off the main thread): no signal,
        TrackingWatch().on_trial_error(4, [], None)  # which would have ended the process
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_mlflow_not_answering_at_a_campaigns_end_is_one_line_saying_how_to_resume(mlflow_at):
    """The same run's driver then died in finish_campaign -> _log_parent with a traceback and no resume hint."""
    from mlflow.exceptions import MlflowException

    from pbp.config import load_config
    from pbp.train.tracking import TrackingUnavailableError
    from pbp.tune.campaign import _tracking_lost_says_resume
    from pbp.tune.config import TuneConfig

    from ..conftest import REPO

    cfg = load_config(TuneConfig, REPO / "configs/tune/tiny.yaml", ["name=c7"])
    uri = mlflow_at(live=False)
    hint = "campaign c7 stopped without its report and parent run: `pbp tune --resume c7` continues it"
    with pytest.raises(TrackingUnavailableError, match=f"MLflow at {uri} does not answer"), \
            _tracking_lost_says_resume(cfg, check=True):  # fmt: skip
        raise AssertionError("not reached: failed trials and MLflow down are said before the report")
    with pytest.raises(TrackingUnavailableError) as e, _tracking_lost_says_resume(cfg, check=False):
        raise MlflowException("API request to endpoint ... failed: [Errno 111] Connection refused")
    assert hint in str(e.value) and "Traceback" not in str(e.value)
    mlflow_at(live=True)
    with pytest.raises(ValueError, match="something else"), _tracking_lost_says_resume(cfg, check=True):
        raise ValueError("something else")  # any other error is not MLflow's: it goes on as it was


def test_a_best_trial_whose_model_mlflow_did_not_take_is_logged_from_storage(stack_env, tmp_path):
    """The chaos run's resumed campaign printed `pbp registry register PARENT` for a best trial whose model MLflow
    never took (its trial ended during the outage): the register failed with 'Failed to download artifacts'."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pbp.finetune.export import TaskInfo, save_finetuned
    from pbp.model import ModelConfig, ProteinBERT
    from pbp.model.finetune import FinetuneModel, TaskKind
    from pbp.train.tracking import MODEL_LOGGED_TAG, configure_mlflow
    from pbp.tune.campaign import _copy_best_model

    tiny = ModelConfig(n_annotations=8, d_local=8, d_global=16, n_blocks=1, n_heads=2, d_key=4)
    info = TaskInfo(TaskKind.NUMERIC, seq_column="sequence")
    stored = save_finetuned(FinetuneModel(ProteinBERT(tiny), info.spec).eval(), info, tmp_path / "final_model",
                            {"run_name": "trial"})  # fmt: skip
    client = MlflowClient(configure_mlflow())
    exp = mlflow.set_experiment(f"tests-best-model-{os.getpid()}").experiment_id
    parent = client.create_run(exp).info.run_id
    child = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id  # no model logged
    assert _copy_best_model(client, child, parent, str(stored))
    assert client.get_run(child).data.tags[MODEL_LOGGED_TAG] == "true"
    assert {a.path for a in client.list_artifacts(parent, "best_model")} >= {"best_model/MLmodel"}
    loaded = mlflow.pyfunc.load_model(f"runs:/{child}/model")
    assert loaded.metadata.get_input_schema().input_names() == ["sequence"]  # the model's own column
    lost = client.create_run(exp).info.run_id
    assert not _copy_best_model(client, lost, parent, str(tmp_path / "nowhere"))  # said in a warning, not raised


def test_a_fit_the_watch_interrupted_ends_in_one_line_saying_mlflow_is_lost_and_marks_nothing(monkeypatch):
    """`_fit`'s side of the watch: Tune's "interrupted" (which a Ctrl-C also gives) with the watch's verdict becomes
    the MLflow line with the resume command; without a verdict it stays an interruption. MLflow is down, so nothing
    is marked (each mark would wait on it and print a warning)."""
    import logging
    from types import SimpleNamespace

    from pbp.config import load_config
    from pbp.train import tracking
    from pbp.train.tracking import TrackingUnavailableError
    from pbp.tune import campaign
    from pbp.tune.config import TuneConfig
    from pbp.tune.progress import TrackingWatch

    from ..conftest import REPO

    cfg = load_config(TuneConfig, REPO / "configs/tune/tiny.yaml", ["name=c8"])
    marked: list[str] = []
    monkeypatch.setattr(tracking, "mark_family_unfinished", lambda run_id, status: marked.append(status))
    monkeypatch.setattr(campaign, "_release_placement_groups", lambda: None)

    def tuner_with(lost: str):
        watch = TrackingWatch()
        watch.lost = lost

        def fit():
            logging.getLogger("ray.tune.tune").warning("Experiment has been interrupted, but the most recent state "
                                                      "was saved.\nResume experiment with: Tuner.restore(...)")  # fmt: skip
            return []

        config = SimpleNamespace(callbacks=[watch])
        return SimpleNamespace(fit=fit, _local_tuner=SimpleNamespace(get_run_config=lambda: config))

    with pytest.raises(TrackingUnavailableError, match=r"MLflow at http://m:5000 does not answer \(refused\); "
                       r"campaign c8 stopped without its report and parent run: `pbp tune --resume c8`"):  # fmt: skip
        campaign._fit(tuner_with("MLflow at http://m:5000 does not answer (refused)"), cfg, "p" * 32, False)
    assert marked == []
    with pytest.raises(KeyboardInterrupt, match="campaign c8 stopped"):  # a Ctrl-C: the parent run is marked
        campaign._fit(tuner_with(""), cfg, "p" * 32, False)
    assert marked == ["KILLED"]

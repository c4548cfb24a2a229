"""``pbp.stack.jobs.stop_submitted``'s answer when the Jobs API falls silent or the jobs end (no stack needed: the
API's answers are stood in, a fault the real server does not produce on cue)."""

from __future__ import annotations

import requests

from pbp.stack import jobs

JOB = {"submission_id": "pbp-finetune-x", "status": "RUNNING", "entrypoint": "python jobs/finetune.py"}
DRIVER = {"submission_id": None, "job_id": "03000000", "status": "RUNNING", "entrypoint": "pbp tune"}


def _stand_in(monkeypatch, answers: list) -> list[str]:
    stopped: list[str] = []
    monkeypatch.setattr(jobs, "_api", lambda state_dir: ("http://127.0.0.1:1", {}))
    ok = requests.Response()
    ok.status_code = 200
    monkeypatch.setattr(requests, "post", lambda url, **kw: stopped.append(url) or ok)
    monkeypatch.setattr(jobs, "listed_jobs", lambda state_dir: answers.pop(0) if len(answers) > 1 else answers[0])
    return stopped


def test_a_silent_jobs_api_leaves_every_job_as_not_known_to_have_ended(monkeypatch, tmp_path):
    """`live_jobs` reads a silent API as "nothing runs": taken for the answer after a stop, `pbp stack down --force`
    said the jobs had stopped and dropped the line that they were killed."""
    stopped = _stand_in(monkeypatch, [None])
    assert jobs.stop_submitted(tmp_path, [JOB, DRIVER], wait_s=0.2) == [JOB, DRIVER]
    assert stopped == ["http://127.0.0.1:1/api/jobs/pbp-finetune-x/stop"]  # the driver has no Jobs API stop


def test_stack_down_refuses_when_the_heads_jobs_api_is_silent(monkeypatch, tmp_path, capsys):
    """A Ray head that runs but whose Jobs API is silent read as "no job runs", and the stack went down under them."""
    from pbp.cli.main import main

    monkeypatch.setattr(jobs, "listed_jobs", lambda state_dir: None)
    monkeypatch.setattr(jobs, "head_running", lambda state_dir: True)
    assert main(["stack", "down", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot tell whether jobs run on this stack's Ray cluster" in err and "pass --force" in err
    monkeypatch.setattr(jobs, "head_running", lambda state_dir: False)  # Ray not running: nothing to lose
    assert main(["stack", "down", "--state-dir", str(tmp_path)]) == 0


def test_a_stopped_job_that_ended_is_not_left_and_a_running_driver_is(monkeypatch, tmp_path):
    _stand_in(monkeypatch, [[JOB, DRIVER], None, [DRIVER]])  # still running, then a silent answer, then ended
    assert jobs.stop_submitted(tmp_path, [JOB, DRIVER], wait_s=30) == [DRIVER]

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import pbp
from pbp.cli.main import main

from .conftest import REPO


def _pbp(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("pbp") or str(__import__("pathlib").Path(sys.executable).with_name("pbp"))
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_console_script_help_and_version():
    help_ = _pbp("--help")
    assert help_.returncode == 0
    for cmd in ("version", "model", "bench"):
        assert cmd in help_.stdout
    version = _pbp("version")
    assert version.returncode == 0 and version.stdout.strip() == pbp.__version__


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: pbp" in capsys.readouterr().out


def test_model_info_prints_json(capsys):
    assert main(["model", "info", str(REPO / "configs/model/base.yaml")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 15_981_321
    assert info["local_features_per_residue"] == 1562
    assert info["global_features_per_protein"] == 15599


def test_model_info_with_overrides_and_errors(capsys):
    assert main(["model", "info", str(REPO / "configs/model/tiny.yaml"), "n_blocks=3"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["n_blocks"] == 3
    assert main(["model", "info", str(REPO / "configs/model/tiny.yaml"), "n_blockz=3"]) == 2
    assert "unknown key 'n_blockz'" in capsys.readouterr().err
    assert main(["model", "info", "no/such.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_a_file_argument_that_cannot_be_read_is_named_without_a_traceback(tmp_path, capsys):
    """A folder or an unreadable file given as input raised IsADirectoryError / PermissionError with a traceback;
    a YAML key given twice was silently the last one; a config in Latin-1 failed without naming the file."""
    assert main(["data", "build", "--fasta", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"pbp: error: {tmp_path}: Is a directory"
    twice = tmp_path / "twice.yaml"
    twice.write_text("n_blocks: 2\nd_local: 32\nn_blocks: 3\n")
    assert main(["model", "info", str(twice)]) == 2
    assert "key 'n_blocks' given twice (lines 1 and 3)" in capsys.readouterr().err
    merged = tmp_path / "merged.yaml"  # merge keys, whose entries a mapping overrides, are no repeated keys
    merged.write_text("base: &b {n_blocks: 2, d_local: 32}\nmid: &m {<<: *b, n_blocks: 4}\nmodel:\n  <<: *m\n"
                      "  d_local: 16\n")  # fmt: skip
    assert main(["model", "info", str(merged)]) == 0  # its model section
    assert {"n_blocks": 4, "d_local": 16}.items() <= json.loads(capsys.readouterr().out)["model"].items()
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("# caf\u00e9\nn_blocks: 2\n".encode("latin-1"))
    assert main(["model", "info", str(latin)]) == 2
    assert f"{latin}:1: not UTF-8 text (byte 0xe9)" in capsys.readouterr().err
    utf16 = tmp_path / "utf16.yaml"  # what Windows' Notepad saves as "Unicode"
    utf16.write_bytes("# caf\u00e9\nn_blocks: 3\n".encode("utf-16"))
    assert main(["model", "info", str(utf16)]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["n_blocks"] == 3


def test_bench_model_reports_fraction_of_a_measured_peak(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench", "model", "--config", str(REPO / "configs/model/tiny.yaml"), "--seq-len", "64",
            "--batch-size", "2", "--seconds", "0.2", "--dtypes", "fp32", "--json", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())["results"][0]
    assert res["dtype"] == "fp32" and res["steps"] >= 3
    assert res["matmul_peak_flops_per_s"] > 0
    assert res["fraction_of_peak"] == pytest.approx(res["model_flops_per_s"] / res["matmul_peak_flops_per_s"])
    assert "of peak" in capsys.readouterr().out


def test_bench_rejects_unknown_dtype(capsys):
    assert main(["bench", "model", "--dtypes", "fp8"]) == 2
    assert "unknown dtype 'fp8'" in capsys.readouterr().err


def test_data_build_progress_in_a_log_file_is_whole_lines(capsys, monkeypatch):
    """Not a terminal (a submitted job, CI, `> build.log`): a line per phase, not tqdm's carriage returns."""
    from pbp.cli.data_cmds import _progress
    from pbp.console import LineProgress

    make, bars = _progress(True, tty=False)
    update = make("reading", None)
    update(40_000)
    update(60_000)
    monkeypatch.setattr(LineProgress, "EVERY_S", 0.0)
    make("writing shards", 3)(2)  # closes "reading"; an interval passed: a progress line
    bars[-1].close()
    bars[-1].close()  # closing twice says it once
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert re.fullmatch(r"reading: 100,000 rec in \d+\.\d s", lines[0]), lines
    assert re.fullmatch(r"writing shards: 2/3 shard \(\d+ s, [\d,]+/s, ETA \d+ s\)", lines[1]), lines
    assert re.fullmatch(r"writing shards: 2/3 shard in \d+\.\d s", lines[2]) and len(lines) == 3, lines
    make, bars = _progress(False, tty=False)  # --no-progress: nothing
    make("reading", None)(5)
    bars[-1].close()
    assert capsys.readouterr().err == ""


def test_jobs_list_of_an_empty_cluster_says_so():
    from pbp.cli.submit_cmds import jobs_table

    assert jobs_table([], "http://127.0.0.1:8265") == (
        "no submitted jobs on the cluster at http://127.0.0.1:8265 (a restarted cluster forgets its jobs)"
    )


def test_jobs_list_shows_submitted_jobs_and_counts_the_drivers_that_connected_directly():
    """Ray lists every driver as a job; a direct one (a `pbp tune` run against the cluster) has no submission id
    and no log to fetch: `pbp jobs logs <its id>` failed with a traceback. It is counted, and listed with --all."""
    from types import SimpleNamespace

    from pbp.cli.submit_cmds import jobs_table

    def job(sid, jid, t, entry):
        return SimpleNamespace(submission_id=sid, job_id=jid, status=SimpleNamespace(name="SUCCEEDED"),
                               start_time=t, end_time=t + 5000, entrypoint=entry)  # fmt: skip

    jobs = [
        job(None, "09000000", 1_000, "pbp tune --config c.yaml"),
        job("pbp-tune-x", "0a000000", 2_000, "python jobs/tune.py"),
    ]
    table = jobs_table(jobs, "http://h:1")
    assert "pbp-tune-x" in table and "09000000" not in table
    assert table.endswith("1 submitted job(s) on http://h:1; `pbp jobs logs ID` shows one's output; "
                          "1 driver(s) connected directly (--all lists them)")  # fmt: skip
    every = jobs_table(jobs, "http://h:1", drivers=True)
    assert "09000000 (direct)" in every and "pbp-tune-x" in every
    assert every.endswith("1 submitted job(s) and 1 driver(s) connected directly (marked: no log to fetch) on "
                          "http://h:1; `pbp jobs logs ID` shows a job's output")  # fmt: skip
    assert jobs_table(jobs[:1], "http://h:1").endswith("; 1 driver(s) connected directly (--all lists them)")


def test_mlflow_not_answering_is_said_as_such_by_the_registry_and_model_loading(monkeypatch, capsys, tmp_path):
    """Before: 'the MLflow server refused a request (INTERNAL_ERROR): API request to ... failed with exception
    HTTPConnectionPool(...)': the server had refused nothing, it was not running."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("PBP_STACK_DIR", str(tmp_path / "no-stack"))
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">a\nMKV\n")
    want = f"MLflow at {dead} does not answer (connection refused): start it (`pbp stack up` for the local stack)"
    for argv in (
        ["registry", "list"],
        ["registry", "list", "stab"],
        ["registry", "promote", "stab", "--version", "1"],
        ["predict", "--model", "models:/stab@champion", "--input", str(fasta), "--out", str(tmp_path / "p")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert want in err and "INTERNAL_ERROR" not in err and "HTTPConnectionPool" not in err, (argv, err)


def test_an_mlflow_error_that_is_not_a_dead_server_keeps_its_words():
    from mlflow.exceptions import MlflowException

    from pbp.train.tracking import unanswered

    assert unanswered(MlflowException("Registered Model with name=x not found")) is None
    assert unanswered(MlflowException("... Read timed out. (read timeout=120)")) is not None


def test_a_ray_cluster_that_does_not_answer_is_said_in_seconds(monkeypatch, capsys, tmp_path):
    """Before: `pbp finetune` with the head down waited in Ray's connect loop for minutes, a warning every few
    seconds; `pbp submit` and `pbp jobs` ended in tracebacks."""
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PBP_STACK_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{port}")
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):  # set by an earlier test's in-process stack client
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO)  # the tiny config's task files
    t0 = time.monotonic()
    assert main(["finetune", "--config", "configs/finetune/tiny.yaml", "tracking.enabled=false",
                 f"checkpoint.storage_path={tmp_path / 'runs'}", "--address", f"127.0.0.1:{port}"]) == 2  # fmt: skip
    assert (
        f"the Ray cluster at 127.0.0.1:{port} does not answer (Connection refused): start it" in capsys.readouterr().err
    )
    for argv in (["submit", "smoke"], ["jobs", "list"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert (
            f"the Ray cluster's Jobs API at http://127.0.0.1:{port} does not answer" in err and "Traceback" not in err
        )
    assert time.monotonic() - t0 < 60


def test_output_into_a_pipe_closed_early_ends_quietly(monkeypatch, capsys):
    """`pbp ... | head`: BrokenPipeError is an OSError without a file name, which must not reach the clause that
    re-raises those."""
    import pbp.cli.main as cli_main

    real = cli_main.build_parser

    def boom(_args):
        raise BrokenPipeError(32, "Broken pipe")

    def parser():
        p = real()
        p._subparsers._group_actions[0].choices["version"].set_defaults(func=boom)  # type: ignore[union-attr]
        return p

    monkeypatch.setattr(cli_main, "build_parser", parser)
    assert main(["version"]) == 0
    assert capsys.readouterr().err == ""


@contextlib.contextmanager
def _jobs_api(status: int = 200):
    """A stand-in Ray Jobs API on a free port (the version check and an empty job list, or ``status`` with Ray's
    auth refusal) -> (its URL, the paths it was asked for)."""
    import http.server
    import threading

    import ray

    seen: list[str] = []

    class JobsApi(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            seen.append(f"auth:{self.headers.get('Authorization', '')}")
            ok = json.dumps({"ray_version": ray.__version__} if self.path == "/api/version" else [])
            body = (ok if status == 200 else "Forbidden: Invalid authentication token").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JobsApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()


def test_address_wins_over_the_shells_ray_address(monkeypatch, capsys, tmp_path):
    """Ray lets RAY_ADDRESS override the address its job client is given: `pbp jobs ... --address A` acted on
    RAY_ADDRESS's cluster (a stop could hit the wrong one). A stand-in Jobs API answers on A; RAY_ADDRESS names a
    port nothing listens on."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("PBP_STACK_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{dead}")
    with _jobs_api() as (here, seen):
        assert main(["jobs", "list", "--address", here]) == 0, capsys.readouterr().err
        assert f"no submitted jobs on the cluster at {here}" in capsys.readouterr().out
        assert "/api/version" in seen and "/api/jobs/" in seen, seen
        assert os.environ["RAY_ADDRESS"] == f"http://127.0.0.1:{dead}" and "RAY_API_SERVER_ADDRESS" not in os.environ


def test_a_refused_token_is_one_line_naming_the_token_pbp_sent(monkeypatch, capsys, tmp_path):
    """Before: a 28-line traceback ending in AuthenticationError, whose advice named the file the token was in."""
    monkeypatch.setenv("PBP_STACK_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-this-clusters")
    with _jobs_api(status=403) as (here, _):
        assert main(["jobs", "list", "--address", here]) == 2
    err = capsys.readouterr().err
    assert f"no access to the Ray cluster's Jobs API at {here}: " in err and "Traceback" not in err, err
    assert "(pbp sent the token RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH gave); give that cluster's token in" in err


@pytest.mark.parametrize("status", [404, 500])
def test_an_address_that_is_not_a_ray_jobs_api_is_said_as_such(monkeypatch, capsys, tmp_path, status):
    """`pbp submit --address <MLflow's URL>` ended in `HTTPError 500` (a traceback); it names what to give."""
    monkeypatch.setenv("PBP_STACK_DIR", str(tmp_path / "no-stack"))
    with _jobs_api(status=status) as (here, _):
        assert main(["jobs", "list", "--address", here]) == 2
    err = capsys.readouterr().err
    assert f"{here} does not answer as a Ray Jobs API (" in err and "give the cluster dashboard's address" in err, err
    assert "Traceback" not in err


def test_an_override_without_a_value_is_named_as_such(capsys):
    """`pbp submit pretrain --config X maxsteps` said only 'unrecognized arguments: maxsteps'."""
    with pytest.raises(SystemExit) as e:
        main(["submit", "pretrain", "--config", "configs/pretrain/tiny.yaml", "maxsteps"])
    assert e.value.code == 2
    assert "maxsteps: a config override is KEY=VALUE (e.g. max_steps=100)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an option no command has stays argparse's own message
        main(["submit", "pretrain", "--config", "configs/pretrain/tiny.yaml", "--nope"])
    assert "unrecognized arguments: --nope" in capsys.readouterr().err


def test_the_stacks_token_is_not_sent_to_another_cluster_even_from_a_stack_env_shell(tmp_path):
    """`eval "$(pbp stack env)"` exports RAY_AUTH_MODE=token and the stack's RAY_AUTH_TOKEN_PATH; Ray's job client
    adds the token that path names to every request, so `pbp jobs list --address OTHER` sent the stack's token to
    OTHER although pbp's own headers left it out. Now Ray's own lookup finds only the user's token for OTHER
    (~/.ray/auth_token here), or none, which Ray refuses before any request. Subprocesses: Ray's token loader is one
    per process."""
    from pbp.stack.state import RAY_TOKEN_FILE, ServiceRecord, StackState

    stack = tmp_path / "stack"
    state = StackState(state_dir=str(stack))
    state.services = {"seaweedfs": ServiceRecord(ports={"s3": 1}), "mlflow": ServiceRecord(ports={"http": 2}),
                      "ray-head": ServiceRecord(ports={"gcs": 3, "dashboard": 4})}  # not the address asked  # fmt: skip
    state.save()
    (stack / RAY_TOKEN_FILE).write_text("stack-secret-token\n")
    env = {**os.environ, "PBP_STACK_DIR": str(stack), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(stack / RAY_TOKEN_FILE), "HOME": str(tmp_path)}  # fmt: skip
    env.pop("RAY_AUTH_TOKEN", None)
    with _jobs_api() as (other, seen):
        argv = [sys.executable, "-m", "pbp.cli.main", "jobs", "list", "--address", other]
        res = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "couldn't find an authentication token" in res.stderr, res.stderr
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("users-own-token\n")  # the other cluster's, where Ray looks
        res = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    sent = [s for s in seen if s.startswith("auth:")]
    assert sent and all(s == "auth:Bearer users-own-token" for s in sent), sent


def test_pbp_debug_keeps_the_traceback_of_an_error_said_in_one_line(monkeypatch, capsys):
    """A ValueError may be a bug too: with PBP_DEBUG=1 (a job's log, a bug report) it is raised with its traceback."""
    argv = ["model", "info", "configs/model/tiny.yaml", "n_blocks=0"]
    monkeypatch.chdir(REPO)
    assert main(argv) == 2 and "pbp: error:" in capsys.readouterr().err
    monkeypatch.setenv("PBP_DEBUG", "1")
    with pytest.raises(ValueError):
        main(argv)


def test_a_gcs_address_in_ray_address_is_not_taken_for_the_local_stacks_jobs_api(monkeypatch, capsys, tmp_path):
    """`RAY_ADDRESS=10.9.9.9:6379 pbp submit smoke` (a remote cluster's GCS) went to the local stack's Jobs API."""
    monkeypatch.setenv("PBP_STACK_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")
    assert main(["jobs", "list"]) == 2
    err = capsys.readouterr().err
    assert "RAY_ADDRESS=10.9.9.9:6379 is a cluster's GCS address; pbp submit and pbp jobs talk to its Jobs API" in err


def test_an_interrupted_build_says_what_it_left_and_what_to_do(monkeypatch, capsys, tmp_path):
    """A chaos run: Ctrl-C of `pbp data build` into s3:// said only `pbp: interrupted`, leaving 70 shards and no
    manifest there."""
    from pbp.data import shards

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "build", interrupted)
    fasta = tmp_path / "x.fasta"
    fasta.write_text(">P1\nMKV\n")
    assert main(["data", "build", "--fasta", str(fasta), "--out", "s3://pbp-data/x/v1/", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("pbp: interrupted: the build into s3://pbp-data/x/v1/ stopped before its manifest"), err
    assert "--force" in err

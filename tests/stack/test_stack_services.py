"""The local stack against real services: S3 through boto3/s3fs/pyarrow, MLflow over HTTP with auth, Ray jobs
with token auth, crash recovery without data loss."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from pbp import submit
from pbp.cli.main import main
from pbp.stack import manager, procs
from pbp.stack.state import StackState

from ..conftest import REPO, pbp_env

pytestmark = pytest.mark.timeout(600)


def test_all_services_healthy_and_on_loopback(stack_dir):
    state, rows = manager.status(stack_dir)
    # Prometheus too: `make test` installs it (CI), and a missing one fails here rather than skipping.
    assert [r.name for r in rows] == ["seaweedfs", "mlflow", "ray-head", "prometheus", "ray-worker-1", "ray-worker-2"]
    assert all(r.healthy for r in rows), [(r.name, r.detail) for r in rows]
    assert state.s3_endpoint.startswith("http://127.0.0.1:")
    assert state.mlflow_uri.startswith("http://127.0.0.1:")


def test_stack_ports_are_outside_the_kernels_ephemeral_range(stack_dir):
    """Kernel-chosen ports (any process's bind(0) or outgoing connection) can never take a stack port between its
    allocation and the service's own bind (a CI run lost a Ray worker's metrics port that way)."""
    state, _ = manager.status(stack_dir)
    eph = procs.ephemeral_range()
    ports = [p for rec in state.services.values() for p in rec.ports.values()]
    assert len(ports) == len(set(ports)) > 20
    assert not [p for p in ports if p in eph or p + 10000 in eph or 10002 <= p < 20000]


def test_port_candidates_follow_the_ephemeral_range(tmp_path):
    (tmp_path / "range").write_text("20000\t40000\n")
    narrow = procs.ephemeral_range(str(tmp_path / "range"))
    assert narrow == range(20000, 40001)
    cands = procs.candidate_ports(ephemeral=narrow)
    assert cands and all(p not in narrow and p + 10000 not in narrow and not 10002 <= p < 20000 for p in cands)
    assert procs.ephemeral_range(str(tmp_path / "missing")) == range(32768, 61000)


def test_prometheus_scrapes_every_ray_node_through_rays_service_discovery(stack_dir):
    """Prometheus finds each node's metrics agent in the file Ray's head writes, and stores Ray's metrics."""
    from ..promql import query_range

    state, _ = manager.status(stack_dir)
    metrics_ports = {rec.ports["metrics"] for name, rec in state.services.items() if name.startswith("ray-")}
    deadline, up = time.time() + 90, []
    while time.time() < deadline:
        with urllib.request.urlopen(f"{state.prometheus_url}/api/v1/targets", timeout=10) as r:
            targets = json.load(r)["data"]["activeTargets"]
        up = [t for t in targets if t["labels"]["job"] == "ray" and t["health"] == "up"]
        if {int(t["labels"]["instance"].rsplit(":", 1)[1]) for t in up} >= metrics_ports:
            break
        time.sleep(2)
    assert {int(t["labels"]["instance"].rsplit(":", 1)[1]) for t in up} >= metrics_ports, up
    assert query_range(state.prometheus_url, "ray_node_cpu_count", time.time() - 600)


def test_credentials_are_generated_private_and_not_in_stack_json(stack_dir):
    for name in ("secrets.json", "ray_token", "seaweedfs-s3.json"):
        assert stat.S_IMODE((stack_dir / name).stat().st_mode) == 0o600, name
    secrets = json.loads((stack_dir / "secrets.json").read_text())
    state_text = (stack_dir / "stack.json").read_text()
    for value in (secrets["s3_secret_key"], secrets["mlflow_admin_password"]):
        assert value not in state_text
        for svc in json.loads(state_text)["services"].values():
            assert value not in " ".join(svc["cmd"])  # not on any command line (visible in ps)
    assert secrets["mlflow_admin_password"] not in ("password1234", "")


def test_the_state_dir_and_everything_the_services_wrote_there_is_private(stack_dir, endpoints):
    """Before: the MLflow auth database and SeaweedFS' object files were 0644 in 0755 directories. Now every
    directory is 0700 (nothing inside is reachable by other users) and the files are 0600, except those SeaweedFS
    creates later with a mode of its own (its volume-info .vif files, 0644 inside the 0700 directories)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoints.s3_endpoint, aws_access_key_id=endpoints.s3_access_key,
                      aws_secret_access_key=endpoints.s3_secret_key, region_name="us-east-1")  # fmt: skip
    s3.put_object(Bucket="pbp-data", Key="tests/private.txt", Body=b"x" * 1000)  # make SeaweedFS write files
    for f in ("data/mlflow/basic_auth.db", "data/mlflow/mlflow.db", "logs/mlflow.log", "logs/ray-head.log",
              "stack.json", "secrets.json"):  # fmt: skip
        assert stat.S_IMODE((stack_dir / f).stat().st_mode) == 0o600, f
    loose = []
    for d, _dirs, files in os.walk(stack_dir):
        if stat.S_IMODE(os.stat(d).st_mode) != 0o700:
            loose.append(d)
        for f in files:
            p = os.path.join(d, f)
            if not p.endswith(".vif") and not os.path.islink(p) and stat.S_IMODE(os.stat(p).st_mode) & 0o077:
                loose.append(p)
    assert not loose, f"readable by other users: {loose[:10]}"


def test_object_roundtrip_with_boto3_s3fs_and_pyarrow(endpoints):
    import s3fs

    bucket = endpoints.buckets["data"]
    s3 = endpoints.boto3_client()
    s3.put_object(Bucket=bucket, Key="tests/hello.txt", Body=b"hello pbp")
    assert s3.get_object(Bucket=bucket, Key="tests/hello.txt")["Body"].read() == b"hello pbp"
    fs = s3fs.S3FileSystem(**endpoints.s3fs_options())
    assert fs.cat(f"{bucket}/tests/hello.txt") == b"hello pbp"
    with endpoints.pyarrow_fs().open_input_stream(f"{bucket}/tests/hello.txt") as f:
        assert f.read() == b"hello pbp"
    assert sorted(endpoints.buckets.values()) == sorted(b["Name"] for b in s3.list_buckets()["Buckets"])


def test_s3_refuses_unknown_keys(endpoints):
    import boto3
    from botocore.exceptions import ClientError

    bad = boto3.client(
        "s3", endpoint_url=endpoints.s3_endpoint, aws_access_key_id="nobody", aws_secret_access_key="wrong",
        region_name="us-east-1",
    )  # fmt: skip
    with pytest.raises(ClientError):
        bad.list_buckets()


def test_seaweedfs_other_ports_refuse_whoever_lacks_the_stacks_keys(stack_dir, endpoints):
    """Only the S3 gateway checked a key: the filer's HTTP port listed, read and took objects from anyone on the
    machine, and its gRPC ports served any client. Now HTTP wants a JWT only the components mint (401) and gRPC a
    certificate of the stack's own CA (the TLS handshake fails)."""
    import grpc

    s3 = endpoints.boto3_client()
    s3.put_object(Bucket=endpoints.buckets["data"], Key="private/x.txt", Body=b"secret")
    ports = StackState.load(stack_dir).services["seaweedfs"].ports
    filer = f"http://127.0.0.1:{ports['filer']}"
    for method, path in [("GET", "/buckets/?limit=5"), ("GET", f"/buckets/{endpoints.buckets['data']}/private/x.txt"),
                         ("PUT", f"/buckets/{endpoints.buckets['data']}/planted.txt")]:  # fmt: skip
        req = urllib.request.Request(filer + path, data=b"x" if method == "PUT" else None, method=method,
                                     headers={"Accept": "application/json"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401, (method, path, e.value.code)
    # The volume servers: even with a file id the master hands anyone, a write or read without the JWT is refused.
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['master']}/dir/assign", timeout=10) as r:
        fid = json.loads(r.read())["fid"]
    volume = f"http://127.0.0.1:{ports['volume']}/{fid}"
    for method in ("PUT", "GET"):
        req = urllib.request.Request(volume, data=b"x" if method == "PUT" else None, method=method)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401, (method, e.value.code)
    for name in ("master_grpc", "volume_grpc", "filer_grpc", "s3_grpc"):
        channel = grpc.insecure_channel(f"127.0.0.1:{ports[name]}")
        with pytest.raises(grpc.FutureTimeoutError):  # a plain client never gets a channel: TLS is required
            grpc.channel_ready_future(channel).result(timeout=3)
        channel.close()
    assert s3.get_object(Bucket=endpoints.buckets["data"], Key="private/x.txt")["Body"].read() == b"secret"
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=endpoints.buckets["data"], Key="planted.txt")
    sec = stack_dir / "security.toml"
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600 and "[grpc.filer]" in sec.read_text()
    assert not (stack_dir / "tls" / "ca.key").exists()  # the CA's key signed once and was dropped


def test_mlflow_run_over_http_with_auth(endpoints, monkeypatch):
    import mlflow

    url = f"{endpoints.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=10)
    assert e.value.code == 401
    for k, v in endpoints.mlflow_env().items():
        monkeypatch.setenv(k, v)
    mlflow.set_tracking_uri(endpoints.mlflow_uri)
    mlflow.set_experiment("pbp-tests")
    with mlflow.start_run() as run:
        mlflow.log_param("p", 1)
        mlflow.log_metric("m", 0.5, step=3)
        mlflow.log_text("artifact body", "notes.txt")
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params["p"] == "1" and got.data.metrics["m"] == 0.5
    # The artifact went through MLflow's proxy into the S3 bucket.
    keys = [o["Key"] for o in endpoints.boto3_client().list_objects_v2(Bucket=endpoints.buckets["mlflow"])["Contents"]]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/notes.txt") for k in keys)


def test_smoke_job_through_pbp_submit_sees_every_node(stack_env, capsys):
    assert main(["submit", "smoke", "--wait", "--timeout", "300"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("PBP_SMOKE "))
    summary = json.loads(line.removeprefix("PBP_SMOKE "))
    assert summary["ok"] and summary["nodes"] >= 3  # head + 2 workers
    assert {r["s3"] for r in summary["results"]} == {"ok"}
    # Re-submitting the finished job gets a new, related id; the runtime_env carries no secret.
    c = submit.client()
    jobs = {j.submission_id: j for j in c.list_jobs()}
    sid = next(s for s in jobs if s.startswith("pbp-smoke-default-"))
    env_vars = (jobs[sid].runtime_env or {}).get("env_vars", {})
    secrets = json.loads((stack_env / "secrets.json").read_text())
    assert not set(secrets.values()) & set(env_vars.values())
    assert set(env_vars) <= {"PBP_SUBMISSION_ID", "PYTHONUNBUFFERED", "PBP_GIT_COMMIT", "PBP_SUBMIT_DIR"}
    assert env_vars["PBP_SUBMIT_DIR"] == str(REPO)  # the local stack's job runs in the project it came from
    # Giving up following (--timeout, Ctrl-C) says the job keeps running and how to follow or stop it.
    assert main(["submit", "smoke", "--wait", "--timeout", "0"]) == 2
    err = capsys.readouterr().err
    again = re.search(
        r"pbp: error: (pbp-smoke-default-[\w-]+): still \w+ after 0s; it keeps running: `pbp jobs logs", err
    )
    assert again, err
    assert main(["jobs", "stop", again.group(1)]) == 0
    capsys.readouterr()
    assert main(["jobs", "list"]) == 0  # a table: the finished job with its status and how long it ran
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split() == ["id", "status", "started", "(UTC)", "ran", "entrypoint"]
    row = next(ln.split() for ln in listed if ln.startswith(sid + " "))
    assert row[1] == "SUCCEEDED" and row[5] == "s" and row[6:8] == ["python", "jobs/smoke.py"], row
    # An unknown job id is named (before: a RuntimeError traceback with the server's 404).
    for command in ("status", "logs", "stop"):
        assert main(["jobs", command, "no-such-job-1"]) == 2
        assert "no job 'no-such-job-1' on this cluster" in capsys.readouterr().err
    # A driver that connected directly (a `pbp` command run against the cluster) is a job to Ray, with no log to
    # fetch: it is counted, not listed, and asking for its log says what it is (before: a 400 traceback).
    code = "from pbp.train.launch import connect_ray\nconnect_ray()\n"
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ), check=True, capture_output=True, timeout=120)
    direct = next(j.job_id for j in c.list_jobs() if not j.submission_id)
    assert main(["jobs", "list"]) == 0
    out = capsys.readouterr().out
    assert direct not in out and re.search(r"; \d+ driver\(s\) connected directly \(--all lists them\)$", out.strip())
    assert main(["jobs", "list", "--all"]) == 0 and f"{direct} (direct)" in capsys.readouterr().out
    assert main(["jobs", "logs", direct]) == 2
    assert f"{direct} is a driver that connected directly" in capsys.readouterr().err


JOB_LINES = 300
PRINTER = (f"import time\nfor i in range({JOB_LINES}):\n    print(f'line {{i:03d}}', flush=True)\n"
           "    if i % 60 == 59: time.sleep(0.7)\n")  # fmt: skip


def test_following_a_job_streams_its_log_once_even_when_the_tail_drops(stack_env, capfd, monkeypatch):
    """`pbp jobs logs ID --follow` read the whole log again every 1-10 s (a day of pretraining: tens of MB per poll);
    it now streams it. A tail that drops is opened again and the replayed part skipped; where the websocket cannot
    be opened, the log is polled."""
    import shlex

    from ray.job_submission import JobSubmissionClient

    c = submit.client()
    whole_log_reads = []
    real_logs, real_tail = JobSubmissionClient.get_job_logs, JobSubmissionClient.tail_job_logs
    monkeypatch.setattr(JobSubmissionClient, "get_job_logs",
                        lambda self, sid: whole_log_reads.append(sid) or real_logs(self, sid))  # fmt: skip

    def follow() -> list[str]:
        sid = c.submit_job(entrypoint=f"python -c {shlex.quote(PRINTER)}")
        assert main(["jobs", "logs", sid, "--follow"]) == 0
        out, err = capfd.readouterr()
        assert "WebSocket closed" not in out + err  # Ray's INFO line when the tail ends
        return [ln for ln in out.splitlines() if ln.startswith("line ")]

    want = [f"line {i:03d}" for i in range(JOB_LINES)]
    assert follow() == want and whole_log_reads == []  # streamed: the whole log never fetched

    drops = []

    async def dropping_tail(self, sid):  # the fault: the connection drops after 2 chunks, once
        n = 0
        async for text in real_tail(self, sid):
            yield text
            n += 1
            if n == 2 and not drops:
                drops.append(sid)
                raise RuntimeError("WebSocket connection closed unexpectedly with close code 1006")

    monkeypatch.setattr(JobSubmissionClient, "tail_job_logs", dropping_tail)
    assert follow() == want and drops and whole_log_reads == []

    async def no_websocket(self, sid):  # a proxy that does not pass websockets
        raise RuntimeError("WSServerHandshakeError: 400, message='Invalid response status'")
        yield ""

    monkeypatch.setattr(JobSubmissionClient, "tail_job_logs", no_websocket)
    assert follow() == want and len(whole_log_reads) >= 1  # polled instead


def test_a_line_printed_on_a_worker_node_reaches_the_driver_once(stack_dir):
    """Before: every line reached the driver three times, once per local Ray node (each node's log monitor tailed
    the one session log dir the nodes share on this machine)."""
    import subprocess
    import sys

    code = (
        "import time\n"
        "from pbp.train.launch import connect_ray\n"
        "connect_ray()\n"
        "import ray\n"
        "@ray.remote(num_cpus=1, resources={'pbp-node-worker-1': 1})\n"
        "def f():\n"
        "    print('PBP-ONCE-' + 'TOKEN', flush=True)\n"
        "ray.get(f.remote())\n"
        "time.sleep(5)\n"  # the log monitor forwards lines within about a second
    )
    env = pbp_env(stack_dir)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (res.stdout + res.stderr).count("PBP-ONCE-TOKEN") == 1, res.stdout[-3000:]


def test_a_driver_releases_the_placement_groups_its_job_left_held(stack_env):
    """A campaign's safety net: a placement group that outlived its trial (a race in Ray Train's shutdown when Tune
    stops a trial) kept a CPU from every later run. The driver removes the ones its job still holds, and no other."""
    code = (
        "import time\n"
        "from pbp.train.launch import connect_ray, release_placement_groups\n"
        "connect_ray()\n"
        "import ray\n"
        "from ray.util.placement_group import placement_group\n"
        "pg = placement_group([{'CPU': 1}])\n"
        "ray.get(pg.ready(), timeout=120)\n"
        "time.sleep(1)\n"
        "before = ray.available_resources().get('CPU', 0)\n"
        "held = release_placement_groups()\n"
        "time.sleep(2)\n"
        "print('HELD', held == [pg.id.hex()], before, ray.available_resources().get('CPU', 0))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    m = re.search(r"HELD (\w+) ([\d.]+) ([\d.]+)", res.stdout)
    assert m and m.group(1) == "True", res.stdout[-2000:]
    assert float(m.group(3)) == float(m.group(2)) + 1  # its CPU free again


def test_job_submission_without_the_token_is_refused(stack_dir):
    from ray.job_submission import JobSubmissionClient

    state = StackState.load(stack_dir)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{state.ray_dashboard_url}/api/jobs/", timeout=10)
    assert e.value.code == 401
    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            if k.startswith("RAY_"):
                mp.delenv(k)
        with pytest.raises(Exception, match="(?i)401|unauthori|auth"):
            JobSubmissionClient(state.ray_dashboard_url).submit_job(entrypoint="echo should-not-run")


def test_up_on_a_running_stack_reports_it(stack_dir):
    messages: list[str] = []
    manager.up(stack_dir, log=messages.append)
    assert len(messages) == 6 and all("already running" in m for m in messages)


def test_up_restarts_a_service_an_older_pbp_started(stack_dir):
    """A stack started by the previous pbp kept running SeaweedFS without its new TLS/JWT and Ray's session in the old
    /tmp path through `pbp stack up` ("already running"), while Prometheus's rewritten config pointed elsewhere."""
    from pbp.stack.state import LAYOUT

    state = StackState.load(stack_dir)
    old_pid = state.services["prometheus"].pid
    state.services["prometheus"].layout = 0  # as stack.json has it from a pbp before layouts
    state.save()
    messages: list[str] = []
    manager.up(stack_dir, log=messages.append)
    restarted = [m for m in messages if "prometheus" in m]
    assert "started by an older pbp" in restarted[0] and "restarting" in restarted[0], messages
    state = StackState.load(stack_dir)
    assert state.services["prometheus"].layout == LAYOUT and state.services["prometheus"].pid != old_pid
    assert sum("already running" in m for m in messages) == 5


def test_killed_storage_is_reported_and_restored_with_its_data(stack_dir, endpoints):
    bucket = endpoints.buckets["data"]
    s3 = endpoints.boto3_client()
    s3.put_object(Bucket=bucket, Key="tests/survivor.txt", Body=b"still here")
    state = StackState.load(stack_dir)
    pid = state.services["seaweedfs"].pid
    os.killpg(pid, signal.SIGKILL)  # a crash, not a clean stop
    procs.stop_group(pid, grace=5)  # reap
    _, rows = manager.status(stack_dir)
    row = next(r for r in rows if r.name == "seaweedfs")
    assert not row.running and row.detail == "not running"
    assert next(r for r in rows if r.name == "mlflow").healthy  # the rest is untouched
    messages: list[str] = []
    manager.up(stack_dir, log=messages.append)
    assert any(m.strip().startswith("seaweedfs") and "started" in m for m in messages)
    assert sum("already running" in m for m in messages) == 5  # mlflow, ray-head, prometheus, two workers
    assert s3.get_object(Bucket=bucket, Key="tests/survivor.txt")["Body"].read() == b"still here"


def test_stack_down_refuses_while_a_driver_runs_on_the_cluster_naming_it(stack_dir, stack_env, capsys):
    """A chaos run: `pbp stack down` under a running fine-tuning job said only 'stopped 6 service(s)'; the job was
    gone after `pbp stack up`, its MLflow run left RUNNING, nothing said it had to be run again."""
    from pbp.stack.jobs import job_line, live_jobs

    code = "from pbp.train.launch import connect_ray\nimport time\nconnect_ray()\nprint('up', flush=True)\ntime.sleep(300)\n"
    driver = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "up"
        running = [job_line(j) for j in live_jobs(stack_dir)]
        assert any(line.startswith("driver ") and "(RUNNING)" in line for line in running), running
        capsys.readouterr()
        assert main(["stack", "down", "--state-dir", str(stack_dir)]) == 2  # refused: nothing stopped
        err = capsys.readouterr().err
        assert "job(s) still running on this stack's Ray cluster" in err and "pass --force" in err, err
        assert all(r.healthy for r in manager.status(stack_dir)[1])
    finally:
        driver.kill()
        driver.wait(timeout=30)


def test_stack_down_force_stops_submitted_jobs_first_so_their_mlflow_runs_end_killed(stack_dir, stack_env):
    """`pbp stack down --force` killed the running jobs with the stack, their MLflow runs left RUNNING for good. It
    now stops the submitted ones first, as `pbp jobs stop` does, and their drivers mark their runs KILLED (the stack
    itself is left up here: ``stop_submitted`` is what --force runs before stopping the services)."""
    import shlex

    from mlflow.tracking import MlflowClient

    from pbp.stack.jobs import live_jobs, stop_submitted
    from pbp.train.tracking import configure_mlflow

    name = f"down-force-{os.getpid()}"
    code = ("import time\nfrom pbp.train.launch import connect_ray\nfrom pbp.train.tracking import Tracker, "
            f"marked_if_unfinished\nconnect_ray()\nt = Tracker('pbp-tests-down', {name!r}, None)\n"
            f"print('run', t.run_id, flush=True)\nwith marked_if_unfinished(True, 'pbp-tests-down', {name!r}):\n"
            "    time.sleep(300)\n")  # fmt: skip
    c = submit.client()
    sid = c.submit_job(entrypoint=f"{sys.executable} -c {shlex.quote(code)}",
                       runtime_env={"env_vars": {"PBP_STACK_DIR": str(stack_dir)}})  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run := re.search(r"^run (\w+)$", c.get_job_logs(sid), re.M)):
        assert time.monotonic() < deadline and c.get_job_status(sid).name in ("PENDING", "RUNNING"), c.get_job_logs(sid)
        time.sleep(0.5)
    mine = [j for j in live_jobs(stack_dir) if j.get("submission_id") == sid]
    assert len(mine) == 1
    assert stop_submitted(stack_dir, mine) == []  # ended within the wait
    assert c.get_job_status(sid).name == "STOPPED"
    assert MlflowClient(configure_mlflow()).get_run(run.group(1)).info.status == "KILLED"
    assert all(r.healthy for r in manager.status(stack_dir)[1])

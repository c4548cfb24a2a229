"""Faults of the local stack: each gives a clear error naming the service and leaves other services and data
intact. Most use real processes; a dying service is simulated (the real ones cannot be made to crash on cue)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from pbp.cli.main import main
from pbp.stack import manager, services
from pbp.stack.endpoints import resolve
from pbp.stack.services import ServiceError, _bin
from pbp.stack.state import StackState, StackStateError

from ..conftest import pbp_env

pytestmark = pytest.mark.timeout(600)


def test_corrupt_state_file_is_named_and_data_left_alone(tmp_path, capsys):
    (tmp_path / "data" / "seaweedfs").mkdir(parents=True)
    (tmp_path / "data" / "seaweedfs" / "volume.dat").write_bytes(b"precious")
    (tmp_path / "stack.json").write_text("{ not json")
    with pytest.raises(StackStateError, match=r"stack.json: corrupt state file"):
        manager.up(tmp_path, log=lambda _m: None)
    assert main(["stack", "status", "--state-dir", str(tmp_path)]) == 2
    assert "corrupt state file" in capsys.readouterr().err
    assert (tmp_path / "data" / "seaweedfs" / "volume.dat").read_bytes() == b"precious"
    assert (tmp_path / "stack.json").read_text() == "{ not json"  # not overwritten


def test_missing_binary_is_named():
    with pytest.raises(ServiceError, match="no-such-binary-pbp: executable not found"):
        _bin("no-such-binary-pbp")


def test_service_dying_during_up_names_it_and_shows_its_log(tmp_path, monkeypatch):
    real_command = services.command

    def command(svc, *args, **kwargs):
        if svc.name == "seaweedfs":
            return ["sh", "-c", "echo 'weed: volume directory is corrupt'; exit 3"]
        return real_command(svc, *args, **kwargs)

    monkeypatch.setattr(manager, "command", command)
    try:
        with pytest.raises(ServiceError) as e:
            manager.up(tmp_path, workers=0, timeout=60, log=lambda _m: None)
        msg = str(e.value)
        assert msg.startswith("seaweedfs: exited with code 3 during start-up")
        assert "volume directory is corrupt" in msg
        state = StackState.load(tmp_path)
        assert state.services["seaweedfs"].pid is None
        assert (tmp_path / "secrets.json").exists()  # generated credentials are kept for the next try
        # The services that do not depend on storage came up and stay up.
        _, rows = manager.status(tmp_path)
        assert {r.name for r in rows if r.running} == {"mlflow", "ray-head", "prometheus"}
    finally:
        manager.down(tmp_path, log=lambda _m: None)


# ~50 s on 2 cores (a stack up, down and up twice more): `make test-slow`, for the default suite's time
@pytest.mark.slow
def test_port_in_use_names_the_service_and_leaves_the_rest_running(tmp_path):
    """MLflow finds its remembered port taken on restart: named error; storage, started before it, keeps running."""
    manager.up(tmp_path, workers=0, timeout=180, log=lambda _m: None)
    try:
        state = StackState.load(tmp_path)
        run_id = _log_run_and_register(tmp_path)
        manager.down(tmp_path, log=lambda _m: None)
        # Someone else takes MLflow's remembered port while the stack is down.
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", state.port("mlflow")))
        blocker.listen()
        try:
            with pytest.raises(ServiceError, match=rf"mlflow: port {state.port('mlflow')} \(http\).* is in use"):
                manager.up(tmp_path, timeout=180, log=lambda _m: None)
            _, rows = manager.status(tmp_path)
            assert next(r for r in rows if r.name == "seaweedfs").healthy  # started before, still fine
        finally:
            blocker.close()
        messages: list[str] = []
        manager.up(tmp_path, timeout=180, log=messages.append)  # once the port is free again, up completes
        assert any("seaweedfs" in m and "already running" in m for m in messages)
        # MLflow runs, artifacts and the registry survived down + up.
        client = _client(tmp_path)
        assert client.get_run(run_id).data.params["survives"] == "yes"
        assert client.get_model_version_by_alias("pbp-survival", "champion").run_id == run_id
    finally:
        manager.down(tmp_path, log=lambda _m: None)


def _client(state_dir):

    from mlflow.tracking import MlflowClient

    from pbp.stack.endpoints import resolve

    ep = resolve(state_dir, env={})
    os.environ.update(ep.mlflow_env())
    return MlflowClient(ep.mlflow_uri)


def _log_run_and_register(state_dir) -> str:
    client = _client(state_dir)
    exp = client.create_experiment("survival")
    run = client.create_run(exp)
    client.log_param(run.info.run_id, "survives", "yes")
    client.log_text(run.info.run_id, "x", "a.txt")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("pbp-survival")
    mv = client.create_model_version("pbp-survival", f"runs:/{run.info.run_id}/a.txt", run_id=run.info.run_id)
    client.set_registered_model_alias("pbp-survival", "champion", mv.version)
    return run.info.run_id


def test_a_port_held_on_another_address_is_not_free():
    """Ray's runtime env agent listens on the machine's address, not the node's 127.0.0.1: a second stack once took
    such a port (the first stack's worker agent on 192.0.2.2:22053) because it was free on 127.0.0.1."""
    import socket

    from pbp.stack import procs

    with socket.socket() as other:
        other.bind(("127.0.0.2", 0))  # another address of this machine (all of 127/8 is loopback on Linux)
        other.listen()
        port = other.getsockname()[1]
        assert not procs.port_is_free(port, "127.0.0.1")
    assert procs.port_is_free(port, "127.0.0.1")


def test_a_second_stack_runs_beside_the_first_on_other_ports(stack_dir, tmp_path):
    manager.up(tmp_path, workers=0, timeout=180, log=lambda _m: None)
    try:
        a, b = json.loads((stack_dir / "stack.json").read_text()), json.loads((tmp_path / "stack.json").read_text())
        ports_a = {p for s in a["services"].values() for p in s["ports"].values()}
        ports_b = {p for s in b["services"].values() for p in s["ports"].values()}
        assert not ports_a & ports_b
        assert all(r.healthy for r in manager.status(stack_dir)[1])
        assert all(r.healthy for r in manager.status(tmp_path)[1])
        # With two Ray instances on the machine, Ray's own processes that look their cluster up without an address
        # (Ray Train's placement-group cleaner, which frees a stopped trial's CPUs) must still find their own: before,
        # the lookup failed ("Found multiple active Ray instances"), the cleaner died and the CPUs stayed taken.
        code = (
            "from pbp.train.launch import connect_ray\n"
            "connect_ray()\n"
            "import ray\n"
            "@ray.remote(num_cpus=1, resources={'pbp-node-worker-1': 1})\n"
            "def look_up():\n"
            "    from ray.util.state import list_nodes\n"
            "    return len(list_nodes(limit=10))\n"
            "print('NODES', ray.get(look_up.remote()))\n"
        )
        env = pbp_env(stack_dir)
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stderr[-3000:]
        ray_nodes = sum(name.startswith("ray-") for name in a["services"])
        assert f"NODES {ray_nodes}" in res.stdout, res.stdout[-2000:]  # its own cluster's nodes, not the other's
    finally:
        stopped = manager.down(tmp_path, log=lambda _m: None)
    assert stopped == 4  # only its own services (storage, MLflow, Ray head, Prometheus)
    assert all(r.healthy for r in manager.status(stack_dir)[1])  # the first stack is untouched


def test_env_lines_quote_values_and_fail_without_a_stack(tmp_path, stack_dir, capsys):
    lines = manager.env_lines(stack_dir)
    assert any(ln.startswith("export AWS_ENDPOINT_URL=") for ln in lines)
    assert any(ln.startswith("export RAY_AUTH_TOKEN_PATH=") for ln in lines)
    state = StackState.load(stack_dir)
    assert state is not None and state.prometheus_url  # the test stack runs Prometheus (make test installs it)
    assert f"export PBP_PROMETHEUS_URL={state.prometheus_url}" in lines  # for Grafana's provisioned datasource
    # Ray's own split: RAY_ADDRESS the GCS (`ray status` refused an http URL there), RAY_API_SERVER_ADDRESS the Jobs
    # API (`ray job`, pbp submit); pbp reads both as Ray does.
    assert f"export RAY_ADDRESS={state.ray_gcs_address}" in lines
    assert f"export RAY_API_SERVER_ADDRESS={state.ray_dashboard_url}" in lines
    env = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    assert resolve(env=env).ray_address == state.ray_dashboard_url
    assert main(["stack", "env", "--state-dir", str(stack_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == lines
    with pytest.raises(StackStateError, match="no stack here"):
        manager.env_lines(tmp_path)


def test_the_shell_line_names_the_pbp_a_user_can_type(monkeypatch, tmp_path):
    """`pbp stack up` said eval "$(pbp stack env ...)", with no pbp on PATH after `make setup` (.venv/bin/pbp)."""
    import sys
    from pathlib import Path

    venv_bin = Path(sys.executable).parent
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(venv_bin.parent.parent)  # the project holding the venv
    assert manager.pbp_command() == f"{venv_bin.parent.name}/bin/pbp"  # .venv/bin/pbp
    monkeypatch.chdir(tmp_path)
    assert manager.pbp_command() == str(venv_bin / "pbp")
    monkeypatch.chdir(venv_bin)
    assert manager.pbp_command() == "./pbp"  # a bare `pbp` would be looked up on PATH
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")
    assert manager.pbp_command() == "pbp"
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")  # an install whose scripts live elsewhere
    assert manager.pbp_command() == "pbp"


def test_rays_session_dir_sits_in_a_folder_only_the_stacks_user_may_enter(tmp_path):
    """Ray makes its folders 0777 and accepts one that exists; in a guessable /tmp path another local user could
    create it before `pbp stack up`, or swap a job's unpacked code in it. It now sits in /tmp/pbp-UID-HASH (0700)."""
    import shutil
    import stat

    state = StackState(state_dir=str(tmp_path / "st"))
    parent = services.private_tmp(state)
    assert services.ray_temp_dir(state).startswith(parent + "/") and str(os.getuid()) in parent
    try:
        made = services.ensure_private_tmp(state)
        assert stat.S_IMODE(made.lstat().st_mode) == 0o700
        assert services.ensure_private_tmp(state) == made  # ours already: fine
        made.chmod(0o777)  # someone opened it (or made it so): refused, not used
        with pytest.raises(ServiceError, match=rf"{parent}: exists and is open to others \(mode 777\); refusing"):
            services.ensure_private_tmp(state)
        made.rmdir()
        made.symlink_to(tmp_path)  # a link planted in its place
        with pytest.raises(ServiceError, match=rf"{parent}: exists and is not a directory"):
            services.ensure_private_tmp(state)
        made.unlink()
        if os.getuid() == 0:  # CI runs as root: another user's folder can be made (as the squatter would)
            made.mkdir(mode=0o700)
            os.chown(made, 65534, 65534)
            with pytest.raises(ServiceError, match=rf"{parent}: exists and is owned by uid 65534"):
                services.ensure_private_tmp(state)
    finally:
        if os.path.islink(parent):
            os.unlink(parent)
        shutil.rmtree(parent, ignore_errors=True)

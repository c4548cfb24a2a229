from __future__ import annotations

import os
import shutil
from pathlib import Path

import psutil
import pytest
import torch

from pbp.config import load_config
from pbp.model import ModelConfig
from pbp.stack import manager, procs
from pbp.stack.endpoints import Endpoints, resolve
from pbp.stack.services import private_tmp, ray_temp_dir
from pbp.stack.state import STATE_FILE, StackState, StackStateError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


class ProcessState:
    """What a test may change in this process and must give back: the environment, MLflow's tracking URI (set by
    pbp's configure_mlflow, the in-process CLI, or a test) and webdataset's URL openers (pbp registers s3://)."""

    def __init__(self) -> None:
        import sys

        self.env = dict(os.environ)
        self.mlflow = sys.modules.get("mlflow.tracking._tracking_service.utils")
        self.uri = getattr(self.mlflow, "_tracking_uri", None)
        self.gopen = sys.modules.get("webdataset.gopen")
        self.schemes = dict(self.gopen.gopen_schemes) if self.gopen else None

    def restore(self) -> None:
        import sys

        os.environ.clear()
        os.environ.update(self.env)
        utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
        if utils is not None and utils._tracking_uri != self.uri:
            utils._tracking_uri = self.uri  # not set_tracking_uri: that would write MLFLOW_TRACKING_URI again
        gopen = sys.modules.get("webdataset.gopen")
        if gopen is not None:
            schemes = self.schemes if self.schemes is not None else {k: v for k, v in gopen.gopen_schemes.items()
                                                                     if k != "s3"}  # fmt: skip
            gopen.gopen_schemes.clear()
            gopen.gopen_schemes.update(schemes)


@pytest.fixture(autouse=True)
def _restore_process_state():
    """Every test gets the process state it started with back, whatever it changed."""
    state = ProcessState()
    yield
    state.restore()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return load_config(ModelConfig, REPO / "configs" / "model" / "tiny.yaml")


# ---- a real local stack (SeaweedFS, MLflow, 3-node Ray), started once per session on free loopback ports ----


def _dump_logs(state_dir: Path) -> str:
    out = []
    for log in sorted((state_dir / "logs").glob("*.log")):
        out.append(f"----- {log.name}\n{procs.tail(log, 40)}")
    return "\n".join(out)


@pytest.fixture(scope="session", autouse=True)
def _ray_session_dirs_removed(tmp_path_factory):
    """After the session, once every stack is down: each test stack's Ray session dir (/tmp/pbp-UID-HASH, 5-30 MB
    of logs and sockets; pytest keeps the stacks' own dirs under its basetemp) is removed."""
    yield
    for state_file in tmp_path_factory.getbasetemp().rglob(STATE_FILE):
        try:
            state = StackState.load(state_file.parent)
        except StackStateError:  # a test's deliberately corrupt state file: no stack ran from it
            continue
        if state is not None:
            shutil.rmtree(private_tmp(state), ignore_errors=True)


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory, request) -> Path:
    d = tmp_path_factory.mktemp("stack")
    request.session._pbp_stack_dir = d
    try:
        manager.up(d, workers=2, timeout=180, log=lambda _m: None)
    except Exception:
        print(_dump_logs(d))
        manager.down(d, log=lambda _m: None)
        raise
    yield d
    manager.down(d, log=lambda _m: None)


@pytest.fixture(scope="session")
def endpoints(stack_dir) -> Endpoints:
    # Resolve from the state dir only: a developer's own AWS_*/MLFLOW_* variables must not leak in.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    return resolve(stack_dir, env=clean)


@pytest.fixture
def stack_env(stack_dir, monkeypatch):
    """The process environment a user gets from `eval "$(pbp stack env)"`."""
    for k in list(os.environ):
        if k.startswith(("AWS_", "MLFLOW_", "RAY_")):
            monkeypatch.delenv(k)
    for line in manager.env_lines(stack_dir):
        key, _, value = line.removeprefix("export ").partition("=")
        monkeypatch.setenv(key, value.strip("'"))
    return stack_dir


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of every service log to the report."""
    outcome = yield
    report = outcome.get_result()
    d = getattr(item.session, "_pbp_stack_dir", None)
    if report.failed and d is not None:
        report.sections.append(("pbp stack logs", _dump_logs(d)))


def train_worker_pids(stack_dir: Path) -> list[int]:
    """This stack's Ray Train workers only (their raylet runs in the stack's Ray temp dir): the machine may be
    running other stacks, whose workers this test must not kill."""
    state = StackState.load(stack_dir)
    assert state is not None
    raylet_flag = f"--temp_dir={ray_temp_dir(state)}"
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "name"]):
        text = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
        if "RayTrainWorker" not in text:
            continue
        try:
            if any(raylet_flag in parent.cmdline() for parent in p.parents()):
                out.append(p.info["pid"])
        except psutil.Error:
            continue
    return out


def pbp_env(stack_dir: Path) -> dict[str, str]:
    """A pbp command's environment against the test stack: this process' own endpoint settings left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    env["PBP_STACK_DIR"] = str(stack_dir)
    return env


def signal_when(cmd: list[str], stack_dir: Path, trigger: str, sig: int, timeout: float = 120) -> tuple[int, str]:
    """Run the pbp command ``cmd``; send it ``sig`` (what Ctrl-C or `pbp jobs stop` send) at its first output line
    that matches the regex ``trigger``. -> (its exit status, its whole output)."""
    import re
    import subprocess

    proc = subprocess.Popen(cmd, env=pbp_env(stack_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if re.search(trigger, line):
                proc.send_signal(sig)
                break
        seen.append(proc.communicate(timeout=timeout)[0])
    finally:
        proc.kill()
    return proc.returncode, "".join(seen)

"""``mlflow models serve`` of a pbp model, as the benchmark and the tests drive it: started on a free loopback port
with the venv's ``bin`` first on PATH (it runs ``uvicorn``), waited for until ``/ping`` answers, called on
``/invocations``, stopped."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def served(model_uri: str, env: dict[str, str], log: IO | int = subprocess.DEVNULL,
           timeout: float = 180.0) -> Iterator[int]:  # fmt: skip
    """-> the port of a scoring server of ``model_uri`` (one worker), stopped on exit."""
    with socket.socket() as sock:  # a port the OS says is free on loopback
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bindir = str(Path(sys.executable).parent)
    env = {**env, "PATH": f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}"}
    cmd = [str(Path(bindir) / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(port, proc, timeout)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited with {proc.returncode} before answering /ping")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow models serve did not answer /ping within {timeout:.0f} s")


def invoke(port: int, payload: dict[str, Any] | bytes, timeout: float = 120.0) -> Any:
    """POST ``payload`` (a dict, or JSON bytes already encoded) to ``/invocations`` -> the decoded answer."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())

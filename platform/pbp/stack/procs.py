"""Processes and ports of the local stack: start in a new process group, stop only what pbp started."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import psutil


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Can a server bind ``port`` on ``host``, and does nothing listen on it on another address? Ray's runtime env
    agent binds the machine's own address whatever ``--node-ip-address`` says (seen: 192.0.2.2:P for a 127.0.0.1
    node), so a port free on 127.0.0.1 alone could be another stack's. The wildcard bind fails if any address holds
    it. (SO_REUSEADDR as servers set it, so TIME_WAIT leftovers do not count.)"""
    for address in dict.fromkeys((host, "")):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


# Ray's workers bind ports in 10002-19999 (its --min/--max-worker-port defaults); stack ports stay clear of them.
_RAY_WORKER_PORTS = range(10002, 20000)
_FIRST_PORT = 20000


def ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> range:
    """The kernel's ephemeral ports (what ``bind(0)`` and outgoing connections get); 32768-60999 if unreadable."""
    with contextlib.suppress(OSError, ValueError):
        lo, hi = (int(x) for x in Path(path).read_text().split())
        return range(lo, hi + 1)
    return range(32768, 61000)


def candidate_ports(offset: int = 10000, ephemeral: range | None = None) -> list[int]:
    """Ports a stack service may take: outside the kernel's ephemeral range and Ray's worker range, and so is
    ``port + offset`` (SeaweedFS derives gRPC ports as +10000).

    Kernel-chosen ports (``bind(0)``) would race: between our check and the service's own bind, any process on the
    machine (Ray's dashboard helpers do) may get the same port from the kernel. Ports outside the ephemeral range
    are never handed out that way.
    """
    eph = ephemeral or ephemeral_range()

    def ok(p: int) -> bool:
        return p not in eph and p not in _RAY_WORKER_PORTS and 1024 <= p <= 65535

    out = [p for p in range(_FIRST_PORT, 65536 - offset) if ok(p) and ok(p + offset)]
    if not out:  # an unusual ephemeral range: anything clear of it
        out = [p for p in range(1024, 65536 - offset) if ok(p) and ok(p + offset)]
    return out


def free_ports(n: int, host: str = "127.0.0.1", avoid: Iterable[int] = (), offset: int = 10000) -> list[int]:
    """``n`` distinct free ports from :func:`candidate_ports` (random order, then checked), none in ``avoid``."""
    taken = set(avoid)
    cands = [p for p in candidate_ports(offset) if p not in taken]
    random.SystemRandom().shuffle(cands)  # not the global generator: a seeded test would pick the same ports
    out: list[int] = []
    for port in cands:
        if len(out) == n:
            break
        if port_is_free(port, host):
            out.append(port)
    if len(out) < n:
        raise RuntimeError(f"could not find {n} free ports on {host} outside the ephemeral range")
    return out


def who_listens(port: int) -> str:
    """A short description of the process listening on ``port`` (best effort)."""
    with contextlib.suppress(psutil.Error, PermissionError):
        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                p = psutil.Process(c.pid)
                return f"pid {c.pid} ({' '.join(p.cmdline()[:3])})"
    return "another process"


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new session/process group, output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        out.flush()
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
            umask=0o077,  # the service's files (auth database, objects, logs) private to this user
        )


def group_alive(pgid: int | None, marker: str | None = None) -> bool:
    """Is any process of group ``pgid`` alive? With ``marker``, the leader's command line must contain it, so a
    pid recycled by an unrelated program after a crash or reboot is never taken for ours."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # a group of another user: not ours
    if marker is None:
        return True
    try:
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if os.getpgid(p.info["pid"]) == pgid and marker in " ".join(p.info["cmdline"] or []):
                    return True
    except psutil.Error:
        return True
    return False


def stop_group(pgid: int, grace: float = 15.0, leader_signal: int | None = None, leader_grace: float = 5.0) -> bool:
    """Stop the process group pbp started. -> was anything running?

    With ``leader_signal``, the group leader gets it first and ``leader_grace`` seconds to shut its children down
    (``ray start --block`` stops its node cleanly on SIGINT, while Ray's own processes ignore SIGTERM). Then SIGTERM
    to the whole group, and SIGKILL to whatever is left after ``grace`` more seconds.
    """
    if not _group_exists(pgid):
        return False
    if leader_signal is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pgid, leader_signal)
        _wait_gone(pgid, time.monotonic() + leader_grace, leader_only=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if not _wait_gone(pgid, time.monotonic() + grace):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        _wait_gone(pgid, time.monotonic() + 5)
    return True


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _wait_gone(pgid: int, deadline: float, leader_only: bool = False) -> bool:
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, os.WNOHANG)  # reap our own child if this process started it
        if leader_only:
            try:
                if psutil.Process(pgid).status() == psutil.STATUS_ZOMBIE:
                    return True
            except psutil.NoSuchProcess:
                return True
        elif not _group_exists(pgid):
            return True
        time.sleep(0.1)
    return False


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    data = path.read_bytes()[-20000:].decode(errors="replace").splitlines()
    return "\n".join(data[-lines:])

"""Whether a process id recorded somewhere (a scratch folder's name, a registry lock's holder) names a process of
this machine, and whether it still runs.

A host name is not a machine: containers with the host's network, pods with ``hostNetwork`` and VMs with default names
share one while their process ids do not. ``machine_key`` digests the host name with the kernel's boot id and this
process' pid namespace, so two processes get the same key only when each one's pid means the same process to the
other."""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from pathlib import Path


@functools.cache
def machine_key() -> str:
    """8 hex digits naming this host, boot and pid namespace."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            p = Path(path)
            parts.append(p.read_text().strip() if p.is_file() else str(os.stat(p).st_ino))
        except OSError:
            parts.append("-")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine with this id runs (another user's counts; a value no pid can take counts
    as alive: nothing is judged dead on a doubt)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True

"""Local scratch directories that a killed process does not leave behind for good.

Each is named ``pbp-KIND-PID-MACHINE-RANDOM`` (``MACHINE``: :func:`pbp.local_process.machine_key`), and making one
removes the directories of the same kind that a process of this machine made and that is gone: a SIGKILLed ``pbp
data build`` left its spill directory (about twice the input's size: hundreds of GB at UniRef scale), killed
trainings their checkpoint copies, killed commands their model copies, and nothing ever removed them. Only
directories of this user, of this machine (host, boot and pid namespace: a /tmp shared with a container whose pids
mean other processes is left alone) and of a process id that is not running there are removed; a symlink or a plain
file is never followed or removed.

    with scratch("register") as tmp: ...       # removed on exit (a TemporaryDirectory)
    path = make("train")                        # the caller removes it, or the next make("train") after it died
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pbp.local_process import machine_key, pid_alive

log = logging.getLogger("pbp.scratch")


def sweep(kind: str, base: Path) -> list[Path]:
    """Remove ``base``'s scratch directories of ``kind`` left by dead processes of this user on this machine."""
    removed: list[Path] = []
    head, host, uid = f"pbp-{kind}-", machine_key(), os.getuid()
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(head)]
    except OSError:
        return removed
    for p in candidates:
        pid, _, rest = p.name[len(head) :].partition("-")
        if not pid.isdigit() or not rest.startswith(f"{host}-") or int(pid) == os.getpid():
            continue  # another kind with this prefix, an older pbp's name, another machine's, or our own
        try:
            st = p.lstat()
        except OSError:
            continue
        if p.is_symlink() or not p.is_dir() or st.st_uid != uid or pid_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    if removed:
        log.warning("removed %d scratch folder(s) of dead pbp processes in %s (%s)", len(removed), base,
                    ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else ""))  # fmt: skip
    return removed


def make(kind: str, dir: str | Path | None = None) -> Path:
    """A new scratch directory of ``kind`` in ``dir`` (default: the system's temporary directory), after sweeping
    the ones dead processes left there."""
    base = Path(dir) if dir else Path(tempfile.gettempdir())
    sweep(kind, base)
    return Path(tempfile.mkdtemp(prefix=f"pbp-{kind}-{os.getpid()}-{machine_key()}-", dir=base))


@contextmanager
def scratch(kind: str, dir: str | Path | None = None) -> Iterator[Path]:
    """:func:`make`, removed on exit."""
    path = make(kind, dir)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

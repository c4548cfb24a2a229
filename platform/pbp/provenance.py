"""Which code made a run: the git commit of the project, marked when the working tree differed from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

DIRTY = "+dirty"
"""Appended to a commit whose tracked files were changed (uncommitted) when the run or job started."""


def code_commit(root: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout at ``root`` (default: the current directory), with :data:`DIRTY` when
    a tracked file differs from it (a run's ``pbp.git_commit`` tag would otherwise name code it did not run);
    'unknown' outside a checkout or without git."""
    where = ["-C", str(root)] if root is not None else []
    try:
        head = subprocess.run(["git", *where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        # --no-optional-locks: a status must not take the index lock a user's own git command may be holding
        changed = subprocess.run(["git", "--no-optional-locks", *where, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + (DIRTY if changed.returncode == 0 and changed.stdout.strip() else "")

"""The common body of ``jobs/*.py``: parse ``--config FILE`` and dotted overrides, load the typed config, run."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def run_job(config_cls: type[T], run: Callable[[T], Any], argv: Sequence[str] | None = None) -> Any:
    from pbp.config import load_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config(config_cls, args.config, args.overrides)  # the submitted copy's file, before moving
    enter_submit_dir()
    return run(cfg)


def enter_submit_dir() -> None:
    """A job submitted to a cluster on the submitter's machine (the local stack) runs in the project directory it was
    submitted from (``PBP_SUBMIT_DIR``, set by ``pbp submit``), not in Ray's unpacked copy of it: relative paths in
    its config (``../shared/...`` task files, ``build/...`` outputs) then mean what they mean for the direct command.
    The code and the job's own config file come from the copy (the submitted snapshot); a file that config links
    (a tune config's ``finetune:``) is read in the project when the job reads it."""
    import os
    from pathlib import Path

    here = os.environ.get("PBP_SUBMIT_DIR")
    if here and Path(here).is_dir():
        os.chdir(here)


def add_job_args(p: argparse.ArgumentParser, example: str, *, config_required: bool = True) -> None:
    """``--config``, dotted overrides and ``--address``: the arguments of every command that runs a job on Ray."""
    from pathlib import Path

    p.add_argument("--config", type=Path, required=config_required, default=None)
    p.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {example}")
    p.add_argument("--address", default=None, help="Ray GCS address (default: RAY_ADDRESS, else the local stack)")

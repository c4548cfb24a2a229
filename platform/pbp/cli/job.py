"""What the commands that run a job on Ray share (``pbp pretrain|finetune|tune``, which ``jobs/*.py`` run on the
cluster): their arguments, where a submitted one runs, and the line for a run whose MLflow run is incomplete."""

from __future__ import annotations

import argparse
import sys


def say_tracking_incomplete(run_name: str, stored: str, gaps: list[str]) -> None:
    """On stderr: the run ended with its results in storage (``stored`` says where), but its MLflow run lacks
    ``gaps`` (:func:`pbp.train.tracking.tracking_gaps`), and the same command logs them."""
    print(f"run {run_name}: {stored}, but its MLflow run is not complete ({'; '.join(gaps)}); the values MLflow had "
          "not taken are kept with the run's checkpoint. Run the same command again (once MLflow answers): it logs "
          "what is missing, training nothing.", file=sys.stderr)  # fmt: skip


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

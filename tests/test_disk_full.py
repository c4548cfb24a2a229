"""A full disk is one line naming the file (and, for a build's spill, the folder and what it needs), not a traceback.
A chaos run on a 40 KB tmpfs: `pbp predict --out` there and `pbp data build --tmp-dir` there both ended in a ~20-line
traceback ending `OSError: [Errno 28] No space left on device`. /dev/full stands in for the full disk here."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

DEV_FULL = Path("/dev/full")
pytestmark = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full (Linux)")


def test_a_build_spill_that_does_not_fit_names_the_file_and_what_the_build_needs(tmp_path):
    from pbp.data.spill import Partitions

    (tmp_path / "records-00000.jsonl").symlink_to(DEV_FULL)
    parts = Partitions(tmp_path, "records", 1)
    with pytest.raises(OSError) as e:
        for i in range(100_000):  # the writes are buffered: it fails when a buffer is flushed, or at close
            parts.add(f"P{i}", ["x" * 100])
        parts.close()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "records-00000.jsonl")
    assert "--tmp-dir" in e.value.strerror and "twice the input" in e.value.strerror


def test_an_output_file_that_does_not_fit_is_named(tmp_path):
    from pbp.predict.files import _atomic

    out = tmp_path / "preds.csv"
    (tmp_path / f".preds.csv.tmp-{os.getpid()}").symlink_to(DEV_FULL)

    def write(tmp: Path) -> None:
        with tmp.open("w") as f:
            f.write("id,prediction\n" * 10_000)

    with pytest.raises(OSError) as e:
        _atomic(out, write)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out) and not out.exists()


def test_a_full_disk_no_path_names_is_still_one_line(monkeypatch, capsys):
    from pbp.cli.main import main
    from pbp.stack import manager

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manager, "env_lines", full)
    assert main(["stack", "env", "--state-dir", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pbp: error: No space left on device: free space where this command writes"), err

"""Scratch folders a killed pbp process left are removed by the next one of the same kind (``pbp.scratch``).

A chaos run: a SIGKILLed `pbp data build` left its spill folder (98 MB for 150k proteins; about twice the input at
UniRef scale), and the machine had hundreds of pbp-train-*, pbp-register-*, pbp-pyfunc-* folders of killed runs."""

from __future__ import annotations

import os
import subprocess
import sys

from pbp import scratch


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_dead_processs_scratch_is_swept_and_nothing_else(tmp_path):
    host = scratch.machine_key()
    dead = tmp_path / f"pbp-build-{_dead_pid()}-{host}-abc"
    live = tmp_path / f"pbp-build-{os.getppid()}-{host}-def"  # pytest's parent: alive
    elsewhere = tmp_path / f"pbp-build-{_dead_pid()}-00000000-ghi"  # another machine's (a shared /tmp)
    other_kind = tmp_path / f"pbp-build-extra-{_dead_pid()}-{host}-jkl"
    older_pbp = tmp_path / "pbp-build-x1y2z3"  # mkdtemp's name before this change: not ours to judge
    for d in (dead, live, elsewhere, other_kind, older_pbp):
        (d / "spill").mkdir(parents=True)
        (d / "spill" / "part-0.jsonl").write_bytes(b"x" * 1000)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("a user's files")
    link = tmp_path / f"pbp-build-{_dead_pid()}-{host}-lnk"  # named as ours, pointing elsewhere: never followed
    link.symlink_to(precious, target_is_directory=True)
    plain = tmp_path / f"pbp-build-{_dead_pid()}-{host}-txt"  # a file, not a folder
    plain.write_text("not a folder")
    fresh = scratch.make("build", tmp_path)
    assert not dead.exists()
    assert all(d.exists() for d in (live, elsewhere, other_kind, older_pbp, link, plain))
    assert (precious / "keep.txt").read_text() == "a user's files"
    assert fresh.name.startswith(f"pbp-build-{os.getpid()}-{host}-") and fresh.is_dir()
    with scratch.scratch("build", tmp_path) as tmp:
        assert tmp.is_dir() and fresh.exists()  # our own live one is kept
    assert not tmp.exists()


def test_a_killed_builds_spill_folder_goes_with_the_next_build(tmp_path):
    """End to end: a build killed mid-way (SIGKILL), then another build with the same --tmp-dir."""
    from pbp.data.synth import SynthConfig, write_corpus

    fasta, table = write_corpus(tmp_path / "synth", SynthConfig(n_proteins=300, seed=3))
    spill = tmp_path / "spill"
    spill.mkdir()
    code = ("import os, sys\nfrom pbp.data import shards\n"
            "def die(*a, **k):\n    os._exit(9)\nshards._check_and_join = die\n"
            "from pbp.cli.main import main\nsys.exit(main(sys.argv[1:]))\n")  # fmt: skip
    args = ["data", "build", "--fasta", str(fasta), "--go-table", str(table), "--min-go-records", "5",
            "--no-progress", "--tmp-dir", str(spill)]  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", code, *args, "--out", str(tmp_path / "a")], timeout=300)
    assert killed.returncode == 9
    left = list(spill.iterdir())
    assert len(left) == 1 and left[0].name.startswith("pbp-build-")  # what a killed build leaves
    done = subprocess.run([sys.executable, "-m", "pbp.cli.main", *args, "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(spill.iterdir()) == []  # the dead build's folder swept, the new one removed on exit

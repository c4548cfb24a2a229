"""`pbp data build --ray-workers N`: shards written as Ray tasks on the local stack's cluster are the bytes a build in
one process writes, and the manifest is still committed last by the driver."""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

from pbp.data.shards import BuildConfig, Inputs, build, load_manifest
from pbp.data.storage import Store
from pbp.data.synth import SynthConfig, write_corpus

from ..conftest import REPO, pbp_env


def _pbp(stack_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = pbp_env(stack_dir)
    cmd = [str(Path(sys.executable).with_name("pbp")), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)


def test_shards_written_by_ray_tasks_are_the_bytes_of_a_local_build(stack_dir, endpoints, tmp_path):
    fasta, table = write_corpus(tmp_path, SynthConfig(n_proteins=1200, seed=9))
    base = f"s3://{endpoints.buckets['data']}/tests/ray-build-{random.randrange(10**9)}"
    here = build(f"{base}/here/", Inputs(fasta, table), BuildConfig(shard_size_mb=0.1, min_go_records=5),
                 store=Store(f"{base}/here/", endpoints)).manifest  # fmt: skip
    res = _pbp(stack_dir, "data", "build", "--fasta", str(fasta), "--go-table", str(table), "--out", f"{base}/ray/",
               "--shard-size-mb", "0.1", "--min-go-records", "5", "--ray-workers", "2", "--no-progress")  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ray = load_manifest(f"{base}/ray/", Store(f"{base}/ray/", endpoints))

    def shards(m):
        return [(s["name"], s["samples"], s["bytes"], s["sha256"]) for sp in ("train", "valid")
                for s in m["splits"][sp]["shards"]]  # fmt: skip

    assert len(shards(here)) > 4 and shards(ray) == shards(here)
    for key in ("records", "go_vocabulary", "records_without_vocabulary_annotation"):
        assert ray[key] == here[key], key
    assert json.loads(json.dumps(ray["build"])) == here["build"]


def test_shard_tasks_carry_no_credentials(endpoints):
    from pbp.data.shards import ShardJob
    from pbp.train.launch import RayShardMap

    job = ShardJob("s3://b/ds/", endpoints, "train", 0, b"0\t{}", seed=1)
    sent = RayShardMap.for_tasks([job])
    assert endpoints.s3_secret_key and endpoints.s3_secret_key.encode() not in pickle.dumps(sent)
    assert dataclasses.replace(sent[0], endpoints=endpoints) == job


def test_ray_workers_need_an_s3_output(stack_dir, tmp_path):
    fasta, _ = write_corpus(tmp_path, SynthConfig(n_proteins=50, seed=9))
    res = _pbp(stack_dir, "data", "build", "--fasta", str(fasta), "--out", str(tmp_path / "ds"), "--ray-workers", "2")
    assert res.returncode == 2 and "give an s3:// --out" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "ds").exists()

"""`pbp bench build` (peak memory against input size) and `pbp bench data` (reader against raw GETs, 1 process
against DataLoader workers), run small: the JSON holds the figures `pbp bench report` collects."""

from __future__ import annotations

import json
import random

import pytest

from pbp.bench.data import bench_data
from pbp.bench.report import figures
from pbp.cli.main import main
from pbp.data.shards import BuildConfig, Inputs, build
from pbp.data.storage import Store
from pbp.data.synth import SynthConfig, write_corpus


def test_bench_build_measures_each_size_in_a_fresh_process(tmp_path, capsys):
    out = tmp_path / "build.json"
    assert main(["bench", "build", "--sizes", "3000,6000", "--work-dir", str(tmp_path), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [b["records"] for b in doc["builds"]] == [3000, 6000] and doc["records_ratio"] == 2
    for b in doc["builds"]:
        assert b["peak_rss_kb"] >= b["import_rss_kb"] > 50_000 and b["seconds"] > 0 and b["shards"] >= 2
    assert doc["peak_rss_ratio"] == pytest.approx(doc["builds"][1]["peak_rss_kb"] / doc["builds"][0]["peak_rss_kb"])
    assert {"peak_rss_ratio", "peak_above_imports_ratio", "records_per_s_ratio"} <= {k for k, _ in figures(doc)}
    assert "peak RSS" in capsys.readouterr().out and list(tmp_path.glob("pbp-bench-build-*")) == []
    assert main(["bench", "build", "--sizes", "6000,3000"]) == 2
    assert "smallest first" in capsys.readouterr().err


def test_bench_data_reads_the_same_samples_in_process_and_with_two_workers(stack_env, endpoints, tmp_path):
    fasta, table = write_corpus(tmp_path, SynthConfig(n_proteins=1500, seed=2))
    url = f"s3://{endpoints.buckets['data']}/tests/bench-data-{random.randrange(10**9)}/"
    build(url, Inputs(fasta, table), BuildConfig(shard_size_mb=0.3, min_go_records=5), store=Store(url, endpoints))
    doc = bench_data(url, workers=(0, 2), model_seconds=0.5, max_shards=4, seq_len=64, batch_size=4, model_batch_size=2)
    assert [w["workers"] for w in doc["workers"]] == [0, 2]
    assert doc["workers"][0]["samples"] == doc["workers"][1]["samples"] == doc["samples"] > 100
    assert doc["workers"][0]["speedup"] == 1 and doc["reader_over_target"] > 0
    assert {"reader_over_raw_get", "reader_over_model", "workers[1].speedup"} <= {k for k, _ in figures(doc)}

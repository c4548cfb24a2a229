"""``pbp bench data``: the streaming reader from S3 against raw GETs of the same shards and against training."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from pbp.data.episodes import Bucket
from pbp.data.reader import PretrainingStream, ReaderConfig, StatefulLoader
from pbp.data.shards import FORMAT_VERSION, BuildConfig, DatasetError, Inputs, build, load_manifest
from pbp.data.storage import Store
from pbp.data.synth import SynthConfig, write_corpus
from pbp.stack.endpoints import bucket_for, require, resolve


def ensure_bench_dataset(url: str | None, proteins: int, tmp: Path) -> str:
    """The dataset to read: ``url``, or a synthetic one built once into the stack's data bucket."""
    if url:
        return url
    ep = resolve()
    bucket = bucket_for("data", ep, "the benchmark's dataset")
    require(ep.s3_endpoint, "S3 endpoint (start the local stack: pbp stack up)")
    url = f"s3://{bucket}/bench/synth-{proteins}-format{FORMAT_VERSION}/"
    try:
        load_manifest(url)
    except DatasetError:
        fasta, table = write_corpus(tmp, SynthConfig(n_proteins=proteins, seed=0))
        build(url, Inputs(fasta, table), BuildConfig(shard_size_mb=16, min_go_records=20))
    return url


def bench_data(url: str, workers: tuple[int, ...] = (0, 2), model_seconds: float = 6.0, max_shards: int = 8,
               seq_len: int = 512, batch_size: int = 64, model_batch_size: int = 16, repeats: int = 3) -> dict:  # fmt: skip
    """Raw GETs of the first ``max_shards`` train shards, then the reader over exactly those shards (one bucket of
    ``seq_len`` and ``batch_size``: the original's 512/64 episode) with each DataLoader worker count in ``workers``
    (0 = in the calling process; the median of ``repeats`` reads), then the base model's training rate at that length (batch
    ``model_batch_size``, what fits a CPU's memory comfortably)."""
    store = Store(url)
    manifest = load_manifest(url, store)
    shards = manifest["splits"]["train"]["shards"][:max_shards]
    nbytes = sum(s["bytes"] for s in shards)
    nsamples = sum(s["samples"] for s in shards)

    t0 = time.perf_counter()
    for s in shards:
        store.get_bytes(s["name"])
    raw_s = time.perf_counter() - t0

    # The reader over exactly those shards (a format-2 dataset: its index; format 1: untar + JSON + encode), crop,
    # corrupt, collate: the median of ``repeats`` reads, since single reads vary by 10-20 % on a shared 2-core machine.
    cfg = ReaderConfig(url=url, mode="exact", shuffle_buffer=1000, buckets=(Bucket(seq_len, batch_size),))
    runs: list[dict[str, Any]] = []
    for n in workers:
        reads = [_read(cfg, store, shards, n) for _ in range(repeats)]
        rates = sorted(rate for _, rate in reads)
        runs.append(
            {"workers": n, "samples": reads[0][0], "samples_s": statistics.median(rates), "runs_samples_s": rates}
        )
    for r in runs:
        r["speedup"] = r["samples_s"] / runs[0]["samples_s"]

    from pbp.bench.model import bench_model
    from pbp.model import ModelConfig

    model = bench_model(ModelConfig(), dtype="fp32", seq_len=seq_len, batch_size=model_batch_size,
                        min_seconds=model_seconds)  # fmt: skip
    first = runs[0]
    return {
        "url": url,
        "shards": len(shards),
        "samples": first["samples"],
        "bytes": nbytes,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "raw_get_mb_s": nbytes / raw_s / 1e6,
        "raw_get_samples_s": nsamples / raw_s,
        "reader_samples_s": first["samples_s"],
        "reader_mb_s": nbytes / (first["samples"] / first["samples_s"]) / 1e6,
        "reader_over_raw_get": first["samples_s"] / (nsamples / raw_s),
        "reader_over_target": first["samples_s"] / TARGET_SAMPLES_S,
        "workers": runs,
        "model_base_fp32_samples_s": model.samples_per_s,
        "reader_over_model": first["samples_s"] / model.samples_per_s,
    }


def _read(cfg: ReaderConfig, store: Store, shards: list[dict], workers: int) -> tuple[int, float]:
    """One read of ``shards`` with ``workers`` DataLoader workers -> (samples, samples/s)."""
    stream = PretrainingStream(cfg, store=store)
    stream.shards = shards
    t0 = time.perf_counter()
    seen = 0
    for batch in StatefulLoader(stream, num_workers=workers):
        seen += len(batch["accessions"])
    return seen, seen / (time.perf_counter() - t0)


TARGET_SAMPLES_S = 22_000
"""Per reader process at L=512: what keeps one H100 at 35 % MFU on the base model (issue #11)."""

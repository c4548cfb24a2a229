"""``pbp bench build``: ``pbp data build``'s peak memory against the number of input records.

For each size (default 1M and 4M records) a synthetic FASTA + GO table (``pbp data synth``'s generator, sequences of
40-120 residues so the per-record costs dominate: the worst case for memory growth) is built into a local directory
by a fresh Python process, which reports its peak resident memory (VmHWM) and its footprint once pbp was imported.
Figures: peak RSS of the largest build / of the smallest (target <= 1.2 for 4x the records), the same for the peak
above the import footprint (the build's own memory, a stricter view), and records/s of each build against the
smallest one's (so a per-record slowdown at scale shows too).

``bench_build_ray`` (``--ray-workers 1,2``, needs the local stack): the same input built in one process and with
its shards written by 1 and 2 Ray tasks at once, into the stack's S3: time ratios, and whether the shards are the
same bytes (they must be).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pbp.data.synth import SynthConfig, write_corpus

CHILD = """
import json, sys, time
from pathlib import Path
from pbp.bench.build import _vm
from pbp.data.shards import BuildConfig, Inputs, build
fasta, table, out = map(Path, sys.argv[1:4])
base = _vm("VmRSS")
t0 = time.perf_counter()
r = build(str(out), Inputs(fasta, table), BuildConfig(min_go_records=100))
print(json.dumps({"records": r.manifest["records"], "seconds": time.perf_counter() - t0, "import_rss_kb": base,
                  "peak_rss_kb": _vm("VmHWM"), "shards": sum(len(s["shards"]) for s in r.manifest["splits"].values())}))
"""


def _vm(field: str) -> int:
    """This process's ``VmRSS`` / ``VmHWM`` in KiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(n: int, work: Path, echo=print) -> dict:
    """Generate ``n`` records in ``work``, build them in a fresh process, remove everything again."""
    case = work / f"n{n}"
    t0 = time.perf_counter()
    fasta, table = write_corpus(case / "input", SynthConfig(n_proteins=n, min_len=40, max_len=120, seed=0),
                                compresslevel=1)  # fmt: skip
    echo(f"  {n:,} records generated in {time.perf_counter() - t0:.0f} s; building")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(fasta), str(table), str(case / "out")],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"build of {n:,} records failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["input_bytes"] = fasta.stat().st_size + table.stat().st_size
    shutil.rmtree(case, ignore_errors=True)
    echo(f"  {n:,} records: {row['seconds']:.0f} s, peak RSS {row['peak_rss_kb'] / 1024:.0f} MiB "
         f"(imports {row['import_rss_kb'] / 1024:.0f} MiB)")  # fmt: skip
    return {"n": n, **row}


def bench_build(sizes: tuple[int, ...] = (1_000_000, 4_000_000), work_dir: str | None = None, echo=print) -> dict:
    """Peak memory at each size (module docstring)."""
    if len(sizes) < 2 or list(sizes) != sorted(sizes):
        raise ValueError("give at least two sizes, smallest first")
    with tempfile.TemporaryDirectory(prefix="pbp-bench-build-", dir=work_dir) as tmp:
        rows = [measure(n, Path(tmp), echo) for n in sizes]
    small, large = rows[0], rows[-1]
    return {
        "builds": rows,
        "records_ratio": large["records"] / small["records"],
        "peak_rss_ratio": large["peak_rss_kb"] / small["peak_rss_kb"],
        "peak_above_imports_ratio": (large["peak_rss_kb"] - large["import_rss_kb"])
        / max(1, small["peak_rss_kb"] - small["import_rss_kb"]),
        "records_per_s_ratio": (large["records"] / large["seconds"]) / (small["records"] / small["seconds"]),
        "target_peak_rss_ratio": 1.2,
    }


def bench_build_ray(n: int = 200_000, workers: tuple[int, ...] = (1, 2), echo=print) -> dict:
    """The same synthetic input built into the stack's S3 in this process, then with shards written by Ray tasks
    (``pbp data build --ray-workers``) for each count in ``workers``; figures: build time against the in-process
    build and against the first Ray count, and whether every build's shards are the same bytes."""
    from pbp.data.shards import BuildConfig, Inputs, build
    from pbp.stack.endpoints import bucket_for, require, resolve
    from pbp.train.launch import RayShardMap

    ep = resolve()
    require(ep.s3_endpoint, "S3 endpoint (start the local stack: pbp stack up)")
    base = f"s3://{bucket_for('data', ep, 'the benchmark')}/bench/build-ray-{int(time.time())}"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pbp-bench-build-ray-") as tmp:
        fasta, table = write_corpus(Path(tmp), SynthConfig(n_proteins=n, seed=0), compresslevel=1)
        for w in (0, *workers):
            shard_map = RayShardMap(w) if w else None
            t0 = time.perf_counter()
            m = build(
                f"{base}/w{w}/", Inputs(fasta, table), BuildConfig(shard_size_mb=16), shard_map=shard_map
            ).manifest
            seconds = time.perf_counter() - t0
            digests = [s["sha256"] for sp in m["splits"].values() for s in sp["shards"]]
            rows.append({"ray_workers": w, "seconds": seconds, "shards": len(digests), "digests": digests})
            echo(f"  {'in-process' if not w else f'{w} Ray workers'}: {seconds:.1f} s, {len(digests)} shards")
    from pbp.data.storage import s3_filesystem

    s3_filesystem(ep).rm(base[len("s3://") :], recursive=True)  # the benchmark's datasets, not the user's
    first = rows[0]["digests"]
    for r in rows:
        r["speedup"] = rows[0]["seconds"] / r["seconds"]  # against the in-process build
        r["identical_shards"] = r.pop("digests") == first
    out: dict = {"records": n, "builds": rows}
    if len(rows) > 2:
        out["last_over_first_ray_speedup"] = rows[1]["seconds"] / rows[-1]["seconds"]
    return out

"""``pbp bench ...``: benchmarks, each reported against a baseline measured in the same run."""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import asdict
from pathlib import Path

from pbp.config import load_config


def _write_json(path: Path | None, doc: object) -> None:
    """``--json PATH``: the bench's figures, for ``pbp bench report``."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks (figures relative to a baseline measured in the same run)")
    bsub = bench.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    for add in (
        _add_model,
        _add_data,
        _add_train,
        _add_stack,
        _add_tune,
        _add_predict,
        _add_arch,
        _add_build,
        _add_report,
        _add_gpu,
    ):
        add(bsub)


def _add_model(bsub: argparse._SubParsersAction) -> None:
    model = bsub.add_parser(
        "model",
        help="forward+backward throughput of a model config as a fraction of this machine's matmul peak",
        description="Times forward + pretraining loss + backward on synthetic full-length batches, in each dtype, "
        "and measures the matmul peak of the same dtype in the same run. Model FLOPs are counted analytically "
        "(pbp.model.flops: matmuls and convolutions, 2 FLOPs per MAC, backward = 2x forward).",
    )
    model.add_argument("--config", default=None, help="model config YAML (default: the paper's model)")
    model.add_argument("overrides", nargs="*", help="dotted model overrides")
    model.add_argument("--seq-len", type=int, default=512)
    model.add_argument("--batch-size", type=int, default=16)
    model.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32,bf16")
    model.add_argument("--seconds", type=float, default=10.0, help="minimum timed seconds per dtype")
    model.add_argument("--compile", action="store_true", help="torch.compile the model first")
    model.add_argument("--force-bf16", action="store_true", help="time bf16 even where the CPU emulates it")
    model.add_argument("--device", default="cpu", help="cpu or cuda")
    model.add_argument("--json", type=Path, default=None, help="also write the results here")
    model.set_defaults(func=cmd_model)


def _add_data(bsub: argparse._SubParsersAction) -> None:
    data = bsub.add_parser(
        "data",
        help="reader throughput from S3 against raw GETs of the same shards and the base model's training rate",
    )
    data.add_argument("--url", default=None, help="dataset URL (default: a synthetic one in the local stack)")
    data.add_argument("--proteins", type=int, default=60000, help="size of the synthetic dataset")
    data.add_argument(
        "--workers",
        default="0,2",
        help="DataLoader worker counts to measure, comma-separated (0: in the calling process)",
    )
    data.add_argument("--json", type=Path, default=None)
    data.set_defaults(func=cmd_data)


def _add_train(bsub: argparse._SubParsersAction) -> None:
    train = bsub.add_parser(
        "train",
        help="step time: bare PyTorch vs DeepSpeed vs Ray Train + DeepSpeed (1 worker); checkpoint vs raw upload",
    )
    train.add_argument("--configs", default="configs/model/tiny.yaml,configs/model/base.yaml")
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--seq-len", type=int, default=512)
    train.add_argument("--steps", type=int, default=10)
    train.add_argument("--warmup", type=int, default=3)
    train.add_argument("--zero-stage", type=int, default=0, help="0: the overhead of DeepSpeed itself; 2: ZeRO-2")
    train.add_argument("--no-ray", action="store_true", help="skip (c); no cluster needed")
    train.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs the Ray worker asks for")
    train.add_argument("--json", type=Path, default=None)
    train.set_defaults(func=cmd_train)


def _add_stack(bsub: argparse._SubParsersAction) -> None:
    stack = bsub.add_parser(
        "stack",
        help="time the local stack from `up` to all-healthy, and `down` (cold, then warm restarts)",
        description="Starts a stack in a temporary state dir (cold start), then stops and restarts it (warm), "
        "timing each phase against the target of healthy in under 20 s.",
    )
    stack.add_argument("--workers", type=int, default=2)
    stack.add_argument("--rounds", type=int, default=2, help="warm restarts after the cold start")
    stack.add_argument("--json", type=Path, default=None)
    stack.set_defaults(func=cmd_stack)


def _add_tune(bsub: argparse._SubParsersAction) -> None:
    tune = bsub.add_parser(
        "tune",
        help="fine-tuning and search: trial wall time / training time, feature cache on / off, ASHA+TPE vs random",
        description="(overhead) a real 1-trial campaign on the local stack: the trial's wall time over its time "
        "in training epochs; (cache) the frozen stage in-process with the feature cache over without; (exchange) "
        "fine-tuning's gradient exchange on 2 gloo ranks, bucketed over per tensor; (search) "
        "in-process Optuna on the tiny frozen stage: the trial-epochs ASHA+TPE needs to reach random search's "
        "best, over random's total. Definitions: pbp.bench.tune.",
    )
    tune.add_argument("--parts", default="overhead,cache,exchange,search",
                      help="comma-separated: overhead,cache,exchange,search")  # fmt: skip
    tune.add_argument("--rows", type=int, default=2000, help="cache: stability rows (task.max_rows), tiny model")
    tune.add_argument("--base-rows", type=int, default=200, help="cache: rows for the base model (0: skip it)")
    tune.add_argument("--epochs", type=int, default=5, help="cache: epochs of the frozen stage")
    tune.add_argument(
        "--cache-ranks",
        type=int,
        default=2,
        help="cache: also build the base model's cache on this many gloo ranks against one (0 or 1: skip)",
    )
    tune.add_argument(
        "--ranks-rows",
        type=int,
        default=2000,
        help="cache: stability rows for the ranks' build (enough batches to share; base model)",
    )
    _add_search_args(tune)
    tune.add_argument("--json", type=Path, default=None)
    tune.set_defaults(func=cmd_tune)


def _add_search_args(tune: argparse.ArgumentParser) -> None:
    """``pbp bench tune``'s options of part (3), the search."""
    tune.add_argument("--seeds", default="0,1,2", help="search: seeds, comma-separated, ranges allowed: 0-19")
    tune.add_argument("--search-rows", type=int, default=2000, help="search: stability rows (task.max_rows)")
    tune.add_argument("--trials", type=int, default=20, help="search: num_samples of each search")
    tune.add_argument("--search-epochs", type=int, default=12, help="search: full budget (epochs) of a trial")
    tune.add_argument(
        "--grace",
        type=int,
        default=None,
        help="search: ASHA's grace period (min_resource) in epochs (default: configs/tune/tiny.yaml's)",
    )
    tune.add_argument(
        "--reduction-factor",
        type=int,
        default=None,
        help="search: ASHA's reduction factor (default: configs/tune/tiny.yaml's)",
    )
    tune.add_argument(
        "--pruner",
        choices=("asha", "hyperband", "none"),
        default="asha",
        help="search: the guided search's pruner: the campaign's ASHA (default), Optuna's Hyperband "
        "(grace..epochs, the reduction factor), or none (every trial at full budget)",
    )
    tune.add_argument(
        "--sampler",
        choices=("tpe", "gp"),
        default="tpe",
        help="search: the guided search's sampler: the campaign's TPE (default) or Optuna's GPSampler",
    )
    tune.add_argument(
        "--startup-trials",
        type=int,
        default=None,
        help="search: the sampler's random start-up trials (default: the campaign's)",
    )


def _add_arch(bsub: argparse._SubParsersAction) -> None:
    a = bsub.add_parser(
        "arch",
        help="ProteinBERT's training step against a TAPE-sized Transformer (params, samples/s, peak memory)",
        description="The paper's claim, measured here: definitions in pbp.bench.arch. Each measurement runs in a "
        "fresh process; ratios are ProteinBERT / Transformer at the same length and batch.",
    )
    a.add_argument("--config", default="configs/model/base.yaml", help="ProteinBERT's config (default: the paper's)")
    a.add_argument("overrides", nargs="*", help="dotted model overrides")
    a.add_argument("--seq-lens", default="128,512,1024")
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--steps", type=int, default=2, help="timed steps per measurement (after one warm-up step)")
    a.add_argument("--device", default="cpu", help="cpu or cuda")
    a.add_argument("--json", type=Path, default=None)
    a.set_defaults(func=cmd_arch)


def cmd_arch(args: argparse.Namespace) -> int:
    from pbp.bench.arch import bench_arch
    from pbp.model import ModelConfig

    cfg = load_config(ModelConfig, args.config, args.overrides, section="model")
    lens = tuple(int(x) for x in args.seq_lens.split(",") if x.strip())
    if not lens or min(lens) < 8:
        raise ValueError(f"--seq-lens {args.seq_lens!r}: comma-separated lengths >= 8")
    rows = bench_arch(cfg, lens, args.batch_size, args.steps, device=args.device)
    print(f"{'L':>5} {'params':>14} {'samples/s':>18} {'peak MiB':>18}   (ProteinBERT / Transformer = ratio)")
    for r in rows:
        pb, tf = r.proteinbert, r.transformer
        print(f"{r.seq_len:5d} {pb['params'] / 1e6:4.1f}M/{tf['params'] / 1e6:4.1f}M={r.params_ratio:4.2f} "
              f"{pb['samples_per_s']:6.2f}/{tf['samples_per_s']:6.2f}={r.speed_ratio:5.2f} "
              f"{pb['peak_mib']:6.0f}/{tf['peak_mib']:6.0f}={r.memory_ratio:5.2f}")  # fmt: skip
    _write_json(args.json, {"bench": "arch", "device": args.device, "rows": [asdict(r) for r in rows]})
    return 0


def _add_build(bsub: argparse._SubParsersAction) -> None:
    b = bsub.add_parser(
        "build",
        help="`pbp data build`'s peak memory at several input sizes (target: 4x the records, <= 1.2x the memory)",
        description="Definitions in pbp.bench.build. Each build runs in a fresh process; no stack needed. The "
        "default sizes take about 15 minutes and 6 GB of temporary disk on 2 cores.",
    )
    b.add_argument("--sizes", default="1000000,4000000", help="record counts, smallest first")
    b.add_argument("--work-dir", default=None, help="where inputs and outputs go (default: the system's temp dir)")
    b.add_argument(
        "--ray-workers",
        default="",
        help="also: shards written by these many Ray tasks, e.g. 1,2 "
        "(needs the local stack; compared with an in-process build of --ray-records)",
    )
    b.add_argument("--ray-records", type=int, default=200_000)
    b.add_argument("--json", type=Path, default=None)
    b.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    from pbp.bench.build import bench_build, bench_build_ray

    sizes = tuple(int(x) for x in args.sizes.split(",") if x.strip())
    r = bench_build(sizes, args.work_dir)
    for row in r["builds"]:
        print(f"{row['records']:>10,} records  {row['seconds']:7.1f} s  {row['records'] / row['seconds']:8.0f} "
              f"records/s  peak RSS {row['peak_rss_kb'] / 1024:6.0f} MiB  (imports {row['import_rss_kb'] / 1024:.0f})")  # fmt: skip
    print(f"{r['records_ratio']:.1f}x the records: peak RSS {r['peak_rss_ratio']:.2f}x (target <= 1.2), above the "
          f"imports {r['peak_above_imports_ratio']:.2f}x; records/s {r['records_per_s_ratio']:.2f}x")  # fmt: skip
    if args.ray_workers:
        workers = tuple(int(x) for x in args.ray_workers.split(",") if x.strip())
        r["ray"] = bench_build_ray(args.ray_records, workers)
        for row in r["ray"]["builds"]:
            label = f"{row['ray_workers']} Ray workers" if row["ray_workers"] else "in-process"
            print(f"{args.ray_records:,} records, {label:14s} {row['seconds']:7.1f} s  = {row['speedup']:.2f} x "
                  f"in-process; same shards: {row['identical_shards']}")  # fmt: skip
    _write_json(args.json, {"bench": "build", **r})
    return 0


def _add_report(bsub: argparse._SubParsersAction) -> None:
    r = bsub.add_parser(
        "report",
        help="every benchmark JSON in a directory as one markdown table and one JSON (make bench)",
        description="Definitions: pbp.bench.report. Writes DIR/report.md and DIR/report.json.",
    )
    r.add_argument("dir", type=Path, nargs="?", default=Path("build/bench"))
    r.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from pbp.bench.report import write_report

    md, js = write_report(args.dir)
    print(md.read_text())
    print(f"written: {md} and {js}")
    return 0


def _add_predict(bsub: argparse._SubParsersAction) -> None:
    pr = bsub.add_parser(
        "predict",
        help="pbp predict vs a bare forward pass; mlflow models serve at batch 1 and 64 vs in-process predict",
        description="Definitions: pbp.bench.predict. Needs no stack (the served model is a local pyfunc dir).",
    )
    pr.add_argument("--model", default="base", help="tiny or base (the paper's model; default)")
    pr.add_argument("--n", type=int, default=1000, help="sequences from the stability test file (default 1000)")
    pr.add_argument("--serve-seconds", type=float, default=10.0, help="timed seconds per served batch size")
    pr.add_argument("--parts", default="predict,serve", help="comma-separated: predict,serve")
    pr.add_argument("--json", type=Path, default=None)
    pr.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from pbp.bench import predict as bp

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - {"predict", "serve"}:
        raise ValueError(f"--parts {args.parts!r}: choose from predict,serve")
    out: dict[str, object] = {}
    print(f"{'part':9} {'figure':60} {'ratio':>7}   measured")
    if "predict" in parts:
        out["predict"] = r = bp.bench_predict(args.model, args.n)
        _row("predict", f"{r['model']}, {r['n']} seqs: pbp predict seq/s / bare forward seq/s (>= 0.9)", r["ratio"],
             f"{r['predict_seq_per_s']:.1f} / {r['bare_seq_per_s']:.1f} seq/s ({r['tokens']} tokens)")  # fmt: skip
    if "serve" in parts:
        out["serve"] = r = bp.bench_serve(args.model, args.serve_seconds)
        for b in r["batches"]:
            _row("serve", f"{r['model']}, batch {b['batch']}: served seq/s / in-process pyfunc seq/s", b["ratio"],
                 f"{b['requests_per_s']:.1f} requests/s = {b['seq_per_s']:.1f} seq/s; in-process "
                 f"{b['inprocess_seq_per_s']:.1f} seq/s")  # fmt: skip
    _write_json(args.json, out)
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from pbp.bench.model import DTYPES, bench_model
    from pbp.model import ModelConfig

    cfg = load_config(ModelConfig, args.config, args.overrides, section="model")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"--dtypes: unknown dtype {d!r} (choose from {', '.join(DTYPES)})")
    from pbp.hardware import cpu_bf16_native, cpu_model

    if args.device == "cpu" and "bf16" in dtypes and not cpu_bf16_native() and not args.force_bf16:
        dtypes.remove("bf16")
        print(f"bf16 skipped: {cpu_model()} has no native bf16 (AVX-512 BF16 / AMX), so PyTorch would emulate it "
              "(~14x slower than fp32 here); --force-bf16 times it anyway")  # fmt: skip
        if not dtypes:
            return 0
    results = []
    print(f"model: {args.config or 'paper default'}  seq_len={args.seq_len}  batch_size={args.batch_size}")
    print(
        f"{'dtype':6} {'s/step':>8} {'samples/s':>10} {'tokens/s':>10} {'model GF/s':>11} {'peak GF/s':>10} {'of peak':>8}"
    )
    for d in dtypes:
        r = bench_model(
            cfg,
            dtype=d,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            min_seconds=args.seconds,
            compile=args.compile,
            device=args.device,
        )
        results.append(asdict(r))
        print(
            f"{d:6} {r.seconds_per_step:8.3f} {r.samples_per_s:10.2f} {r.tokens_per_s:10.0f} "
            f"{r.model_flops_per_s / 1e9:11.1f} {r.matmul_peak_flops_per_s / 1e9:10.1f} {r.fraction_of_peak:8.3f}",
            flush=True,
        )
    _write_json(args.json, {"config": args.config, "results": results})
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from pbp.bench.stack import bench_stack

    res = bench_stack(workers=args.workers, rounds=args.rounds)
    print(f"stack with {args.workers} Ray worker nodes (target: healthy in under {res['target_healthy_s']:.0f} s)")
    print(f"{'start':6} {'up -> healthy':>14} {'down':>8}   per service (s)")
    rounds: list[dict] = res["rounds"]  # type: ignore[assignment]
    for r in rounds:
        per = " ".join(f"{k}={v:.1f}" for k, v in r["per_service_s"].items())
        print(f"{r['start']:6} {r['up_s']:13.1f}s {r['down_s']:7.1f}s   {per}")
    print(f"worst up / target = {res['worst_up_over_target']:.2f}")
    _write_json(args.json, res)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    import tempfile

    from pbp.bench.data import TARGET_SAMPLES_S, bench_data, ensure_bench_dataset

    workers = tuple(int(x) for x in args.workers.split(",") if x.strip())
    with tempfile.TemporaryDirectory() as tmp:
        url = ensure_bench_dataset(args.url, args.proteins, Path(tmp))
    r = bench_data(url, workers=workers)
    print(f"dataset {r['url']}: {r['shards']} shards, {r['samples']} samples, {r['bytes'] / 1e6:.1f} MB")
    print(f"raw sequential GET   {r['raw_get_mb_s']:8.1f} MB/s {r['raw_get_samples_s']:10.0f} samples/s")
    for w in r["workers"]:
        label = "in-process" if w["workers"] == 0 else f"{w['workers']} workers"
        runs = ", ".join(f"{x:.0f}" for x in w["runs_samples_s"])
        print(f"reader, {label:11s} {w['samples_s']:10.0f} samples/s at L={r['seq_len']}   = {w['speedup']:.2f} x "
              f"the first   (median of {runs})")  # fmt: skip
    print(f"reader / target ({TARGET_SAMPLES_S:,} samples/s per process) = {r['reader_over_target']:.2f}; "
          f"reader / raw GET = {r['reader_over_raw_get']:.3f}")  # fmt: skip
    print(f"base model training  {r['model_base_fp32_samples_s']:19.1f} samples/s (fp32, L={r['seq_len']}, batch 16)"
          f"   reader = {r['reader_over_model']:.0f} x what training consumes")  # fmt: skip
    _write_json(args.json, r)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if not args.no_ray:
        from pbp.stack.endpoints import set_ray_auth_env

        set_ray_auth_env()  # before DeepSpeed/Ray are imported
    from pbp.bench.train import bench_train, checkpoint_cost
    from pbp.model import ModelConfig

    out = {}
    for path in [c.strip() for c in args.configs.split(",") if c.strip()]:
        cfg = load_config(ModelConfig, path, section="model")
        r = bench_train(cfg, args.batch_size, args.seq_len, args.warmup, args.steps, args.zero_stage,
                        with_ray=not args.no_ray, cpus=args.worker_cpus)  # fmt: skip
        r["checkpoint"] = checkpoint_cost(cfg, args.zero_stage) if not args.no_ray else None
        out[path] = r
        line = (f"{path}: bare {r['bare_s_per_step']:.3f} s/step | DeepSpeed {r['deepspeed_s_per_step']:.3f} "
                f"({r['deepspeed_over_bare']:.3f}x)")  # fmt: skip
        if "ray_deepspeed_s_per_step" in r:
            line += (
                f" | Ray Train + DeepSpeed {r['ray_deepspeed_s_per_step']:.3f} ({r['ray_deepspeed_over_bare']:.3f}x)"
            )
        print(line, flush=True)
        if r["checkpoint"]:
            ck = r["checkpoint"]
            print(f"  checkpoint {ck['checkpoint_bytes'] / 1e6:.1f} MB: save+commit {ck['save_commit_s']:.2f} s vs "
                  f"raw upload {ck['raw_upload_s']:.2f} s ({ck['ratio']:.2f}x)", flush=True)  # fmt: skip
    _write_json(args.json, out)
    return 0


TUNE_PARTS = ("overhead", "cache", "exchange", "search")


def cmd_tune(args: argparse.Namespace) -> int:
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(TUNE_PARTS))
    if unknown or not parts:
        raise ValueError(f"--parts: unknown {', '.join(unknown) or 'nothing'} (choose from {', '.join(TUNE_PARTS)})")
    from pbp.tune.config import TPE_STARTUP_TRIALS

    startup = TPE_STARTUP_TRIALS if args.startup_trials is None else args.startup_trials
    if startup < 0:  # before the parts that come first spend minutes
        raise ValueError(f"--startup-trials must be >= 0, got {startup}")
    seeds = parse_seeds(args.seeds)
    if "overhead" in parts:
        from pbp.stack.endpoints import set_ray_auth_env

        set_ray_auth_env()  # before Ray is imported
    from pbp.bench import tune as bt

    if "overhead" in parts:
        bt.require_stack()  # before anything slow
    out: dict[str, object] = {}
    print(f"{'part':9} {'figure':60} {'ratio':>7}   measured")
    for part in parts:
        if part == "overhead":
            with tempfile.TemporaryDirectory(prefix="pbp-bench-tune-") as tmp:
                out[part] = r = bt.bench_overhead(Path(tmp))
            _row(part, "1-trial campaign (tiny): trial wall / its training epochs", r["ratio"],
                 f"{r['trial_wall_s']:.1f} s / {r['train_s']:.2f} s")  # fmt: skip
            _row(part, "  campaign wall (run_campaign) / the same training", r["campaign_over_train"],
                 f"{r['campaign_wall_s']:.1f} s")  # fmt: skip
            slow = r["ray_default_poll"]
            _row(part, "  trial wall with Ray Train's 2 s report poll / pbp's", r["poll_ratio"],
                 f"{slow['trial_wall_s']:.1f} s / {r['trial_wall_s']:.1f} s (training {slow['train_s']:.2f} s)")  # fmt: skip
        elif part == "cache":
            runs = [bt.bench_cache(args.rows, args.epochs)]
            if args.base_rows:
                runs.append(bt.bench_cache(args.base_rows, args.epochs, bt.MODEL_BASE))
            out[part] = runs
            for c in runs:
                _row(part, f"{c['label']}, {c['rows']} rows, {c['epochs']} frozen epochs: cache / none", c["ratio"],
                     f"{c['with_cache_s']:.2f} s (build {c['cache_build_s']:.2f}) / {c['without_cache_s']:.2f} s; "
                     f"head after epoch 1: max |diff| {c['head_max_abs_diff_epoch1']:.1e}")  # fmt: skip
            if args.cache_ranks > 1:
                out["cache_ranks"] = c = bt.bench_cache_ranks(args.ranks_rows, args.cache_ranks, bt.MODEL_BASE)
                _row(part, f"{c['label']}, {c['rows']} rows: cache build on {c['ranks']} ranks / 1 rank", c["ratio"],
                     f"{c['ranks_s']:.2f} s / {c['one_rank_s']:.2f} s (1 thread each); features max |diff| "
                     f"{c['features_max_abs_diff']:.1e}")  # fmt: skip
        elif part == "exchange":
            out[part] = x = bt.bench_gradient_exchange()
            _row(part, f"base body's gradients ({x['tensors']} tensors), {x['ranks']} gloo ranks: bucketed / "
                 "per tensor", x["ratio"], f"{x['bucketed']:.3f} s / {x['per_tensor']:.3f} s per exchange "
                 "(1 thread each)")  # fmt: skip
        else:
            grace, factor = bt.asha_settings(args.grace, args.reduction_factor)
            out[part] = s = bt.bench_search(seeds, args.search_rows, args.trials, args.search_epochs, grace, factor,
                                            args.pruner, startup, args.sampler)  # fmt: skip
            _print_search(s)
    _write_json(args.json, out)
    return 0


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: "0,1,2", "0-19" or a mix ("0-4,9") -> the seeds in order."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part and seeds:
            continue  # a trailing or doubled comma
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi if dash else lo)
        except ValueError:
            first, last = 0, -1
        if last < first:
            raise ValueError(f"--seeds: {part!r} is not a seed or a range A-B with A <= B (in {text!r})")
        seeds += range(first, last + 1)
    return seeds


def _print_search(s: dict) -> None:
    print(f"search: {s['trials']} trials x {s['epochs']} epochs, {s['rows']} rows; pruner {s['pruner']}, grace "
          f"{s['grace_period']}, reduction factor {s['reduction_factor']}; sampler {s.get('sampler', 'tpe').upper()} with {s['startup_trials']} random start-up trials",
          flush=True)  # fmt: skip
    for r in s["seeds"]:
        got = (f"{r['compute']} in {r['trials']} trials ({r['guided_completed']} completed)" if r["reached"]
               else f"not reached: {r['compute']}")  # fmt: skip
        _row("search", f"seed {r['seed']}: {s['guided']} trial-epochs to random's best / random's", r["ratio"],
             f"{got} / {r['random_compute']}; random's best {r['target']:.4f}, first seen at "
             f"{r['random_own_best_at']:.2f} of its compute; {r['seconds']:.0f} s")  # fmt: skip
        _row("search", "  its best within 1/3 of random's compute / random's best",
             r["value_at_third_over_target"], f"{r['value_at_third'] or math.nan:.4f}")  # fmt: skip
        _row("search", "  baseline, random search from the same start-up draws: the same ratio",
             r["unguided_ratio"], "" if r["unguided_reached"] else "not reached")  # fmt: skip
    n = len(s["seeds"])
    _row("search", f"mean of {n} seeds: trial-epochs ratio (target <= 0.33)", s["mean_ratio"],
         "" if s["all_reached"] else "a seed that did not reach counts the compute it spent (>= 1)")  # fmt: skip
    _row("search", f"mean of {n} seeds: the baseline's (no guidance)", s["mean_unguided_ratio"], "")
    _row("search", f"mean of {n} seeds: best within 1/3 compute / random's best", s["mean_value_at_third"], "")


def _row(part: str, figure: str, ratio: float, measured: str) -> None:
    print(f"{part:9} {figure:60} {ratio:7.3f}   {measured}", flush=True)


def _add_gpu(bsub: argparse._SubParsersAction) -> None:
    from pbp.bench.gpu import PARTS

    gpu = bsub.add_parser(
        "gpu",
        help="on a CUDA machine: the model's speed, fine-tuning and pretraining loops with resume, the paper's model",
        description="Runs without Ray, MLflow or S3 (the loops in this process, runs stored under --work). Parts: "
        "model (base model fp32/bf16 as fractions of this run's matmul peak), finetune (tiny, killed after epoch 2 "
        "and resumed), pretrain (DeepSpeed, resumed), paper (the paper's model on stability within --budget-s).",
    )
    gpu.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {','.join(PARTS)}")
    gpu.add_argument("--data-dir", type=Path, default=Path("../shared/data/proteinbert_benchmarks"),
                     help="the benchmark CSVs (stability.{train,valid,test}.csv)")  # fmt: skip
    gpu.add_argument("--work", type=Path, default=None, help="where runs and the synthetic dataset go (default: a "
                     "temporary folder)")  # fmt: skip
    gpu.add_argument("--budget-s", type=float, default=420.0, help="seconds for all parts, a target: the paper part "
                     "fits its unfrozen epochs into what is left, from an epoch's estimated time")  # fmt: skip
    gpu.add_argument("--model-seconds", type=float, default=8.0, help="minimum timed seconds per dtype")
    gpu.add_argument("--json", type=Path, default=None, help="also write the results here (after each part)")
    gpu.set_defaults(func=cmd_gpu)


def cmd_gpu(args: argparse.Namespace) -> int:
    import torch

    from pbp.bench.gpu import PARTS, run_parts
    from pbp.errors import UserError
    from pbp.hardware import describe

    parts = [p for p in args.parts.split(",") if p]
    if unknown := sorted(set(parts) - set(PARTS)):
        raise UserError(f"--parts: unknown {', '.join(unknown)} (known: {', '.join(PARTS)})")
    if not torch.cuda.is_available():
        raise UserError("pbp bench gpu needs a CUDA GPU, and torch sees none (torch.cuda.is_available() is False)")
    doc: dict[str, object] = {"machine": describe()}

    def done(part: str, result: object) -> None:
        doc[part] = result
        _write_json(args.json, doc)

    with tempfile.TemporaryDirectory(prefix="pbp-bench-gpu-") as tmp:
        run_parts(parts, args.data_dir.resolve(), (args.work or Path(tmp)).resolve(), args.budget_s,
                  args.model_seconds, done)  # fmt: skip
    print(json.dumps(doc, indent=1, default=str))
    return 1 if any(isinstance(v, dict) and "error" in v.get("result", {}) for v in doc.values()) else 0

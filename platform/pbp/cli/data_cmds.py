"""``pbp data synth|build|inspect``: protein data to WebDataset shards in object storage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="protein data: synthesize, build shards, inspect datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    synth = dsub.add_parser("synth", help="write a SYNTHETIC corpus (FASTA + GO table) with planted motifs")
    synth.add_argument("--out", type=Path, required=True, help="output directory")
    synth.add_argument("--proteins", type=int, default=2000)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_synth)

    build = dsub.add_parser(
        "build",
        help="FASTA/UniProt (+ GO table) -> WebDataset shards + manifest at a local or s3:// URL",
        description="Reads the input once, bounded memory (hash partitions spilled to --tmp-dir); deterministic "
        "train/valid split and shuffle; manifest.json written last.",
    )
    src = build.add_mutually_exclusive_group(required=True)
    src.add_argument("--fasta", type=Path, help="FASTA (.gz ok), UniProt/UniRef or bare headers")
    src.add_argument("--uniprot", type=Path, help="UniProt flat file (.dat/.txt, .gz ok) with DR GO lines")
    build.add_argument("--go-table", type=Path, help="GO annotations for --fasta: TSV (accession, GO id) or GAF 2.x")
    build.add_argument("--go-obo", type=Path, help="propagate annotations to ancestors with this go-basic.obo")
    build.add_argument("--go-names", type=Path,
                       help="GO term names for the manifest (an OBO, or a TSV: GO id<TAB>name); default: --go-obo's")  # fmt: skip
    build.add_argument("--out", required=True, help="s3://bucket/prefix/ or a local directory")
    build.add_argument("--shard-size-mb", type=float, default=64.0)
    build.add_argument("--min-go-records", type=int, default=100)
    build.add_argument("--valid-fraction", type=float, default=0.05)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                       help="bad records: stop with an error naming them, or skip them into quarantine.jsonl")  # fmt: skip
    build.add_argument("--strict", action="store_true", help="reject residues outside the 22-letter alphabet")
    build.add_argument("--format-version", type=int, choices=(1, 2), default=2,
                       help="2: shards carry an index of token ids (pbp's reader reads it, not the JSON); 1: no index, "
                       "for pbp readers older than format 2")  # fmt: skip
    build.add_argument("--no-progress", action="store_true")
    build.add_argument("--force", action="store_true", help="overwrite shards of an earlier build in a local --out")
    build.add_argument("--ray-workers", type=int, default=0,
                       help="write shards as this many Ray tasks at once on the cluster (--out must be s3://)")  # fmt: skip
    build.add_argument("--address", default=None, help="Ray GCS address (default: RAY_ADDRESS, else the local stack)")
    build.add_argument(
        "--tmp-dir",
        default=None,
        help="where the build spills (about twice the input's uncompressed size); default: system temp",
    )
    build.set_defaults(func=cmd_build)

    insp = dsub.add_parser("inspect", help="manifest summary; verifies every shard's size and sha256")
    insp.add_argument("url")
    insp.add_argument("--no-verify", action="store_true", help="skip reading the shards")
    insp.add_argument("--json", action="store_true")
    insp.set_defaults(func=cmd_inspect)


def cmd_synth(args: argparse.Namespace) -> int:
    from pbp.data.synth import SynthConfig, write_corpus

    fasta, table = write_corpus(args.out, SynthConfig(n_proteins=args.proteins, seed=args.seed))
    print(f"wrote {args.proteins} SYNTHETIC proteins: {fasta} and {table}")
    return 0


def _progress(enabled: bool, tty: bool | None = None):
    """-> (``make(label, total)`` starting a phase's progress and returning its ``update(n)``, the open bars to
    close): bars on a terminal, plain lines in a log file (``pbp.console.progress``)."""
    from pbp.console import progress

    bars: list = []

    def make(label: str, total: int | None):
        if bars:
            bars[-1].close()
        bars.append(progress(label, "rec" if "shard" not in label else "shard", total, enabled, tty))
        return bars[-1].update

    return make, bars


def cmd_build(args: argparse.Namespace) -> int:
    from pbp.data.shards import BuildConfig, Inputs, build

    cfg = BuildConfig(
        shard_size_mb=args.shard_size_mb,
        min_go_records=args.min_go_records,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        on_error=args.on_error,
        unknown="error" if args.strict else "other",
        go_obo=str(args.go_obo) if args.go_obo else None,
        go_names=str(args.go_names) if args.go_names else None,
        tmp_dir=args.tmp_dir,
        format_version=args.format_version,
    )
    shard_map = None
    if args.ray_workers:
        if not args.out.startswith("s3://"):
            raise ValueError(f"--out {args.out}: --ray-workers writes shards from Ray workers, which may run on other "
                             "machines: give an s3:// --out")  # fmt: skip
        from pbp.train.launch import RayShardMap

        shard_map = RayShardMap(args.ray_workers, args.address)
    make, bars = _progress(not args.no_progress)
    try:
        report = build(args.out, Inputs(args.fasta, args.go_table, args.uniprot), cfg, progress=make,
                       overwrite=args.force, shard_map=shard_map)  # fmt: skip
    except KeyboardInterrupt:  # it said only "interrupted": what it left, and what to do with it
        raise KeyboardInterrupt(f"the build into {args.out} stopped before its manifest: the shards it wrote there are "
                                "not a dataset (`pbp data inspect` says so); build again into another location, or "
                                "into the same one with --force") from None  # fmt: skip
    finally:
        for b in bars:
            b.close()
    m = report.manifest
    splits = ", ".join(f"{s}: {v['samples']} samples in {len(v['shards'])} shards" for s, v in m["splits"].items())
    annotated = m["records"] - m["records_without_vocabulary_annotation"]
    print(f"dataset {report.url} ({report.seconds:.1f}s): {m['records']} records; {splits}; "
          f"{len(m['go_vocabulary'])} GO terms (>= {cfg.min_go_records} proteins), on {annotated} records")  # fmt: skip
    if not m["go_vocabulary"]:
        fix = (
            f"lower --min-go-records (now {cfg.min_go_records})" if args.go_table or args.uniprot else "add --go-table"
        )
        print("note: the dataset carries no GO annotations, and pbp pretrain needs at least one term (ProteinBERT "
              f"learns annotations beside residues); {fix} to pretrain on it")  # fmt: skip
    if m["skipped"]:
        print(
            f"skipped {sum(m['skipped'].values())} bad records {m['skipped']}; listed in {report.url}quarantine.jsonl"
        )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pbp.data.shards import inspect

    info = inspect(args.url, verify=not args.no_verify)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"dataset {info['url']}: {info['records']} records, {info['go_vocabulary']} GO terms, "
              f"format {info['format_version']}, built by pbp {info['pbp_version']}")  # fmt: skip
        for s, v in info["splits"].items():
            print(f"  {s:6} {v['samples']:>9} samples in {v['shards']} shards")
        if info["skipped"]:
            print(f"  skipped at build: {info['skipped']}")
        print("  shards verified (size + sha256): " + ("ok" if not info["problems"] else "PROBLEMS") if info["verified"]
              else "  shards not verified")  # fmt: skip
        for p in info["problems"]:
            print(f"  - {p}")
    return 1 if info["problems"] else 0

"""``pbp data build`` / ``pbp data inspect``: versioned WebDataset shards plus a manifest that commits them.

Build (two streaming passes over the input, so memory does not grow with it beyond one shard):
  1. read and validate every record (bad ones raise, or are skipped into the quarantine), count GO terms;
  2. assign each protein to train/valid by a hash of its accession (stable across re-runs and inputs), and to a
     shard by a seeded hash (a shuffle across shards); shuffle within each shard; write tar shards with fixed
     metadata, so the same input gives byte-identical shards.
Then upload shards, the quarantine list, and LAST ``manifest.json``: shard names, sample counts, bytes and sha256,
the GO vocabulary (with term names where known), the input files' digests, skipped-record counts, the pbp version.
A prefix without a manifest is not a dataset; readers refuse it.

Sample layout: one ``<key>.json`` member per protein: ``{"accession", "sequence", "go": [vocabulary indices]}``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pbp.data.formats import read_fasta, read_go_table, read_uniprot_flat
from pbp.data.go import Ontology, build_vocabulary, read_go_names, read_obo
from pbp.data.records import ErrorLog, OnError, ProteinRecord, RecordError
from pbp.data.storage import Store
from pbp.model.tokenizer import UnknownPolicy

MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
FORMAT = "pbp.dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "valid")


class DatasetError(ValueError):
    """A dataset that is not one (no manifest) or is damaged; the message names the URL or shard."""


@dataclass
class BuildConfig:
    shard_size_mb: float = 64.0
    """Target uncompressed size of a shard."""
    min_go_records: int = 100
    """A GO term enters the vocabulary when at least this many proteins carry it (the original: 100)."""
    valid_fraction: float = 0.05
    """Share of proteins in the valid split, chosen by a hash of the accession."""
    seed: int = 0
    """Seed of the shuffle across and within shards."""
    on_error: OnError = "raise"
    unknown: UnknownPolicy = "other"
    """``error`` rejects residues outside the 22-letter alphabet (the strict policy)."""
    go_obo: str | None = None
    """Propagate annotations to ancestors using this go-basic.obo (the original did not)."""
    go_names: str | None = None
    """GO term names for the manifest from this file (an OBO, or a ``GO id<TAB>name`` table); default: go_obo's."""

    def __post_init__(self) -> None:
        if self.shard_size_mb <= 0:
            raise ValueError("shard_size_mb must be > 0")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError("valid_fraction must be in [0, 1)")
        if self.min_go_records < 1:
            raise ValueError("min_go_records must be >= 1")


def _h64(text: str, salt: str = "") -> int:
    return int.from_bytes(hashlib.blake2b(f"{salt}\0{text}".encode(), digest_size=8).digest(), "big")


def split_of(accession: str, valid_fraction: float) -> str:
    return "valid" if _h64(accession, "split") % 1_000_000 < valid_fraction * 1_000_000 else "train"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Inputs:
    fasta: Path | None = None
    go_table: Path | None = None
    uniprot: Path | None = None

    def __post_init__(self) -> None:
        if (self.fasta is None) == (self.uniprot is None):
            raise ValueError("give exactly one sequence input: --fasta or --uniprot")
        if self.go_table is not None and self.fasta is None:
            raise ValueError("--go-table joins annotations to a --fasta input")

    def files(self) -> list[Path]:
        return [p for p in (self.fasta, self.go_table, self.uniprot) if p is not None]


def _records(inputs: Inputs, cfg: BuildConfig, errors: ErrorLog, annotations) -> Iterator[ProteinRecord]:
    if inputs.uniprot is not None:
        return read_uniprot_flat(inputs.uniprot, errors, cfg.unknown)
    return read_fasta(inputs.fasta, errors, cfg.unknown, annotations)  # type: ignore[arg-type]


def _dedup(records: Iterator[ProteinRecord], errors: ErrorLog) -> Iterator[ProteinRecord]:
    first_line: dict[int, int] = {}  # 64-bit hash of the accession -> line where it was first seen
    for rec in records:
        h = _h64(rec.accession)
        if h in first_line:
            errors.handle(
                RecordError(
                    rec.source,
                    rec.line,
                    rec.accession,
                    "duplicate_accession",
                    f"duplicate accession (first at line {first_line[h]})",
                )
            )
            continue
        first_line[h] = rec.line
        yield rec


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


@dataclass
class BuildReport:
    manifest: dict
    url: str
    seconds: float
    errors: ErrorLog = field(default_factory=ErrorLog)


def check_destination(store: Store, overwrite: bool = False) -> None:
    """Before reading any input: an S3 bucket must exist (pbp never creates one: a typo would otherwise become a new
    bucket); a complete dataset is never overwritten; a local directory holding files the build writes (shards,
    quarantine) is refused unless ``overwrite``."""
    if store.s3:
        bucket = store.url[len("s3://") :].split("/", 1)[0]
        if not store.bucket_exists():
            raise DatasetError(
                f"{store.url}: bucket {bucket!r} does not exist; pbp does not create buckets (a typo would become a "
                f"new bucket): create it (`aws s3 mb s3://{bucket}`) or use an existing one, e.g. one of the local "
                "stack's (`pbp stack status`)"
            )
    if store.exists(MANIFEST):
        raise DatasetError(f"{store.join(MANIFEST)}: a dataset already exists here; build into a new prefix")
    if not store.s3 and store.root.is_dir() and not overwrite:
        ours = sorted(p.name for p in store.root.iterdir() if p.name == QUARANTINE
                      or (p.suffix == ".tar" and p.name.split("-", 1)[0] in SPLITS))  # fmt: skip
        if ours:
            more = f" and {len(ours) - 3} more" if len(ours) > 3 else ""
            raise DatasetError(
                f"{store.root}: holds {len(ours)} file(s) this build would overwrite ({', '.join(ours[:3])}{more}); "
                "build into an empty directory, remove them, or pass --force to overwrite"
            )


def build(
    out_url: str,
    inputs: Inputs,
    cfg: BuildConfig | None = None,
    *,
    store: Store | None = None,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
    overwrite: bool = False,
) -> BuildReport:
    """Build a dataset at ``out_url`` (see module docstring). ``progress(label, total)`` returns an updater.
    ``overwrite`` lets a build replace same-named files in a local directory (``--force``)."""
    import pbp

    cfg = cfg or BuildConfig()
    t0 = time.monotonic()
    store = store or Store(out_url)
    check_destination(store, overwrite)
    tick = progress or (lambda _label, _total: lambda _n: None)
    onto: Ontology | None = read_obo(cfg.go_obo) if cfg.go_obo else None
    names = _term_names(cfg, onto)
    annotations = read_go_table(inputs.go_table) if inputs.go_table else None
    stats: Counter[str] = Counter()

    def records(errors: ErrorLog) -> Iterator[ProteinRecord]:
        for rec in _dedup(_records(inputs, cfg, errors, annotations), errors):
            if onto is not None and rec.go_terms:
                rec = ProteinRecord(
                    rec.accession, rec.sequence, onto.propagate(rec.go_terms, stats), rec.source, rec.line
                )
            yield rec

    # Pass 1: validate, count terms and sizes.
    errors = ErrorLog(cfg.on_error)
    term_counts: Counter[str] = Counter()
    split_bytes: Counter[str] = Counter()
    n_records = 0
    update = tick("reading", None)
    for rec in records(errors):
        term_counts.update(rec.go_terms)
        # JSON text plus the tar member's header and padding (~1 KiB)
        split_bytes[split_of(rec.accession, cfg.valid_fraction)] += len(rec.sequence) + 6 * len(rec.go_terms) + 1100
        n_records += 1
        update(1)
    if n_records == 0:
        raise DatasetError(f"no valid records in {', '.join(map(str, inputs.files()))}")
    vocab = build_vocabulary(term_counts, cfg.min_go_records)
    index = {t: i for i, t in enumerate(vocab)}
    shard_bytes = cfg.shard_size_mb * 2**20
    n_shards = {s: max(1, math.ceil(split_bytes[s] / shard_bytes)) if split_bytes[s] else 0 for s in SPLITS}

    # Pass 2: spill records into per-shard files (bounded memory), then shuffle and tar each shard.
    manifest_splits: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="pbp-build-") as tmp:
        spill = {
            (s, i): open(Path(tmp) / f"{s}-{i:06d}.jsonl", "w")  # noqa: SIM115 - closed below
            for s in SPLITS
            for i in range(n_shards[s])
        }
        update = tick("encoding", n_records)
        unannotated = 0
        for rec in records(ErrorLog("skip")):  # pass 1 already raised or counted every error
            s = split_of(rec.accession, cfg.valid_fraction)
            go = [index[t] for t in rec.go_terms if t in index]
            unannotated += not go
            sample = {"accession": rec.accession, "sequence": rec.sequence, "go": go}
            spill[(s, _h64(rec.accession, f"shard{cfg.seed}") % n_shards[s])].write(json.dumps(sample) + "\n")
            update(1)
        for f in spill.values():
            f.close()
        update = tick("writing shards", sum(n_shards.values()))
        for s in SPLITS:
            shards = []
            for i in range(n_shards[s]):
                lines = (Path(tmp) / f"{s}-{i:06d}.jsonl").read_text().splitlines()
                random.Random(f"{cfg.seed}-{s}-{i}").shuffle(lines)
                name = f"{s}-{i:06d}.tar"
                local = Path(tmp) / name
                with tarfile.open(local, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for j, line in enumerate(lines):
                        _tar_member(tar, f"{s[0]}{i:06d}_{j:07d}.json", line.encode() + b"\n")
                digest = file_sha256(local)
                store.put_file(name, local)
                shards.append(
                    {
                        "name": name,
                        "url": store.join(name),
                        "samples": len(lines),
                        "bytes": local.stat().st_size,
                        "sha256": digest,
                    }
                )
                local.unlink()
                update(1)
            manifest_splits[s] = {"samples": sum(x["samples"] for x in shards), "shards": shards}

    quarantine = None
    if errors.total:
        store.put_bytes(QUARANTINE, errors.quarantine_jsonl())
        quarantine = QUARANTINE
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pbp_version": pbp.__version__,
        "created_unix": int(time.time()),
        "records": n_records,
        "records_without_vocabulary_annotation": unannotated,
        "splits": manifest_splits,
        "go_vocabulary": vocab,
        "go_vocabulary_names": [names.get(t) for t in vocab],  # aligned with go_vocabulary; null where unknown
        "go": {"min_records": cfg.min_go_records, "propagated": onto is not None, **dict(stats)},
        "inputs": [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in inputs.files()],
        "skipped": dict(errors.counts),
        "quarantine": quarantine,
        "build": asdict(cfg),
    }
    store.put_bytes(MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())  # LAST: commits the dataset
    return BuildReport(manifest, store.url, time.monotonic() - t0, errors)


def _term_names(cfg: BuildConfig, onto: Ontology | None) -> dict[str, str]:
    if cfg.go_names:
        return read_go_names(cfg.go_names)
    if onto is not None:
        return onto.names
    return {}


# ---- reading the manifest, inspecting ---------------------------------------------------------------------------


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest as canonical JSON: identifies a dataset in lineage tags."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def load_manifest(url: str, store: Store | None = None) -> dict:
    store = store or Store(url)
    try:
        raw = store.get_bytes(MANIFEST)
    except FileNotFoundError:
        raise DatasetError(
            f"{store.join(MANIFEST)}: no manifest, so {store.url} is not a (complete) pbp dataset; "
            "an interrupted `pbp data build` leaves shards without one"
        ) from None
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{store.join(MANIFEST)}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{store.join(MANIFEST)}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DatasetError(f"{store.join(MANIFEST)}: format_version {manifest['format_version']} is too new")
    return manifest


def inspect(url: str, verify: bool = True, store: Store | None = None) -> dict:
    """Manifest summary; with ``verify``, every shard's size and sha256 are checked (DatasetError names the shard)."""
    store = store or Store(url)
    manifest = load_manifest(url, store)
    problems = []
    if verify:
        for s in SPLITS:
            for shard in manifest["splits"].get(s, {}).get("shards", []):
                problem = verify_shard(store, shard)
                if problem:
                    problems.append(problem)
    return {
        "url": store.url,
        "records": manifest["records"],
        "splits": {s: {"samples": v["samples"], "shards": len(v["shards"])} for s, v in manifest["splits"].items()},
        "go_vocabulary": len(manifest["go_vocabulary"]),
        "go": manifest["go"],
        "skipped": manifest["skipped"],
        "pbp_version": manifest["pbp_version"],
        "verified": verify,
        "problems": problems,
    }


def verify_shard(store: Store, shard: dict) -> str | None:
    name = shard["name"]
    if not store.exists(name):
        return f"{store.join(name)}: missing"
    size = store.size(name)
    if size != shard["bytes"]:
        return f"{store.join(name)}: {size} bytes, manifest says {shard['bytes']}"
    h = hashlib.sha256()
    with store.open(name) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != shard["sha256"]:
        return f"{store.join(name)}: sha256 mismatch (manifest {shard['sha256'][:12]}..., data {h.hexdigest()[:12]}...)"
    return None

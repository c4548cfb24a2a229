"""``pbp data build`` / ``pbp data inspect``: versioned WebDataset shards plus a manifest that commits them.

Build (the input read once; memory bounded whatever its size, see ``BuildConfig.partition_mb``):
  1. read and validate every record, spill it (and the GO table's rows) to hash partitions by accession;
  2. per partition: drop duplicate accessions, join GO annotations, propagate them, count terms and sizes;
  3. assign each protein to train/valid by a hash of its accession (stable across re-runs and inputs), and to a
     shard by a seeded hash (a shuffle across shards);
  4. per shard: input order, a seeded shuffle, a tar with fixed metadata, so the same input gives byte-identical
     shards (whatever the partitioning).
Then upload shards, the quarantine list, and LAST ``manifest.json``: shard names, sample counts, bytes and sha256,
the GO vocabulary (with term names where known), the input files' digests, skipped-record counts, the pbp version.
A prefix without a manifest is not a dataset; readers refuse it.

Sample layout: one ``<key>.json`` member per protein: ``{"accession", "sequence", "go": [vocabulary indices]}``
(what ``wds.WebDataset(url)`` reads); format 2 (the default) adds, last, an ``__pbp_index__`` member holding the same
samples as arrays (token ids, GO indices, accessions: :mod:`pbp.data.shard_index`), located by the manifest's
``index`` record of each shard, which is what pbp's reader reads. Format 1 (``format_version: 1``) has no index.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import itertools
import json
import math
import random
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pbp.config import check_range
from pbp.data.formats import collect_go, iter_go_table, read_fasta, read_uniprot_flat
from pbp.data.go import Ontology, build_vocabulary, read_go_names, read_obo
from pbp.data.records import ErrorLog, OnError, ProteinRecord, RecordError
from pbp.data.shard_index import MEMBER as INDEX_MEMBER
from pbp.data.shard_index import encode_index
from pbp.data.spill import Partitions, key_hash, max_open_files, partitions_for
from pbp.data.storage import Store
from pbp.model.tokenizer import UnknownPolicy, encode_normalized
from pbp.scratch import scratch
from pbp.stack.endpoints import Endpoints, s3_bucket_and_key

MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
FORMAT = "pbp.dataset"
FORMAT_VERSION = 2
FORMAT_VERSIONS = (1, 2)
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
    partition_mb: float = 64.0
    """Spilled records per partition of the duplicate check and GO join: the build's memory grows with this (and
    with ``shard_size_mb``), not with the input. Changes no output (shards, manifest, quarantine order)."""
    tmp_dir: str | None = None
    """Where the build spills (about twice the input's uncompressed size at its peak); default: the system's."""
    format_version: int = FORMAT_VERSION
    """2: each shard carries an index of token ids that the reader reads instead of its JSON members (see
    :mod:`pbp.data.shard_index`); 1: no index, the format pbp wrote before (a reader of that time refuses 2)."""

    def __post_init__(self) -> None:
        if self.format_version not in FORMAT_VERSIONS:
            raise ValueError(f"format_version must be one of {FORMAT_VERSIONS}, got {self.format_version!r}")
        check_range("shard_size_mb", self.shard_size_mb, 0.01)  # 10 KiB: smaller makes shards by the million
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError("valid_fraction must be in [0, 1)")
        if self.min_go_records < 1:
            raise ValueError("min_go_records must be >= 1")
        if self.partition_mb <= 0:
            raise ValueError("partition_mb must be > 0")


def split_of(accession: str, valid_fraction: float) -> str:
    return "valid" if key_hash(accession, "split") % 1_000_000 < valid_fraction * 1_000_000 else "train"


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


def _records(inputs: Inputs, cfg: BuildConfig, errors: ErrorLog) -> Iterator[ProteinRecord]:
    if inputs.uniprot is not None:
        return read_uniprot_flat(inputs.uniprot, errors, cfg.unknown)
    return read_fasta(inputs.fasta, errors, cfg.unknown)  # type: ignore[arg-type]


def _dedup(records: Iterator[ProteinRecord], on_duplicate: Callable[[RecordError], None]) -> Iterator[ProteinRecord]:
    """Drop every record whose accession came earlier (reported naming the first line). Holds one entry per
    accession: the build calls it on one partition at a time (all records of an accession share a partition)."""
    first_line: dict[str, int] = {}
    for rec in records:
        if rec.accession in first_line:
            on_duplicate(
                RecordError(
                    rec.source,
                    rec.line,
                    rec.accession,
                    "duplicate_accession",
                    f"duplicate accession (first at line {first_line[rec.accession]})",
                )
            )
            continue
        first_line[rec.accession] = rec.line
        yield rec


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Adds a member with fixed metadata; -> where its data starts in the archive."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    start = tar.offset
    tar.addfile(info, io.BytesIO(data))
    return start + len(info.tobuf(tarfile.USTAR_FORMAT))


@dataclass
class BuildReport:
    manifest: dict
    url: str
    seconds: float
    errors: ErrorLog = field(default_factory=ErrorLog)


def _stack_buckets() -> list[str]:
    from pbp.stack.endpoints import resolve

    return sorted(resolve().buckets.values())


def check_destination(store: Store, overwrite: bool = False) -> None:
    """Before reading any input: an S3 bucket must exist (pbp never creates one: a typo would otherwise become a new
    bucket); a complete dataset is never overwritten; a local directory holding files the build writes (shards,
    quarantine), in a local directory or an S3 prefix, is refused unless ``overwrite``."""
    if store.s3:
        bucket = s3_bucket_and_key(store.url)[0]
        if not store.bucket_exists():
            raise DatasetError(
                f"{store.url}: bucket {bucket!r} does not exist; pbp does not create buckets (a typo would become a "
                f"new bucket): create it (`aws s3 mb s3://{bucket}`) or use an existing one, e.g. one of the local "
                f"stack's ({', '.join(_stack_buckets()) or 'pbp-data, pbp-runs'}; `pbp stack up` lists them)"
            )
    if not store.s3 and store.root.exists() and not store.root.is_dir():
        raise DatasetError(f"{store.root}: an existing file, not a directory; --out names the directory the dataset "
                           "is written to")  # fmt: skip
    if store.exists(MANIFEST):
        raise DatasetError(f"{store.join(MANIFEST)}: a dataset already exists here; build into a new prefix")
    if not overwrite:  # an interrupted build's shards (local or S3: a new build would mix with them)
        ours = [n for n in store.names() if n == QUARANTINE or (n.endswith(".tar") and n.split("-", 1)[0] in SPLITS)]
        if ours:
            more = f" and {len(ours) - 3} more" if len(ours) > 3 else ""
            where = "an empty prefix" if store.s3 else "an empty directory"
            raise DatasetError(
                f"{store.url if store.s3 else store.root}: holds {len(ours)} file(s) named as this build names its "
                f"files ({', '.join(ours[:3])}{more}) and no manifest.json, as an interrupted build leaves it (a "
                f"dataset is complete only once its manifest is written, last); build into {where}, remove them, or "
                "pass --force to overwrite (files the new build does not write stay beside it)"
            )


def build(
    out_url: str,
    inputs: Inputs,
    cfg: BuildConfig | None = None,
    *,
    store: Store | None = None,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
    overwrite: bool = False,
    shard_map: ShardMap | None = None,
) -> BuildReport:
    """Build a dataset at ``out_url`` (see module docstring). ``progress(label, total)`` returns an updater.
    ``overwrite`` lets a build replace same-named files in a local directory (``--force``). ``shard_map`` writes
    the shards elsewhere (Ray tasks: ``pbp data build --ray-workers``); the output is the same bytes."""
    cfg = cfg or BuildConfig()
    t0 = time.monotonic()
    if cfg.tmp_dir and not Path(cfg.tmp_dir).is_dir():  # it named a random subfolder of it as missing
        raise DatasetError(f"--tmp-dir {cfg.tmp_dir}: no such folder (the build spills there; create it, or leave "
                           "--tmp-dir out for the system's)")  # fmt: skip
    store = store or Store(out_url)
    check_destination(store, overwrite)
    tick = progress or (lambda _label, _total: lambda _n: None)
    onto: Ontology | None = read_obo(cfg.go_obo) if cfg.go_obo else None
    names = _term_names(cfg, onto)  # before the inputs are read: a bad names file fails now, not after the shards
    errors = ErrorLog(cfg.on_error)
    with scratch("build", cfg.tmp_dir or None) as tmp_name:  # a killed build's is removed by the next build
        tmp = Path(tmp_name)
        records, go = _partition(inputs, cfg, errors, tmp, tick)
        counts = _check_and_join(records, go, inputs, onto, errors, cfg, tmp / "clean.jsonl", tick)
        if counts.records == 0:
            raise DatasetError(f"no valid records in {', '.join(map(str, inputs.files()))}")
        if inputs.go_table is not None and counts.annotated == 0:
            raise DatasetError(
                f"{inputs.go_table}: none of its annotations is for an accession of {inputs.uniprot or inputs.fasta} "
                f"({counts.records} records; accessions there look like {counts.first_accession!r}, in the table "
                f"like {counts.table_accession!r}): check that both files use the same accessions (UniProt's); "
                "nothing was written"
            )
        vocab = build_vocabulary(counts.terms, cfg.min_go_records)
        shard_bytes = cfg.shard_size_mb * 2**20
        n_shards = {s: max(1, math.ceil(counts.split_bytes[s] / shard_bytes)) if counts.split_bytes[s] else 0
                    for s in SPLITS}  # fmt: skip
        unannotated = _route(tmp / "clean.jsonl", {t: i for i, t in enumerate(vocab)}, n_shards, cfg, tmp, tick)
        splits = _write_shards(store, n_shards, cfg, tmp, tick, shard_map)
        quarantine = None
        if errors.total:
            with (tmp / QUARANTINE).open("wb") as f:
                errors.write_jsonl(f)
            store.put_file(QUARANTINE, tmp / QUARANTINE)
            quarantine = QUARANTINE
    manifest = _manifest(inputs, cfg, onto, names, counts, vocab, splits, unannotated, errors, quarantine)
    store.put_bytes(MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())  # LAST: commits the dataset
    return BuildReport(manifest, store.url, time.monotonic() - t0, errors)


def _input_bytes(inputs: Inputs) -> int:
    """The inputs' size, gzipped files counted at 4x (a typical ratio for FASTA and GO tables)."""
    total = 0
    for p in inputs.files():
        with p.open("rb") as f:
            total += p.stat().st_size * (4 if f.read(2) == b"\x1f\x8b" else 1)
    return total


def _partition(inputs: Inputs, cfg: BuildConfig, errors: ErrorLog, tmp: Path, tick) -> tuple[Partitions, Partitions]:
    """Pass 1: the GO table (if any), then every sequence record read and validated once, both spilled to the same
    partitions by a hash of the accession. Bad records raise or go to ``errors`` here; duplicates are found later."""
    n = partitions_for(_input_bytes(inputs), cfg.partition_mb)
    go = Partitions(tmp, "go", n)
    try:
        if inputs.go_table is not None:
            for acc, rows in itertools.groupby(iter_go_table(inputs.go_table), key=lambda row: row[0]):
                go.add(acc, [acc, [term for _, term in rows]])  # tables are usually grouped by accession
    finally:
        go.close()
    records = Partitions(tmp, "records", n)
    update = tick("reading", None)
    try:
        for rec in _records(inputs, cfg, errors):
            records.add(rec.accession, [rec.line, rec.accession, rec.sequence, rec.go_terms])
            update(1)
    finally:
        records.close()
    return records, go


@dataclass
class _Counts:
    records: int = 0
    annotated: int = 0
    """Records with at least one GO term (before the vocabulary's --min-go-records cut)."""
    first_accession: str = ""
    table_accession: str = ""
    """An accession of the GO table (the first read), to show beside the records' when none matched."""
    terms: Counter[str] = field(default_factory=Counter)
    split_bytes: Counter[str] = field(default_factory=Counter)
    go_stats: Counter[str] = field(default_factory=Counter)


def _check_and_join(records: Partitions, go: Partitions, inputs: Inputs, onto: Ontology | None, errors: ErrorLog,
                    cfg: BuildConfig, out: Path, tick) -> _Counts:  # fmt: skip
    """Pass 2, one partition at a time: drop duplicate accessions, join the GO table's annotations, propagate them,
    count terms and sizes; the surviving records go to ``out`` as ``[line, accession, sequence, terms]`` rows."""
    source = str(inputs.uniprot or inputs.fasta)
    c = _Counts()
    update = tick("checking", records.rows_written)
    runs: list[Path] = []  # per partition, its duplicates in input order, merged by line at the end
    with out.open("w", encoding="utf-8") as f:
        for i in range(records.n):
            annotations = None
            if inputs.go_table is not None:
                annotations = collect_go((acc, term) for acc, terms in go.rows(i) for term in terms)
                c.table_accession = c.table_accession or next(iter(annotations), "")
            rows = (ProteinRecord(acc, seq, tuple(terms), source, line) for line, acc, seq, terms in records.rows(i))
            dups: list[RecordError] = []
            for rec in _dedup(rows, dups.append):
                terms = rec.go_terms if annotations is None else tuple(sorted(annotations.get(rec.accession, ())))
                if onto is not None and terms:
                    terms = onto.propagate(terms, c.go_stats)
                c.terms.update(terms)
                c.annotated += bool(terms)
                c.first_accession = c.first_accession or rec.accession
                # JSON text plus the tar member's header and padding (~1 KiB)
                c.split_bytes[split_of(rec.accession, cfg.valid_fraction)] += len(rec.sequence) + 6 * len(terms) + 1100
                c.records += 1
                f.write(json.dumps([rec.line, rec.accession, rec.sequence, terms]) + "\n")
                update(1)
            records.remove(i)
            go.remove(i)
            if dups:
                runs.append(out.with_name(f"duplicates-{i:05d}.jsonl"))
                runs[-1].write_text("".join(json.dumps([e.line, e.record, e.detail]) + "\n" for e in dups))
    _report_duplicates(runs, source, errors)
    return c


def _report_duplicates(runs: list[Path], source: str, errors: ErrorLog) -> None:
    """Every partition's duplicates, merged into input order (a k-way merge of per-partition files: bounded memory),
    handed to ``errors``: the quarantine lists them in input order and ``on_error=raise`` names the first duplicate
    in the input, whatever the partitioning."""
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(p.open(encoding="utf-8")) for p in runs]
        for line, acc, detail in heapq.merge(*((json.loads(x) for x in f) for f in files), key=lambda r: r[0]):
            errors.handle(RecordError(source, line, acc, "duplicate_accession", detail))
    for p in runs:
        p.unlink()


def _route(clean: Path, index: dict[str, int], n_shards: dict[str, int], cfg: BuildConfig, tmp: Path, tick) -> int:
    """Pass 3: encode each record's terms as vocabulary indices and append it to its shard's spill file (at most
    ``max_open_files()`` open at once: more shards take more passes over ``clean``). -> records without any
    vocabulary term."""
    keys = [(s, i) for s in SPLITS for i in range(n_shards[s])]
    group = max_open_files()
    unannotated = 0
    update = tick("encoding", None)
    for g in range(0, len(keys), group):
        with contextlib.ExitStack() as files, clean.open(encoding="utf-8") as rows:
            spill = {k: files.enter_context((tmp / f"{k[0]}-{k[1]:06d}.jsonl").open("w", encoding="utf-8"))
                     for k in keys[g : g + group]}  # fmt: skip
            for row in rows:
                line, acc, seq, terms = json.loads(row)
                s = split_of(acc, cfg.valid_fraction)
                f = spill.get((s, key_hash(acc, f"shard{cfg.seed}") % n_shards[s]))
                if f is None:
                    continue
                go = [index[t] for t in terms if t in index]
                unannotated += not go
                f.write(f"{line}\t" + json.dumps({"accession": acc, "sequence": seq, "go": go}) + "\n")
                update(1)
    return unannotated


@dataclass(frozen=True)
class ShardJob:
    """Everything needed to write one shard anywhere (pass 4): a Ray task on another node gets exactly this."""

    url: str
    """The dataset's URL."""
    endpoints: Endpoints | None
    """The S3 endpoints and credentials given to the build (None: resolved where the shard is written)."""
    split: str
    index: int
    rows: bytes
    """The shard's samples as ``line<TAB>JSON`` rows, in any order."""
    seed: int
    format_version: int = FORMAT_VERSION


ShardMap = Callable[[list[ShardJob]], list[dict]]
"""Writes shard jobs somewhere else (``pbp.train.launch.RayShardMap``: Ray tasks), returning their records in
order; ``window`` attribute: how many jobs (their rows held by the caller) go at once."""


def write_shard(job: ShardJob, tmp_dir: str | None = None) -> dict:
    """Input order (by line), a seeded shuffle, a tar with fixed metadata (so the same input gives byte-identical
    shards wherever this runs), its sha256, the upload. -> the shard's manifest record."""
    store = Store(job.url, job.endpoints)
    numbered = [x.split("\t", 1) for x in job.rows.decode("utf-8").splitlines()]
    numbered.sort(key=lambda x: int(x[0]))
    lines = [doc for _, doc in numbered]
    del numbered
    s, i = job.split, job.index
    random.Random(f"{job.seed}-{s}-{i}").shuffle(lines)
    name = f"{s}-{i:06d}.tar"
    with scratch("shard", tmp_dir or None) as tmp:
        local = Path(tmp) / name
        index: dict[str, int] = {}
        with tarfile.open(local, "w", format=tarfile.USTAR_FORMAT) as tar:
            for j, line in enumerate(lines):
                _tar_member(tar, f"{s[0]}{i:06d}_{j:07d}.json", line.encode() + b"\n")
            if job.format_version >= 2:
                raw = encode_index([_index_row(json.loads(line)) for line in lines])
                index = {"offset": _tar_member(tar, INDEX_MEMBER, raw), "bytes": len(raw)}
        digest = file_sha256(local)
        store.put_file(name, local)
        size = local.stat().st_size
    record = {"name": name, "url": store.join(name), "samples": len(lines), "bytes": size, "sha256": digest}
    return record | ({"index": index} if index else {})


def _index_row(doc: dict) -> tuple[str, bytes, list[int]]:
    return doc["accession"], encode_normalized(doc["sequence"]), doc["go"]


def _write_shards(store: Store, n_shards: dict[str, int], cfg: BuildConfig, tmp: Path, tick,
                  shard_map: ShardMap | None) -> dict[str, dict]:  # fmt: skip
    """Pass 4: every shard by :func:`write_shard`, here one at a time, or ``shard_map``'s window at a time."""
    update = tick("writing shards", sum(n_shards.values()))
    window = getattr(shard_map, "window", 1) if shard_map is not None else 1
    records: dict[tuple[str, int], dict] = {}
    keys = [(s, i) for s in SPLITS for i in range(n_shards[s])]
    for w in range(0, len(keys), window):
        jobs = []
        for s, i in keys[w : w + window]:
            spill = tmp / f"{s}-{i:06d}.jsonl"
            jobs.append(ShardJob(store.url, store.endpoints, s, i, spill.read_bytes(), cfg.seed, cfg.format_version))
            spill.unlink()
        done = shard_map(jobs) if shard_map is not None else [write_shard(j, cfg.tmp_dir) for j in jobs]
        for job, rec in zip(jobs, done, strict=True):
            records[(job.split, job.index)] = rec
        update(len(jobs))
    splits: dict[str, dict] = {}
    for s in SPLITS:
        shards = [records[(s, i)] for i in range(n_shards[s])]
        splits[s] = {"samples": sum(x["samples"] for x in shards), "shards": shards}
    return splits


def _manifest(inputs: Inputs, cfg: BuildConfig, onto: Ontology | None, names: dict[str, str], counts: _Counts,
              vocab: list[str], splits: dict[str, dict], unannotated: int, errors: ErrorLog,
              quarantine: str | None) -> dict:  # fmt: skip
    import pbp

    return {
        "format": FORMAT,
        "format_version": cfg.format_version,
        "pbp_version": pbp.__version__,
        "created_unix": int(time.time()),
        "records": counts.records,
        "records_without_vocabulary_annotation": unannotated,
        "splits": splits,
        "go_vocabulary": vocab,
        "go_vocabulary_names": [names.get(t) for t in vocab],  # aligned with go_vocabulary; null where unknown
        "go": {"min_records": cfg.min_go_records, "propagated": onto is not None, **dict(counts.go_stats)},
        "inputs": [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in inputs.files()],
        "skipped": dict(errors.counts),
        "quarantine": quarantine,
        "build": {k: v for k, v in asdict(cfg).items() if k not in ("partition_mb", "tmp_dir")},  # output-neutral
    }


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
        raise DatasetError(
            f"{store.join(MANIFEST)}: format_version {manifest['format_version']} is newer than this pbp reads "
            f"({', '.join(map(str, FORMAT_VERSIONS))}): upgrade pbp, or rebuild the dataset with this one"
        )
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
        "format_version": manifest.get("format_version", 1),
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

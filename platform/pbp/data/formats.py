"""Streaming readers of real protein formats: FASTA, UniProt flat files, GO tables (TSV, GAF 2.x), benchmark CSVs.

Memory does not grow with the input: records and GO table rows are yielded one at a time (``read_go_*`` collect a
table into an accession -> terms map for callers that want one).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pbp.data.records import (
    TRUNCATED,
    ErrorLog,
    ProteinRecord,
    RecordError,
    check_utf8,
    csv_rows,
    numbered_lines,
    open_text,
)
from pbp.model.tokenizer import SequenceError, TokenStats, UnknownPolicy, normalize_sequence

GO_ID = re.compile(r"^GO:\d{7}$")


def fasta_accession(header: str) -> str:
    """``sp|P12345|NAME_HUMAN desc`` and ``tr|...`` -> ``P12345``; anything else -> its first word."""
    first = header.split(None, 1)[0] if header.strip() else ""
    parts = first.split("|")
    if len(parts) >= 3 and parts[0] in ("sp", "tr"):
        return parts[1]
    return first


def _record(path: str, line: int, acc: str, raw: str, go: Iterable[str], unknown: UnknownPolicy,
            stats: TokenStats | None = None) -> ProteinRecord:  # fmt: skip
    try:
        seq = normalize_sequence(raw, acc, unknown=unknown, stats=stats)
    except SequenceError as e:
        reason = "empty_sequence" if "empty" in str(e) else ("non_ascii" if "ASCII" in str(e) else "invalid_character")
        raise RecordError(path, line, acc, reason, str(e)) from None
    return ProteinRecord(acc, seq, tuple(sorted(set(go))), source=path, line=line)


def _truncated(e: RecordError, last: str | None) -> RecordError:
    after = f"; the last complete record is {last!r}" if last else "; no complete record before it"
    return RecordError(e.path, e.line, None, TRUNCATED, e.detail + after)


def read_fasta(
    path: str | Path,
    errors: ErrorLog | None = None,
    unknown: UnknownPolicy = "other",
    annotations: dict[str, set[str]] | None = None,
    stats: TokenStats | None = None,
) -> Iterator[ProteinRecord]:
    """FASTA (plain or gzipped; UniProt/UniRef-style or bare headers). ``annotations``: accession -> GO ids;
    ``stats``: counts what normalisation changed in the records read."""
    errors = errors or ErrorLog()
    name = str(path)
    header: str | None = None
    header_line = 0
    chunks: list[str] = []

    def emit() -> Iterator[ProteinRecord]:
        acc = fasta_accession(header or "")
        if not acc:
            errors.handle(RecordError(name, header_line, None, "missing_accession", "header without an identifier"))
            return
        if not chunks:
            errors.handle(RecordError(name, header_line, acc, "missing_sequence", "header without a sequence"))
            return
        go = annotations.get(acc, ()) if annotations is not None else ()
        try:
            check_utf8(acc, name, header_line, "accession")
            yield _record(name, header_line, acc, "".join(chunks), go, unknown, stats)
        except RecordError as e:
            errors.handle(e)

    last = None  # the last complete record, named when the file turns out to be cut short
    with open_text(path) as f:
        try:
            for i, line in numbered_lines(f, name):
                if line.startswith(">"):
                    if header is not None:
                        yield from emit()
                        last = fasta_accession(header)
                    header, header_line, chunks = line[1:], i, []
                elif line.strip() and not line.startswith(";"):
                    if header is None:
                        raise RecordError(name, i, None, "not_fasta", "sequence data before the first '>' header")
                    chunks.append(line)
        except RecordError as e:
            if e.reason != TRUNCATED:
                raise
            errors.handle(_truncated(e, last))  # skip mode: what was read is kept, the partial record is not
            return
        if header is not None:
            yield from emit()


def read_uniprot_flat(
    path: str | Path, errors: ErrorLog | None = None, unknown: UnknownPolicy = "other"
) -> Iterator[ProteinRecord]:
    """UniProt flat file (``.dat``/``.txt``, plain or gzipped): primary accession, sequence, ``DR   GO;`` terms."""
    errors = errors or ErrorLog()
    name = str(path)
    acc: str | None = None
    bad_go: RecordError | None = None
    start = 0
    go: list[str] = []
    seq: list[str] = []
    in_seq = False
    last = None
    with open_text(path) as f:
        try:
            for i, line in numbered_lines(f, name):
                code = line[:2]
                if i == 1 and line.lstrip().startswith(("<", ">")):
                    what = (
                        "FASTA (give it as --fasta)"
                        if line.startswith(">")
                        else "XML (pbp reads UniProt's text format)"
                    )
                    raise RecordError(name, 1, None, "not_flat_file", f"not a UniProt flat file (.dat/.txt) but {what}")
                if code == "ID" and acc is None and not seq:
                    start = i
                if code == "AC" and acc is None:
                    acc = line[5:].split(";")[0].strip()
                elif line.startswith("DR   GO;"):
                    term = line[8:].split(";")[0].strip()
                    if GO_ID.match(term):
                        go.append(term)
                    elif bad_go is None:  # the entry is refused (or skipped) at its end, not kept without the term
                        bad_go = RecordError(name, i, acc, "bad_go_id", f"{term!r} is not a GO id (GO:NNNNNNN)")
                elif code == "SQ":
                    in_seq = True
                elif line.startswith("//"):
                    try:
                        record = _flat_entry(name, start, i, acc, seq, go, bad_go, unknown)
                    except RecordError as e:
                        errors.handle(e)
                    else:
                        yield record
                        last = acc
                    acc, go, seq, in_seq, start, bad_go = None, [], [], False, i + 1, None
                elif in_seq and line.startswith("     "):
                    seq.append(line)
        except RecordError as e:
            if e.reason != TRUNCATED:
                raise
            errors.handle(_truncated(e, last))
            return
        if acc is not None or seq:
            errors.handle(RecordError(name, start, acc, "truncated_entry", "last entry has no '//' terminator"))


def _flat_entry(name: str, start: int, end: int, acc: str | None, seq: list[str], go: list[str],
                bad_go: RecordError | None, unknown: UnknownPolicy) -> ProteinRecord:  # fmt: skip
    """A flat file's entry (lines ``start`` to its ``//`` on line ``end``) as a record, or the RecordError that
    refuses it."""
    if not acc:
        raise RecordError(name, start or end, None, "missing_accession", "entry without an AC line")
    if not seq:
        raise RecordError(name, start, acc, "missing_sequence", "entry without a sequence")
    if bad_go is not None:
        raise bad_go
    check_utf8(acc, name, start, "accession")
    return _record(name, start, acc, "".join(seq), go, unknown)


def iter_go_tsv(path: str | Path) -> Iterator[tuple[str, str]]:
    """``accession<TAB>GO id[<TAB>aspect]`` rows (CAFA-style; a header row is allowed) -> (accession, GO id)."""
    name = str(path)
    with open_text(path) as f:
        for i, line in numbered_lines(f, name):
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) < 2:
                raise RecordError(name, i, None, "bad_go_row", f"expected accession<TAB>GO id, got {line[:80]!r}")
            acc, term = cols[0].strip(), cols[1].strip()
            if not GO_ID.match(term):
                if i == 1:
                    continue  # header row
                raise RecordError(name, i, acc, "bad_go_id", f"{term!r} is not a GO id (GO:NNNNNNN)")
            yield acc, term


def iter_gaf(path: str | Path) -> Iterator[tuple[str, str]]:
    """GAF 2.x (UniProt-GOA): column 2 accession, 4 qualifier, 5 GO id. ``NOT`` annotations are excluded."""
    name = str(path)
    with open_text(path) as f:
        for i, line in numbered_lines(f, name):
            if not line or line.startswith("!"):
                continue
            cols = line.split("\t")
            if len(cols) < 15:
                raise RecordError(name, i, None, "bad_gaf_row", f"GAF rows have at least 15 columns, got {len(cols)}")
            acc, qualifier, term = cols[1].strip(), cols[3], cols[4].strip()
            if not GO_ID.match(term):
                raise RecordError(name, i, acc, "bad_go_id", f"{term!r} is not a GO id")
            if "NOT" in qualifier.split("|"):
                continue
            yield acc, term


def iter_go_table(path: str | Path) -> Iterator[tuple[str, str]]:
    """A GO annotation table by format, streamed: GAF (``!gaf-version`` header or ``.gaf``) or TSV."""
    p = Path(path)
    with open_text(p) as f:
        first = next((line for _, line in numbered_lines(f, p)), "")
    if first.startswith("!gaf-version") or ".gaf" in p.name:
        return iter_gaf(p)
    return iter_go_tsv(p)


def collect_go(pairs: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """(accession, GO id) pairs -> accession -> terms."""
    out: dict[str, set[str]] = defaultdict(set)
    for acc, term in pairs:
        out[acc].add(term)
    return dict(out)


def read_go_tsv(path: str | Path) -> dict[str, set[str]]:
    return collect_go(iter_go_tsv(path))


def read_gaf(path: str | Path) -> dict[str, set[str]]:
    return collect_go(iter_gaf(path))


def read_go_table(path: str | Path) -> dict[str, set[str]]:
    """The whole table in memory (accession -> terms); ``pbp data build`` streams it instead (``iter_go_table``)."""
    return collect_go(iter_go_table(path))


# ---- ProteinBERT benchmark CSVs -------------------------------------------------------------------------------


@dataclass
class BenchmarkSplit:
    name: str
    split: str
    seqs: list[str]
    labels: list[str]
    """Raw label text: a number, a class id, or a per-residue string (one character per residue)."""


def read_benchmark_csv(path: str | Path) -> BenchmarkSplit:
    """A ProteinBERT benchmark file ``NAME.SPLIT.csv`` with columns ``seq,label`` or ``label,seq``."""
    p = Path(path)
    stem = p.name.removesuffix(".gz").removesuffix(".csv")
    bench, _, split = stem.rpartition(".")
    if split not in ("train", "valid", "test") or not bench:
        raise ValueError(f"{p}: benchmark files are named NAME.train|valid|test.csv")
    seqs: list[str] = []
    labels: list[str] = []
    with open_text(p) as f:
        rows = csv_rows(f, p)
        _, header = next(rows, (1, None))
        names = [h.strip() for h in header or []]
        if sorted(names) != ["label", "seq"]:
            raise ValueError(f"{p}:1: expected a header 'seq,label' or 'label,seq', got {header}")
        si, li = names.index("seq"), names.index("label")
        for n, row in rows:
            if len(row) != 2:
                raise ValueError(f"{p}:{n}: expected 2 columns, got {len(row)}")
            seq, label = row[si].strip(), row[li].strip()
            if not seq or not label:
                raise ValueError(f"{p}:{n}: empty {'seq' if not seq else 'label'}")
            seqs.append(seq)
            labels.append(label)
    return BenchmarkSplit(bench, split, seqs, labels)

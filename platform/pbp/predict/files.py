"""``pbp predict`` and ``pbp embed``: a FASTA or CSV file through a model, to CSV / parquet / .npy.

Input: FASTA (plain or gzipped; the id is the accession of the header) or CSV with a header (``--seq-column``, default
``seq``; ``--id-column``, default ``id`` when there is one, else the line number). A bad record (empty sequence,
a character the tokenizer refuses, a duplicate id) is reported by file, line and id, written to ``<out>.errors.jsonl``
and skipped: every good record is still predicted. Characters outside the 22 letters (``B``, an inner ``*``...) are read
as ``<OTHER>``, as in training, and counted (:func:`input_note`); ``unknown="error"`` (``--strict``) skips such records
instead. A trailing ``*`` (a stop codon) is removed and counted. Sequences are processed shortest first in chunks, each chunk
length-batched (``pbp.predict.batches``), with a progress bar; output rows keep the input's order. Outputs are
written to a temporary name and renamed at the end, so a failed run never leaves a half file under the real name.

Prediction columns (CSV): ``id``, ``length``, then by model:
  numeric       ``prediction``          binary  ``probability`` (of class 1; with named labels, of the
                                        positive label, and ``label``)
  categorical   ``label`` and ``p_<class>`` per class
  residue kinds ``residue_predictions`` (';'-joined per residue: probability of 1, or the class label)
  pretrained    ``go_ids``, ``go_names``, ``go_probabilities`` (';'-joined, top ``--top-k``, most probable first)
Embeddings: parquet (``id``, ``embedding`` (list of d_global floats), with ``--per-residue`` also
``residue_embeddings`` (one list of d_local floats per residue)), or ``.npy``: the (N, d_global) float32 matrix, with
the ids in ``<out>.ids.txt`` (per-residue embeddings need parquet).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pbp.data.records import ErrorLog, RecordError, check_utf8, csv_rows, numbered_lines, open_text
from pbp.model.tokenizer import SequenceError, TokenStats, UnknownPolicy, normalize_sequence

CHUNK = 512


@dataclass
class Inputs:
    ids: list[str] = field(default_factory=list)
    seqs: list[str] = field(default_factory=list)
    errors: ErrorLog = field(default_factory=lambda: ErrorLog(on_error="skip"))
    stats: TokenStats = field(default_factory=TokenStats)
    """What normalisation did to the records read: characters read as <OTHER>, stop codons removed."""


def read_inputs(path: str, seq_column: str = "seq", id_column: str = "", unknown: UnknownPolicy = "other") -> Inputs:
    out = Inputs()
    fasta = _is_fasta(path)  # the FASTA reader normalises (and counts) as it reads; a CSV's cells are raw
    records = _fasta(path, out.errors, unknown, out.stats) if fasta else _csv(path, seq_column, id_column, out.errors)
    seen: set[str] = set()
    for line, rid, seq in records:
        try:
            check_utf8(rid, path, line, "id")  # every output writes ids as UTF-8: found now, not after inference
        except RecordError as e:
            out.errors.handle(e)
            continue
        if rid in seen:
            out.errors.handle(RecordError(path, line, rid, "duplicate_id", "the same id again; ids must be unique"))
            continue
        try:
            clean = seq if fasta else normalize_sequence(seq, f"{path}:{line} {rid}", unknown=unknown, stats=out.stats)
        except SequenceError as e:
            out.errors.handle(RecordError(path, line, rid, "invalid_sequence", str(e)))
            continue
        seen.add(rid)
        out.ids.append(rid)
        out.seqs.append(clean)
    if not out.seqs:
        first = out.errors.entries[0] if out.errors.entries else None
        example = f"; the first: line {first['line']} {first['record'] or ''}: {first['detail']}" if first else ""
        raise ValueError(f"{path}: no usable sequences ({out.errors.total} bad records: {dict(out.errors.counts)}"
                         f"{example})")  # fmt: skip
    return out


def input_note(stats: TokenStats) -> list[str]:
    """Lines saying what the input policy changed in the records that were used (none when nothing)."""
    lines = []
    if stats.n_other:
        chars = ", ".join(f"{c!r} x{n}" for c, n in stats.other.most_common(8))
        more = f" and {len(stats.other) - 8} more" if len(stats.other) > 8 else ""
        lines.append(f"read {stats.n_other} character(s) outside the 22 amino-acid letters as <OTHER>, as the model "
                     f"was trained: {chars}{more} (--strict skips such records instead)")  # fmt: skip
    if stats.stop_codons_removed:
        lines.append(f"removed a trailing stop codon '*' from {stats.stop_codons_removed} sequence(s)")
    return lines


@dataclass
class Written:
    rows: int
    inputs: Inputs

    @property
    def errors(self) -> ErrorLog:
        return self.inputs.errors


def _is_fasta(path: str) -> bool:
    with open_text(path) as f:
        for _, line in numbered_lines(f, path):
            if line.strip():
                return line.startswith(">")
    raise ValueError(f"{path}: empty input file")


def _fasta(path: str, errors: ErrorLog, unknown: UnknownPolicy, stats: TokenStats) -> Iterator[tuple[int, str, str]]:
    from pbp.data.formats import read_fasta

    for rec in read_fasta(path, errors, unknown, stats=stats):
        yield rec.line, rec.accession, rec.sequence


def _csv(path: str, seq_column: str, id_column: str, errors: ErrorLog) -> Iterator[tuple[int, str, str]]:
    with open_text(path) as f:
        rows = csv_rows(f, path)
        header = [h.strip() for h in next(rows, (1, []))[1]]
        if seq_column not in header:
            raise ValueError(f"{path}:1: no column {seq_column!r} in the header {header} (set --seq-column)")
        if id_column and id_column not in header:
            raise ValueError(f"{path}:1: no column {id_column!r} in the header {header} (set --id-column)")
        si = header.index(seq_column)
        ii = header.index(id_column or "id") if (id_column or "id") in header else None
        for line, row in rows:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                errors.handle(RecordError(path, line, None, "bad_row", f"{len(row)} fields, the header has "
                                                                       f"{len(header)}"))  # fmt: skip
                continue
            yield line, (row[ii].strip() if ii is not None else f"line{line}"), row[si]


def in_chunks(seqs: list[str], fn: Callable[[list[str]], list[Any]], desc: str) -> list[Any]:
    """``fn`` over ``seqs`` shortest first, CHUNK at a time, with a progress bar -> results in input order."""
    from pbp.console import progress

    order = np.argsort([len(s) for s in seqs], kind="stable")
    out: list[Any] = [None] * len(seqs)
    with progress(desc, "seq", len(seqs)) as bar:
        for lo in range(0, len(order), CHUNK):
            idx = order[lo : lo + CHUNK]
            for i, r in zip(idx, fn([seqs[i] for i in idx]), strict=True):
                out[i] = r
            bar.update(len(idx))
    return out


def _flat(kind: str, row: Any, classes: list[str]) -> dict[str, Any]:
    if kind == "pretrained":
        return {"go_ids": ";".join(str(t["id"] or t["index"]) for t in row),
                "go_names": ";".join(str(t["name"] or "") for t in row),
                "go_probabilities": ";".join(f"{t['probability']:.6g}" for t in row)}  # fmt: skip
    flat = {k: v for k, v in row.items() if k not in ("probabilities", "residue_predictions")}
    if "probabilities" in row:
        flat.update({f"p_{c}": p for c, p in zip(classes, row["probabilities"], strict=True)})
    if "residue_predictions" in row:
        flat["residue_predictions"] = ";".join(f"{v:.6g}" if isinstance(v, float) else str(v)
                                               for v in row["residue_predictions"])  # fmt: skip
    return flat


def predict_file(model_uri: str, input_path: str, out: Path, *, seq_column: str = "seq", id_column: str = "",
                 top_k: int = 10, max_tokens: int = 16384, unknown: UnknownPolicy = "other") -> Written:  # fmt: skip
    """-> the rows written and the inputs read (their bad records skipped, what normalisation changed)."""
    from pbp.predict.models import load_model

    inputs = read_inputs(input_path, seq_column, id_column, unknown)
    m = load_model(model_uri, max_tokens)
    if m.kind == "pretrained":
        rows = in_chunks(inputs.seqs, lambda s: m.predictor.top_go_terms(s, top_k), "predict")
        classes: list[str] = []
    else:
        rows = in_chunks(inputs.seqs, m.predictor.predict_sequences, "predict")
        classes = list(m.predictor.task.classes)
    flat = [{"id": i, "length": len(s), **_flat(m.kind, r, classes)}
            for i, s, r in zip(inputs.ids, inputs.seqs, rows, strict=True)]  # fmt: skip

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(flat[0]), lineterminator="\n")  # not the module's CRLF
            w.writeheader()
            w.writerows(flat)

    _atomic(out, write)
    _write_errors(out, inputs.errors)
    return Written(len(flat), inputs)


def embed_file(model_uri: str, input_path: str, out: Path, *, per_residue: bool = False, seq_column: str = "seq",
               id_column: str = "", max_tokens: int = 16384, unknown: UnknownPolicy = "other") -> Written:  # fmt: skip
    from pbp.predict.embeddings import embeddings
    from pbp.predict.models import load_model

    if out.suffix not in (".parquet", ".npy"):
        raise ValueError(f"--out {out}: write embeddings to a .parquet or .npy file")
    if per_residue and out.suffix != ".parquet":
        raise ValueError(f"--out {out}: per-residue embeddings (one matrix per protein) need a .parquet file")
    inputs = read_inputs(input_path, seq_column, id_column, unknown)
    body = load_model(model_uri, max_tokens).body
    parts = in_chunks(inputs.seqs, lambda s: _embed_rows(embeddings(body, s, per_residue=per_residue,
                                                                    max_tokens=max_tokens)), "embed")  # fmt: skip
    proteins = np.stack([p[0] for p in parts]).astype(np.float32)
    if out.suffix == ".npy":

        def save(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.save(f, proteins)

        _atomic(out, save)
        _atomic(out.with_name(out.name + ".ids.txt"), lambda tmp: _write_text(tmp, "\n".join(inputs.ids) + "\n"))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {"id": inputs.ids, "embedding": [p.tolist() for p in proteins]}
        if per_residue:
            cols["residue_embeddings"] = [p[1].tolist() for p in parts]
        _atomic(out, lambda tmp: pq.write_table(pa.table(cols), str(tmp)))
    _write_errors(out, inputs.errors)
    return Written(len(inputs.ids), inputs)


def _embed_rows(e: Any) -> list[tuple[np.ndarray, np.ndarray | None]]:
    res = e.residues if e.residues is not None else [None] * len(e.proteins)
    return list(zip(e.proteins, res, strict=True))


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            write(tmp)
        except OSError as e:
            if e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e  # a full disk, named (was a traceback)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_errors_to(tmp: Path, errors: ErrorLog) -> None:
    with tmp.open("wb") as f:
        errors.write_jsonl(f)


def _write_errors(out: Path, errors: ErrorLog) -> None:
    path = out.with_name(out.name + ".errors.jsonl")
    if errors.total:
        _atomic(path, lambda tmp: _write_errors_to(tmp, errors))
    else:
        path.unlink(missing_ok=True)

"""Protein records, bad-record policy and the quarantine that lists what was skipped.

Every reader yields :class:`ProteinRecord` and reports problems as :class:`RecordError` naming file, line and
record. Under ``on_error="raise"`` (the default) the first bad record stops the build; under ``"skip"`` it is
counted per reason and written to the quarantine list, so nothing is dropped silently.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

OnError = Literal["raise", "skip"]


class RecordError(ValueError):
    """A bad input record. ``reason`` is a short machine-readable kind (empty_sequence, duplicate_accession...)."""

    def __init__(self, path: str, line: int, record: str | None, reason: str, detail: str) -> None:
        self.path, self.line, self.record, self.reason, self.detail = path, line, record, reason, detail
        rec = f" record {record!r}" if record else ""
        super().__init__(f"{path}:{line}:{rec} {detail}")


@dataclass(frozen=True)
class ProteinRecord:
    accession: str
    sequence: str
    """Normalised residues (pbp.model.tokenizer policy)."""
    go_terms: tuple[str, ...] = ()
    """GO ids as read (before vocabulary filtering), sorted and unique."""
    source: str = ""
    line: int = 0


@dataclass
class ErrorLog:
    """Counts skipped records per reason and keeps them for the quarantine file.

    The first ``keep`` entries stay in memory (``entries``, for messages); every entry also goes to an unnamed
    temporary file, so a build that skips millions of records keeps bounded memory and loses none of them."""

    on_error: OnError = "raise"
    counts: Counter[str] = field(default_factory=Counter)
    entries: list[dict[str, object]] = field(default_factory=list)
    keep: int = 1000
    _spill: IO[str] | None = field(default=None, repr=False)

    def handle(self, err: RecordError) -> None:
        if self.on_error == "raise":
            raise err
        self.counts[err.reason] += 1
        entry = {"file": err.path, "line": err.line, "record": err.record, "reason": err.reason, "detail": err.detail}
        if len(self.entries) < self.keep:
            self.entries.append(entry)
        if self._spill is None:
            self._spill = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - lives with the log
        self._spill.write(json.dumps(entry) + "\n")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def write_jsonl(self, out: IO[bytes]) -> None:
        """Every entry, one JSON object per line, in the order they were handled (streamed, bounded memory)."""
        if self._spill is None:
            return
        self._spill.flush()
        self._spill.seek(0)
        for line in self._spill:
            out.write(line.encode())
        self._spill.seek(0, io.SEEK_END)

    def quarantine_jsonl(self) -> bytes:
        buf = io.BytesIO()
        self.write_jsonl(buf)
        return buf.getvalue()


def open_text(path: str | Path) -> IO[str]:
    """Open a local text file, transparently gunzipping ``.gz`` (by magic bytes, not only by name). UTF-8; a
    byte-order mark (Excel's "CSV UTF-8") is dropped; bytes that are not UTF-8 are kept as surrogates, for the
    readers to report where they matter (:func:`check_utf8`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such input file")
    raw = p.open("rb")
    magic = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8-sig", errors="surrogateescape", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def decode_text(data: bytes, name: str | Path) -> str:
    """A whole text file's bytes as str: UTF-8 (a byte-order mark dropped), or UTF-16 with its mark (Windows'
    Notepad); anything else is a :class:`RecordError` (reason ``not_utf8``) naming the file and the line of its
    first undecodable byte."""
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RecordError(str(name), line, None, "not_utf8", f"not {e.encoding.upper()} text (byte "
                          f"0x{data[e.start]:02x}); save it as UTF-8") from None  # fmt: skip


def check_utf8(value: str, path: str | Path, line: int, what: str) -> None:
    """An id or name read with :func:`open_text` must be UTF-8 text, since every output (CSV, parquet, JSON)
    writes it as such: else a :class:`RecordError` (reason ``not_utf8``) naming file and line, raised as the record is
    read rather than when the results are written."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        shown = value.encode("utf-8", "surrogateescape").decode("latin-1")
        bad = ord(value[e.start]) - 0xDC00
        raise RecordError(str(path), line, shown, "not_utf8", f"the {what} is not UTF-8 (byte 0x{bad:02x}; a Latin-1 "
                          "or Windows file? save it as UTF-8)") from None  # fmt: skip


def csv_rows(f: Iterable[str], path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """(the line its record starts on, its fields) for each record of a CSV text (header included; quoted fields
    may span lines; CR, LF and CRLF line ends). A record the csv module cannot parse (a quote opened and never
    closed runs into its field-size limit) or a gzipped file cut short is a :class:`RecordError` naming the file
    and the line the record starts on, instead of a bare ``csv.Error`` / ``EOFError``. (In a file under the limit, a
    quote never closed takes the rest of the file into one field: the caller's field count check names its line.)"""
    reader = csv.reader(f)
    done = 0  # lines read by the records so far
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise RecordError(str(path), done + 1, None, "bad_csv", f"not readable as CSV from this line ({e}); a "
                              "quote opened here and never closed?") from None  # fmt: skip
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise RecordError(str(path), done + 1, None, TRUNCATED, f"compressed input cut short or corrupt after "
                              f"line {done} ({type(e).__name__}: {e})") from None  # fmt: skip
        yield done + 1, row
        done = reader.line_num


TRUNCATED = "truncated_input"


def numbered_lines(f: IO[str], path: str | Path = "") -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line ending); CRLF and CR-LF mixtures are accepted.

    A gzipped file cut short or corrupt raises a :class:`RecordError` (reason ``truncated_input``) naming the file
    and the last line read, instead of a bare ``EOFError`` / ``BadGzipFile``."""
    i = 0
    try:
        for i, line in enumerate(f, 1):
            yield i, line.rstrip("\r\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise RecordError(str(path) or "input", i + 1, None, TRUNCATED, f"compressed input cut short or corrupt "
                          f"after line {i} ({type(e).__name__}: {e})") from None  # fmt: skip

"""Hash-partitioned spill files: how ``pbp data build`` keeps its memory bounded whatever the input's size.

Rows (JSON arrays) are appended to one of ``n`` files in a temporary directory, chosen by a hash of a key (the
accession), so every row of one key lands in one file, in the order written. Work that needs all rows of a key
together (duplicate detection, joining GO annotations) then holds one partition at a time:

    parts = Partitions(tmp, "records", n=16)
    parts.add("P12345", [line, "P12345", "MKV...", []])
    parts.close()
    for i in range(parts.n):
        for row in parts.rows(i): ...      # streamed from disk, in write order
        parts.remove(i)                    # disk space back as soon as a partition is done
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_ENCODER = json.JSONEncoder(separators=(",", ":"))


def max_open_files() -> int:
    """How many spill files one stage keeps open: half the process's soft descriptor limit, at most 2048."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(2048, soft // 2 if soft > 0 else 512))


def key_hash(key: str, salt: str = "") -> int:
    """A stable 64-bit hash (blake2b) of ``key``: the same on every machine and Python run."""
    return int.from_bytes(hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest(), "big")


def partitions_for(input_bytes: int, partition_mb: float) -> int:
    """How many partitions keep each near ``partition_mb`` MiB of spilled rows, for inputs of ``input_bytes``
    (capped by :func:`max_open_files`: past it partitions grow instead of multiplying)."""
    return max(1, min(max_open_files(), math.ceil(input_bytes / (partition_mb * 2**20))))


def _full(e: OSError, path: Path) -> OSError:
    """A spill file that cannot be written, named (it was a traceback); a full disk also says what the build needs."""
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    hint = (" (the build's temporary folder, --tmp-dir or the system's: it needs about twice the input's uncompressed "
            "size)") if full else ""  # fmt: skip
    return OSError(e.errno, f"{e.strerror or e}{hint}", str(path))


class Partitions:
    def __init__(self, directory: Path, prefix: str, n: int) -> None:
        self.paths = [directory / f"{prefix}-{i:05d}.jsonl" for i in range(n)]
        self.files: list[IO[str]] | None = [p.open("w", encoding="utf-8") for p in self.paths]
        self.n = n
        self.rows_written = 0

    def index(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.n  # stable and cheap; only the grouping depends on it

    def add(self, key: str, row: list[Any]) -> None:
        assert self.files is not None, "add after close"
        i = self.index(key)
        try:
            self.files[i].write(_ENCODER.encode(row) + "\n")
        except OSError as e:
            raise _full(e, self.paths[i]) from e
        self.rows_written += 1

    def close(self) -> None:
        failed: tuple[OSError, Path] | None = None
        for f, path in zip(self.files or [], self.paths, strict=False):
            try:
                f.close()
            except OSError as e:  # the last buffered rows did not fit: the other files are closed all the same
                failed = failed or (e, path)
        self.files = None
        if failed is not None:
            raise _full(*failed) from failed[0]

    def rows(self, i: int) -> Iterator[list[Any]]:
        with self.paths[i].open(encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)

    def remove(self, i: int) -> None:
        self.paths[i].unlink(missing_ok=True)

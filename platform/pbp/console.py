"""What pbp prints on the terminal, in one place: plain-text tables (:func:`aligned`), the progress of a long phase
(:func:`progress`: a tqdm bar on a terminal; in a log file, a submitted job's or CI's, a plain line every
``LineProgress.EVERY_S`` seconds and one at the end, not thousands of carriage returns) and a library logger's
chatter kept off for a block (:func:`quiet_logger`)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO


def aligned(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """The header and the rows as lines; the columns at the indices ``right`` (numbers) are right-aligned."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()  # fmt: skip

    return [line(header), *(line(row) for row in rows)]


@contextmanager
def quiet_logger(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """A library logger's lines below ``level`` off for a block (MLflow's "Validating input example against model
    signature", "Waiting up to 300 seconds ..."); by default its warnings still show."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


class LineProgress:
    """A phase's progress as whole lines: ``reading: 48,121 rec (12 s)`` every ``EVERY_S`` seconds (with the rate and
    the time left when the total is known: ``(12 s, 4,010/s, ETA 13 s)``) and, unless ``summary`` is off,
    ``reading: 100,000 rec in 31.2 s`` when it closes. On stderr, or ``stream`` (a Ray worker's progress goes to
    stdout, beside its other lines)."""

    EVERY_S = 30.0

    def __init__(self, label: str, unit: str, total: int | None, enabled: bool = True, *,
                 summary: bool = True, stream: TextIO | None = None, every_s: float | None = None) -> None:  # fmt: skip
        self.label, self.unit, self.total, self.enabled, self.summary = label, unit, total, enabled, summary
        self.stream, self.every_s = stream, every_s
        self.n, self.closed = 0, False
        self.t0 = self.last = time.monotonic()

    def _count(self) -> str:
        return f"{self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n = self.n + n if not self.total else min(self.total, self.n + n)
        now = time.monotonic()
        if self.enabled and now - self.last >= (self.EVERY_S if self.every_s is None else self.every_s):
            self.last = now
            took = now - self.t0
            pace = ""
            if self.total and self.n and took > 0:
                rate = self.n / took
                pace = f", {rate:,.0f}/s, ETA {(self.total - self.n) / rate:.0f} s"
            self._print(f"{self.label}: {self._count()} ({took:.0f} s{pace})")

    def close(self) -> None:
        if self.enabled and self.summary and not self.closed:
            self._print(f"{self.label}: {self._count()} in {time.monotonic() - self.t0:.1f} s")
        self.closed = True

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(label: str, unit: str, total: int | None, enabled: bool = True, tty: bool | None = None) -> Any:
    """A tqdm bar on a terminal, else a :class:`LineProgress` (both: ``update(n)``, ``close()``, a context)."""
    from tqdm import tqdm

    if sys.stderr.isatty() if tty is None else tty:
        return tqdm(total=total, desc=label, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                    mininterval=1.0)  # fmt: skip
    return LineProgress(label, unit, total, enabled)

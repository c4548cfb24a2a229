"""Progress of a long phase on stderr: a tqdm bar on a terminal; in a log file (a submitted job, CI, ``> run.log``)
a plain line every ``LineProgress.EVERY_S`` seconds and one at the end, not thousands of carriage returns."""

from __future__ import annotations

import sys
import time
from typing import Any


class LineProgress:
    """A phase's progress as whole lines on stderr: ``reading: 48,121 rec (12 s)`` every ``EVERY_S`` seconds and
    ``reading: 100,000 rec in 31.2 s`` when it closes."""

    EVERY_S = 30.0

    def __init__(self, label: str, unit: str, total: int | None, enabled: bool = True) -> None:
        self.label, self.unit, self.total, self.enabled = label, unit, total, enabled
        self.n, self.closed = 0, False
        self.t0 = self.last = time.monotonic()

    def _count(self) -> str:
        return f"{self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.enabled and now - self.last >= self.EVERY_S:
            self.last = now
            print(f"{self.label}: {self._count()} ({now - self.t0:.0f} s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and not self.closed:
            print(f"{self.label}: {self._count()} in {time.monotonic() - self.t0:.1f} s", file=sys.stderr, flush=True)
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

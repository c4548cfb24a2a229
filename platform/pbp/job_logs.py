"""Following a submitted job's log as it is written (``pbp submit --wait``, ``pbp jobs logs --follow``).

Ray's log tail (a websocket to the dashboard, ``JobSubmissionClient.tail_job_logs``) sends each part of the log once,
as the driver writes it; polling ``get_job_logs`` sends the whole log every time (a day of pretraining writes tens
of MB: that many bytes per poll). A tail that drops (the head restarted, a network blip) is opened again: it replays
the log from its start, and the part already printed is skipped. Where the websocket cannot be opened at all (a
proxy in front of the dashboard that does not pass websockets), the log is polled instead, less often as it grows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pbp.submit")

POLL_MAX_S = 10.0
"""The slowest a polled log is fetched (a second per MiB of log, from one second)."""
RETRY_S = 1.0
"""Pause before a dropped tail is opened again."""


class LogPrinter:
    """Prints a log's complete lines once, whatever the chunks it arrives in and however often it is replayed."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.printed = 0
        """Characters of the log already taken in (printed, or held as an unfinished last line)."""
        self.seen = 0
        """Characters received on the current connection (a new one replays the log from its start)."""
        self.partial = ""

    def restart(self) -> None:
        self.seen = 0

    def feed(self, text: str) -> None:
        new = text[max(0, self.printed - self.seen) :]
        self.seen += len(text)
        if self.seen <= self.printed:
            return
        self.printed = self.seen
        whole, newline, self.partial = (self.partial + new).rpartition("\n")
        if newline:
            self.emit(whole)

    def whole_log(self, text: str) -> None:
        """The log as one text (a poll, or the end): what is new in it, the unfinished last line included."""
        self.restart()
        self.feed(text)
        self.flush()

    def flush(self) -> None:
        if self.partial:
            self.emit(self.partial)
            self.partial = ""


async def _tail(client: Any, sid: str, out: LogPrinter, seconds: float | None) -> None:
    out.restart()
    async with asyncio.timeout(seconds):
        async for text in client.tail_job_logs(sid):
            out.feed(text)


def stream(client: Any, sid: str, out: LogPrinter, seconds: float | None) -> str:
    """Print the job's log as it is written until the server ends the tail or ``seconds`` pass. -> ``ended`` (the
    server closed it: the job ended and every line was sent), ``timeout``, ``dropped`` (open it again) or
    ``unavailable`` (it could not be opened, or dropped before sending anything: poll instead)."""
    # Ray's client logs "WebSocket closed for job ... with close code 1000" at INFO when the job ends
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
    try:
        asyncio.run(_tail(client, sid, out, seconds))
    except TimeoutError:
        return "timeout"
    except Exception as e:  # aiohttp's errors, Ray's RuntimeError for an abnormal close, OSError
        if out.seen == 0:
            log.warning("%s: following the log over a websocket failed (%s: %s); polling it instead", sid,
                        type(e).__name__, e)  # fmt: skip
            return "unavailable"
        log.info("%s: the log tail dropped (%s); opening it again", sid, e)
        time.sleep(RETRY_S)
        return "dropped"
    return "ended"


def poll_pause(log_chars: int) -> float:
    """Ray sends the whole log on each poll: poll less often as it grows."""
    return min(POLL_MAX_S, 1.0 + log_chars / 2**20)

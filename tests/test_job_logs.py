"""Following a job's log: each line printed once, whatever the chunks it arrives in and however often a dropped
tail replays the log (no stack: the printer alone; the real tail is tested in tests/stack/test_stack_services.py)."""

from __future__ import annotations

from pbp.job_logs import LogPrinter, poll_pause

LOG = "".join(f"line {i}\n" for i in range(30)) + "\n" + "the end, no newline"


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _printed(emitted: list[str]) -> str:
    return "".join(e + "\n" for e in emitted)


def test_chunks_of_any_size_print_each_complete_line_once_in_order():
    for size in (1, 7, 64, len(LOG)):
        emitted: list[str] = []
        out = LogPrinter(emitted.append)
        for chunk in _chunks(LOG, size):
            out.feed(chunk)
        assert _printed(emitted) == LOG[: LOG.rindex("\n") + 1]  # the unfinished last line waits...
        out.flush()
        assert _printed(emitted) == LOG + "\n"  # ...until the end; the empty line is kept


def test_a_replayed_log_after_a_dropped_tail_prints_only_what_is_new():
    emitted: list[str] = []
    out = LogPrinter(emitted.append)
    first = _chunks(LOG, 11)
    for chunk in first[:5]:  # the tail drops after 55 characters
        out.feed(chunk)
    out.restart()  # a new tail sends the log from its start, in other chunks
    for chunk in _chunks(LOG, 17):
        out.feed(chunk)
    out.restart()  # and again, after the whole log: nothing new
    for chunk in _chunks(LOG, 5):
        out.feed(chunk)
    out.whole_log(LOG)  # the end: a fetch of the whole log adds nothing either
    assert _printed(emitted) == LOG + "\n"


def test_polling_slows_as_the_log_grows():
    assert poll_pause(0) == 1.0 and poll_pause(2**20) == 2.0 and poll_pause(2**30) == 10.0

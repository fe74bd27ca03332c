"""Background logging (popbox/logsetup.py): lines queue without blocking, a full queue
drops and says so, stopping writes what is queued."""

from __future__ import annotations

import io
import logging
import queue
import time

import pytest

from popbox import logsetup
from popbox.logsetup import _Enqueue, _Writer


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("popbox.test", logging.INFO, __file__, 1, message, args, None)


def front_of(size: int) -> _Enqueue:
    front = _Enqueue(queue.Queue(size))
    front.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    return front


def test_a_full_queue_drops_counts_and_the_writer_reports_it() -> None:
    front = front_of(2)
    for n in range(5):
        front.handle(record("line %d", n))  # no writer yet: the queue fills, then drops
    assert front.dropped == 3
    out = io.StringIO()
    writer = _Writer(front, out)
    writer.start()
    writer.stop()
    assert out.getvalue() == (
        "INFO popbox.test: line 0\n"
        "INFO popbox.test: line 1\n"
        "WARNING popbox.logging: 3 log records dropped: the log output is not keeping up\n"
    )
    assert front.dropped == 0


def test_the_line_is_made_when_logged_not_when_written() -> None:
    front = front_of(10)
    changing = ["before"]
    front.handle(record("value %s", changing))
    changing[0] = "after"
    out = io.StringIO()
    writer = _Writer(front, out)
    writer.start()
    writer.stop()
    assert out.getvalue() == "INFO popbox.test: value ['before']\n"


def test_stop_gives_up_on_an_output_that_is_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logsetup, "STOP_TIMEOUT", 0.2)
    front = front_of(1)
    front.handle(record("fills the queue"))  # no writer: the sentinel finds no room
    writer = _Writer(front, io.StringIO())
    writer.stop()  # returns (after STOP_TIMEOUT) instead of waiting forever


class CountingStream(io.StringIO):
    """An output that counts the writes it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_logged_one_at_a_time_are_written_together() -> None:
    """The writer lets lines gather for LINGER after the first: it takes the GIL (and
    the event loop waits for it) once per batch, not once per line."""
    front = front_of(1000)
    out = CountingStream()
    writer = _Writer(front, out)
    writer.start()
    for n in range(50):  # a line a millisecond, as sessions log in a busy server
        front.handle(record("line %d", n))
        time.sleep(0.001)
    writer.stop()
    assert out.getvalue() == "".join(f"INFO popbox.test: line {n}\n" for n in range(50))
    # About 60 ms of lines in batches of LINGER (20 ms): a few writes, not fifty.
    assert out.writes <= 10

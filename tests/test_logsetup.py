"""Background logging (popbox/logsetup.py): records queue without blocking, a full queue
drops and says so, stopping writes what is queued."""

from __future__ import annotations

import logging
import queue

from popbox.logsetup import _Enqueue, _Writer


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("popbox.test", logging.INFO, __file__, 1, message, args, None)


def test_a_full_queue_drops_counts_and_the_writer_reports_it() -> None:
    front = _Enqueue(queue.Queue(2))
    collect = Collect()
    for n in range(5):
        front.handle(record("line %d", n))  # no writer yet: the queue fills, then drops
    assert front.dropped == 3
    writer = _Writer(front, collect)
    writer.start()
    writer.stop()
    assert collect.lines == [
        "INFO line 0",
        "WARNING 3 log records dropped: the log output is not keeping up",
        "INFO line 1",
    ]
    assert front.dropped == 0


def test_the_message_is_made_when_logged_not_when_written() -> None:
    front = _Enqueue(queue.Queue(10))
    collect = Collect()
    changing = ["before"]
    front.handle(record("value %s", changing))
    changing[0] = "after"
    writer = _Writer(front, collect)
    writer.start()
    writer.stop()
    assert collect.lines == ["INFO value ['before']"]

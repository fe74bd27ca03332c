"""Logging to stderr, one line per event, as text or as JSON (`log_format`).

text: `2026-11-26T23:31:04 WARNING popbox.login: login failed user=... client=...`, the
      format contrib/fail2ban/filter.d/popbox.conf matches.
json: one object per line, `{"time": "2026-11-26T22:31:04.120Z", "level": "WARNING",
      "logger": "popbox.login", "message": "login failed user=... client=...", ...}`
      (python-json-logger), time in RFC 3339 (UTC), then the structured fields the log
      call gives in `extra` (user, client, mechanism, reason, the logout counts) and the
      session's own (session id and client, bound by bind_session()).

Secrets never reach a log call in the first place (PASS, APOP digests, SASL payloads:
protocol/ keeps them out of reprs, server/ logs only user names, sanitized by
server/login.py printable()); the JSON formatter adds nothing but these fields.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import queue
import secrets
import sys
import threading
import time
from datetime import UTC, datetime
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

# The fields of the session the running asyncio task serves (each task has its own copy
# of the context, so concurrent sessions never see each other's).
_SESSION: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "popbox_session", default=None
)


def new_session_id() -> str:
    """A short random id naming one connection in the logs (like Dovecot's session=)."""
    return secrets.token_urlsafe(9)


def bind_session(**fields: str) -> None:
    """Attach fields (session id, client) to every record logged by the current task."""
    _SESSION.set(fields)


class SessionFields(logging.Filter):
    """Adds the current task's session fields to a record (JSON shows them; text does
    not); a field the log call gave itself wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _SESSION.get()
        if fields:
            for key, value in fields.items():
                if key not in record.__dict__:
                    setattr(record, key, value)
        return True


class Rfc3339JsonFormatter(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "message"],
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Lines waiting for the writer thread at most; past it new lines are dropped (and counted
# in a warning) rather than block the event loop. A megabyte or two.
MAX_QUEUED_LINES = 10_000
# Lines the writer joins into one write(2) at most.
WRITE_BATCH = 256
# How long the writer lets lines gather before it writes them (seconds).
LINGER = 0.02
# Seconds a stopping process waits for its queued lines to be written.
STOP_TIMEOUT = 5.0


class _Enqueue(logging.Handler):
    """Formats each record in the logging thread (the event loop: the writer thread must
    not hold the GIL for long, or the loop waits for it after every system call) and hands
    the line to the writer without ever blocking: a full queue drops."""

    def __init__(self, lines: queue.Queue[str | None]) -> None:
        super().__init__()
        self.lines = lines
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.put_nowait(self.format(record) + "\n")
        except queue.Full:
            self.dropped += 1
        except Exception:  # a broken record must not break the caller (logging.Handler)
            self.handleError(record)

    def take_dropped(self) -> str | None:
        """The warning line for what was dropped since the last call, if anything was."""
        dropped = self.dropped
        if not dropped:
            return None
        self.dropped -= dropped
        note = logging.LogRecord(
            "popbox.logging",
            logging.WARNING,
            __file__,
            0,
            "%d log records dropped: the log output is not keeping up",
            (dropped,),
            None,
        )
        return self.format(note) + "\n"


class _Writer:
    """The thread that writes queued lines to the stream, several per write(2)."""

    def __init__(self, front: _Enqueue, stream: TextIO) -> None:
        self.front = front
        self.stream = stream
        self._thread = threading.Thread(target=self._run, name="popbox-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, waiting at most STOP_TIMEOUT for an output that is stuck
        (a pipe nobody reads): a process must be able to exit anyway."""
        try:
            self.front.lines.put(None, timeout=STOP_TIMEOUT)
        except queue.Full:
            return
        self._thread.join(STOP_TIMEOUT)

    def _run(self) -> None:
        lines = self.front.lines
        stopping = False
        while not stopping:
            batch: list[str] = []
            line = lines.get()
            if line is not None:
                # Let lines gather: the thread then wants the GIL once per LINGER, not
                # once per line (each time it does, the event loop waits for it after
                # its next system call: a burst of connections was a burst of waits).
                time.sleep(LINGER)
            while True:
                if line is None:
                    stopping = True
                    break
                batch.append(line)
                if len(batch) >= WRITE_BATCH:
                    break
                try:
                    line = lines.get_nowait()
                except queue.Empty:
                    break
            if (note := self.front.take_dropped()) is not None:
                batch.append(note)
            if batch:
                self._write("".join(batch))

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr is gone or closed: nowhere left to say so


class _Running:
    writer: _Writer | None = None  # this process's writer thread, if logging in background


def setup_logging(
    level: str = "info", log_format: str = "text", *, background: bool = False
) -> None:
    """Log to stderr. background: records are written by a thread, so a slow reader of
    stderr (a full pipe to journald or a container runtime) never blocks the caller, the
    event loop; `popbox serve` uses it, one-shot commands do not."""
    # No format shows where a call was made, or its thread or process: skip collecting
    # them for every record (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(Rfc3339JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
            )
        )
    root = logging.getLogger()
    stop_background_logging()
    if background:
        front = _Enqueue(queue.Queue(MAX_QUEUED_LINES))
        front.setFormatter(handler.formatter)
        # The session fields come from the logging task's context: read them here.
        front.addFilter(SessionFields())
        root.handlers[:] = [front]
        _start_writer(front, handler.stream)
    else:
        handler.addFilter(SessionFields())
        root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _start_writer(front: _Enqueue, stream: TextIO) -> None:
    _Running.writer = _Writer(front, stream)
    _Running.writer.start()


def stop_background_logging() -> None:
    """Write what is queued and stop the writer thread (before a process exits)."""
    writer, _Running.writer = _Running.writer, None
    if writer is not None:
        writer.stop()


def _after_fork_in_child() -> None:
    # Threads do not survive fork(2): a worker gets its own queue and writer thread (the
    # parent's queue may even have been locked by the parent's writer at that moment).
    writer, _Running.writer = _Running.writer, None
    if writer is None:
        return
    front = writer.front
    front.lines = queue.Queue(MAX_QUEUED_LINES)
    front.dropped = 0
    _start_writer(front, writer.stream)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(stop_background_logging)

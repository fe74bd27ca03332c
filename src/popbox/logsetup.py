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
import logging.handlers
import os
import queue
import secrets
import sys
from datetime import UTC, datetime

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


# Records waiting for the writer thread at most; past it new records are dropped (and
# counted in a warning) rather than block the event loop. About a megabyte or two.
MAX_QUEUED_RECORDS = 10_000
# Seconds a stopping process waits for its queued records to be written.
STOP_TIMEOUT = 5.0


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread without ever blocking: a full queue drops."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The message is made now, from the arguments as they are now; the exception
        # stays for the formatter (nothing is pickled: the writer is a thread).
        record.message = record.getMessage()
        record.msg, record.args = record.message, None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Writer(logging.handlers.QueueListener):
    """The thread that writes the queued records, and says when some were dropped."""

    def __init__(self, front: _Enqueue, handler: logging.Handler) -> None:
        super().__init__(front.queue, handler)
        self._front = front
        self._records: queue.Queue[logging.LogRecord | None] = front.queue  # type: ignore[assignment]

    def stop(self) -> None:
        """Write what is queued, waiting at most STOP_TIMEOUT for an output that is stuck
        (a pipe nobody reads): a process must be able to exit anyway."""
        try:
            self._records.put(None, timeout=STOP_TIMEOUT)  # QueueListener's sentinel
        except queue.Full:
            return
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(STOP_TIMEOUT)

    def handle(self, record: logging.LogRecord) -> None:
        super().handle(record)
        dropped = self._front.dropped
        if dropped:
            self._front.dropped -= dropped
            note = logging.LogRecord(
                "popbox.logging",
                logging.WARNING,
                __file__,
                0,
                "%d log records dropped: the log output is not keeping up",
                (dropped,),
                None,
            )
            super().handle(note)


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
        front = _Enqueue(queue.Queue(MAX_QUEUED_RECORDS))
        # The session fields come from the logging task's context: read them here.
        front.addFilter(SessionFields())
        root.handlers[:] = [front]
        _start_writer(front, handler)
    else:
        handler.addFilter(SessionFields())
        root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _start_writer(front: _Enqueue, handler: logging.Handler) -> None:
    _Running.writer = _Writer(front, handler)
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
    front = writer._front
    front.queue = queue.Queue(MAX_QUEUED_RECORDS)
    front.dropped = 0
    _start_writer(front, writer.handlers[0])


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(stop_background_logging)

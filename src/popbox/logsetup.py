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

import contextvars
import logging
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


def setup_logging(level: str = "info", log_format: str = "text") -> None:
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
    handler.addFilter(SessionFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

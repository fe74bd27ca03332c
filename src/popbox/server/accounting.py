"""What one session did: the counts of its logout line, mirrored into the server's metrics.

The logout line follows Dovecot's pop3_logout_format (`top=%t/%p, retr=%r/%b, del=%d/%m,
size=%s`, with %i/%o as bytes_in/bytes_out):

    logout user=alice client=192.0.2.1 reason=quit top=0/0 retr=2/4096 del=1/3 size=12345
        bytes_in=64 bytes_out=4321

top and retr: commands completed / octets sent for them (status line to terminator);
del: messages removed at UPDATE / messages in the maildrop at login; size: the maildrop's
octets at login; bytes_in/bytes_out: everything received and sent on the connection.
"""

from __future__ import annotations

import logging
import time

from popbox.metrics import ServerMetrics

log = logging.getLogger("popbox.session")


class SessionAccounting:
    __slots__ = (
        "bytes_in",
        "bytes_out",
        "deleted",
        "messages",
        "metrics",
        "retr",
        "retr_bytes",
        "size",
        "top",
        "top_bytes",
    )

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.top = self.top_bytes = self.retr = self.retr_bytes = 0
        self.deleted = self.messages = self.size = 0
        self.bytes_in = self.bytes_out = 0

    # -- the hot path: one addition and one counter increment per transport call --------

    def received(self, octets: int) -> None:
        self.bytes_in += octets
        self.metrics.received_bytes.inc(octets)

    def sent(self, octets: int) -> None:
        self.bytes_out += octets
        self.metrics.sent_bytes.inc(octets)

    # -- once per command or session ----------------------------------------------------

    def opened(self) -> None:
        self.metrics.connections_active.inc()

    def logged_in(self, messages: int, octets: int) -> None:
        self.messages, self.size = messages, octets

    def retrieval_started(self) -> tuple[float, int]:
        """A RETR or TOP begins: what retrieval_done() measures from."""
        return time.monotonic(), self.bytes_out

    def retrieval_done(self, start: tuple[float, int], *, top: bool) -> None:
        """The reply's last octet has been handed to the transport."""
        started, bytes_before = start
        octets = self.bytes_out - bytes_before
        if top:
            self.top += 1
            self.top_bytes += octets
            return
        self.retr += 1
        self.retr_bytes += octets
        self.metrics.messages_retrieved.inc()
        self.metrics.retr_duration.observe(time.monotonic() - started)

    def removed(self, count: int) -> None:
        self.deleted += count
        self.metrics.messages_deleted.inc(count)

    def logout(self, user: str, client: str, reason: str) -> None:
        """The session's last line; the connection no longer counts as active."""
        self.metrics.connections_active.dec()
        counts = {
            "top": self.top,
            "top_bytes": self.top_bytes,
            "retr": self.retr,
            "retr_bytes": self.retr_bytes,
            "deleted": self.deleted,
            "messages": self.messages,
            "size": self.size,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
        log.info(
            "logout user=%s client=%s reason=%s top=%d/%d retr=%d/%d del=%d/%d size=%d "
            "bytes_in=%d bytes_out=%d",
            user,
            client,
            reason,
            *counts.values(),
            extra={"user": user, "client": client, "reason": reason, **counts},
        )

"""Errors typed by blame (shared/STYLE.md item 3).

RemoteProtocolError is the client's fault: it carries the `-ERR` reply to send and the
session goes on. LocalProtocolError is our own bug (a driver calling the core out of turn);
it never reaches the wire as a protocol reply.
"""

from __future__ import annotations


class RemoteProtocolError(Exception):
    """The client broke a rule; `reply` is the complete `-ERR ...\\r\\n` line to send."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class LocalProtocolError(Exception):
    """The driver (our code) misused the core, e.g. answered a request that was not open."""

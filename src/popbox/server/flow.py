"""Flow control of what a session writes: the transport's pause_writing/resume_writing,
and the wait for the client to read (drain), under RFC 1939 section 3's autologout timer.

A client that stops reading in the middle of a reply (a RETR of a big message, never
read) is inactive: after idle_timeout seconds of it, drain raises OutputStalled and the
session ends without UPDATE, as any autologout, instead of holding the maildrop lock for
as long as the client's kernel answers TCP's window probes.
"""

from __future__ import annotations

import asyncio

from popbox.server.retrieval import ClientGone


class OutputStalled(ClientGone):
    """The client read none of our output for idle_timeout seconds."""


class WriteFlow:
    """The protocol's pause_writing/resume_writing/connection_lost call pause(),
    resume() and lost(); the session's driver awaits drain() between writes."""

    def __init__(self) -> None:
        self._writable: asyncio.Future[None] | None = None
        self._lost = False

    def pause(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume(self) -> None:
        self._wake()

    def lost(self) -> None:
        self._lost = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self, timeout: float) -> None:
        """Return once the transport takes writes again; ClientGone if the connection
        is lost, OutputStalled after `timeout` seconds without either."""
        if self._writable is not None and not self._lost:
            try:
                async with asyncio.timeout(timeout):
                    await self._writable
            except TimeoutError:
                raise OutputStalled from None
        if self._lost:
            raise ClientGone("connection lost")

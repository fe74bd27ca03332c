"""A listener that empties the kernel's accept queue every loop turn; its connections
start as sessions a few per turn, client addresses taken in turn (server/start_queue.py).

The kernel completes TCP handshakes by itself and queues them on the listening socket (at
most net.core.somaxconn, 4096 by default); while that queue is full it drops new SYNs, and
the client retries 1 s, then 3 s later. asyncio's create_server accepts everything pending
once per loop turn, but also builds a transport and a session for each in that same turn:
a burst of thousands of connects makes the turn last long enough for the queue to
overflow, and an honest client connecting then waits seconds for its greeting.

Here accepting is only accept(2): pending connections move to our own queue at once, so
the kernel's never fills.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Unpack

from popbox.server.start_queue import Starter, StartOptions, StartQueue

__all__ = ["ACCEPT_RETRY_DELAY", "RETRY_AT_ONCE", "EagerAcceptServer"]

log = logging.getLogger("popbox.server")

# accept(2) calls per wake-up at most, so that accepting cannot starve the loop either.
ACCEPT_PER_WAKE = 128
# asyncio's own servers pause accepting this long when out of file descriptors.
ACCEPT_RETRY_DELAY = 1.0
# accept(2): errors of the connection being accepted, "treated like EAGAIN by retrying";
# any other error (EMFILE, ENOBUFS ...) pauses accepting for ACCEPT_RETRY_DELAY.
RETRY_AT_ONCE = frozenset(
    {
        errno.ENETDOWN,
        errno.EPROTO,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
    }
)


class EagerAcceptServer(StartQueue):
    """Accepts on `sock` (bound and listening, maybe shared with other workers) and puts
    each connection in its start queue (StartQueue: the other arguments are its own)."""

    def __init__(
        self,
        sock: socket.socket,
        start: Starter,
        *,
        max_waiting: Callable[[], int],
        **options: Unpack[StartOptions],
    ) -> None:
        super().__init__(start, max_waiting=max_waiting, **options)
        self.sockets = [sock]
        self._sock = sock
        self._paused: asyncio.TimerHandle | None = None

    def start_serving(self) -> None:
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; connections not yet started are closed unanswered. Sessions
        that started are the server's (ServerContext.tasks)."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        if self._paused is not None:
            self._paused.cancel()
        else:
            loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self.close_waiting()

    def _accept(self) -> None:
        limit = self._max_waiting()
        for _ in range(ACCEPT_PER_WAKE):
            try:
                conn, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if error.errno in RETRY_AT_ONCE:
                    continue
                log.error("accept failed: %s", error)
                self._pause()
                break
            conn.setblocking(False)
            self.put(conn, str(address[0]) if isinstance(address, tuple) else "?", limit)

    def _pause(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._sock.fileno())
        self._paused = loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self._closed:
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)

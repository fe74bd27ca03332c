"""A listener that empties the kernel's accept queue every loop turn and starts sessions a
few per turn, taking client addresses in turn.

The kernel completes TCP handshakes by itself and queues them on the listening socket (at
most net.core.somaxconn, 4096 by default); while that queue is full it drops new SYNs, and
the client retries 1 s, then 3 s later. asyncio's create_server accepts everything pending
once per loop turn, but also builds a transport and a session for each in that same turn:
a burst of thousands of connects makes the turn last long enough for the queue to
overflow, and an honest client connecting then waits seconds for its greeting.

Here accepting is only accept(2): pending connections move to our own queue at once, so
the kernel's never fills. Sessions start from that queue at most `per_turn` a loop turn,
so a turn stays short and the loop keeps serving the sessions it has. The queue is one
line per client address, served in rotation (one connection from each address in turn,
oldest first within an address): a flood from a few addresses, however many connections,
delays a client from another address by a few turns, not by the whole flood.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("popbox.server")

# Sessions started per loop turn: each costs a few hundred microseconds (transport,
# session, greeting, log line), so a turn with a full batch stays near 5 ms.
PER_TURN = 16
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

Starter = Callable[[socket.socket, str], Coroutine[Any, Any, None]]


class EagerAcceptServer:
    """Accepts on `sock` (bound and listening, maybe shared with other workers) and runs
    `start(sock, peer_ip)` for each connection, as described above. `start` owns the
    socket from then on. `max_waiting()` bounds our queue (asked at each wake-up, so a
    reloaded limit applies); past it the oldest connection of the address with the most
    waiting is closed unanswered."""

    def __init__(
        self,
        sock: socket.socket,
        start: Starter,
        *,
        max_waiting: Callable[[], int],
        per_turn: int = PER_TURN,
        on_dropped: Callable[[], None] | None = None,
    ) -> None:
        self.sockets = [sock]
        self._sock = sock
        self._start = start
        self._max_waiting = max_waiting
        self._per_turn = per_turn
        self._on_dropped = on_dropped
        # Per client address, its waiting connections; the dict's order is the rotation.
        self._waiting: dict[str, collections.deque[socket.socket]] = {}
        self._count = 0
        self._largest = ""  # the address with the most waiting, more or less (_drop_one)
        self._starting: set[asyncio.Task[None]] = set()
        self._scheduled = False
        self._closed = False
        self._paused: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return self._count

    def start_serving(self) -> None:
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; connections not yet started are closed unanswered. Sessions
        that started are the server's (ServerContext.tasks)."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        if self._paused is not None:
            self._paused.cancel()
        else:
            loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for line in self._waiting.values():
            for conn in line:
                conn.close()
        self._waiting.clear()
        self._count = 0

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._starting, return_exceptions=True)

    # -- accepting ------------------------------------------------------------------------

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
            peer = str(address[0]) if isinstance(address, tuple) else "?"
            line = self._waiting.get(peer)
            if line is None:
                line = self._waiting[peer] = collections.deque()
            line.append(conn)
            self._count += 1
            if len(line) > len(self._waiting.get(self._largest, ())):
                self._largest = peer
            if self._count > limit:
                self._drop_one()
        if self._waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_some)

    def _drop_one(self) -> None:
        """Full: close, unanswered, the oldest waiting connection of the address with the
        most waiting (the flood's, not the client that just arrived from elsewhere)."""
        peer = self._largest if self._largest in self._waiting else next(iter(self._waiting))
        line = self._waiting[peer]
        line.popleft().close()
        self._count -= 1
        if not line:
            del self._waiting[peer]
        if self._on_dropped is not None:
            self._on_dropped()

    def _pause(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._sock.fileno())
        self._paused = loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self._closed:
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)

    # -- starting -------------------------------------------------------------------------

    def _start_some(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        waiting = self._waiting
        loop = asyncio.get_running_loop()
        for _ in range(min(self._per_turn, self._count)):
            peer = next(iter(waiting))  # the address whose turn it is
            line = waiting.pop(peer)
            conn = line.popleft()
            if line:
                waiting[peer] = line  # to the back of the rotation
            self._count -= 1
            task = loop.create_task(self._start_one(conn, peer))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
        if waiting:
            # The next batch after the loop has polled (and so accepted) again.
            self._scheduled = True
            loop.call_soon(self._start_some)

    async def _start_one(self, conn: socket.socket, peer: str) -> None:
        try:
            await self._start(conn, peer)
        except BaseException:
            with contextlib.suppress(OSError):
                conn.close()
            raise

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
so a turn stays short and the loop keeps serving the sessions it has; while a quiet
client is being served (pacing.py), at most `busy_per_turn` of them (one) are from busy
addresses, a flood's. The queue is one line per client address, served in rotation (one
connection from each address in turn, oldest first within an address): a flood from a
few addresses, however many connections, delays a client from another address by a few
turns, not by the whole flood.

A quiet address (none of its connections waiting, fewer than QUIET sessions open) does
not even wait for its turn: its connection goes to an express line, and express and
rotation take turns at starting. A flood spread over a botnet's addresses, a few
connections each, would otherwise put an honest client behind every one of them: as it
is, the client waits for one start, whatever the flood. Starting one flood session per
turn while a quiet client is served keeps the turns short; the turn after is only as
far away as what the loop has to do.

A connection that the client reset while it waited is closed without a session: that
costs one recv(2), where a session (transport, greeting, two log lines) costs a hundred
times more, and a third of a connect flood may be resets. A client that only half-closed
(`printf 'USER ...' | nc`) still gets its session.
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

from popbox import pacing

log = logging.getLogger("popbox.server")

# Sessions started per loop turn: each costs a few hundred microseconds (transport,
# session, greeting, log lines; a TLS handshake more), and a client's next command waits
# for the turn to end. Fewer per turn would keep a busy server's newcomers waiting turns
# for nothing: fifty TLS clients over eight addresses ran 20 % slower, with a p99 half
# as long again, at one per turn.
PER_TURN = 16
# Of those, sessions of a busy address (a flood's: ServerContext.busy) while a quiet
# client is being served (pacing.py): its next command waits for one start, not sixteen.
BUSY_PER_TURN = 1
# Reset connections closed unstarted per loop turn at most (a few microseconds each).
RESETS_PER_TURN = 64
# An address with fewer sessions open than this, and nothing waiting, is quiet.
QUIET = 2
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


def _nothing_open(peer: str) -> int:
    return 0


def _never_busy(peer: str) -> bool:
    return False


class EagerAcceptServer:
    """Accepts on `sock` (bound and listening, maybe shared with other workers) and runs
    `start(sock, peer_ip)` for each connection, as described above. `start` owns the
    socket from then on. `open_from(peer_ip)` tells how many sessions an address has open.
    `max_waiting()` bounds our queue (asked at each wake-up, so a reloaded limit applies);
    past it the oldest connection of the address with the most waiting is closed
    unanswered, and `on_dropped("backlog")` called; `on_dropped("reset")` for each reset
    connection closed unstarted."""

    def __init__(
        self,
        sock: socket.socket,
        start: Starter,
        *,
        max_waiting: Callable[[], int],
        per_turn: int = PER_TURN,
        busy_per_turn: int = BUSY_PER_TURN,
        on_dropped: Callable[[str], None] | None = None,
        open_from: Callable[[str], int] = _nothing_open,
        busy: Callable[[str], bool] = _never_busy,
    ) -> None:
        self.sockets = [sock]
        self._sock = sock
        self._start = start
        self._max_waiting = max_waiting
        self._per_turn = per_turn
        self._busy_per_turn = busy_per_turn
        self._on_dropped = on_dropped
        self._open_from = open_from
        self._busy = busy
        # Per client address, its waiting connections; the dict's order is the rotation.
        self._waiting: dict[str, collections.deque[socket.socket]] = {}
        # Quiet addresses' connections, at most one each, in arrival order.
        self._express: dict[str, socket.socket] = {}
        self._express_next = True  # whose turn it is when both lines have connections
        self._count = 0  # waiting in both
        self._largest = ""  # the address with the most waiting, more or less (_drop_one)
        self._starting: set[asyncio.Task[None]] = set()
        self._starting_from: collections.Counter[str] = collections.Counter()
        self._scheduled = False
        self._closed = False
        self._paused: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return self._count

    def waiting_from(self, peer: str) -> int:
        """Connections from `peer` waiting to start or starting (in their TLS handshake,
        on an implicit-TLS port: not yet a session, and as much work as one)."""
        waiting = len(self._waiting.get(peer, ())) + (peer in self._express)
        return waiting + self._starting_from[peer]

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
        for conn in self._express.values():
            conn.close()
        self._waiting.clear()
        self._express.clear()
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
            self._count += 1
            line = self._waiting.get(peer)
            if line is None and peer not in self._express and self._open_from(peer) < QUIET:
                self._express[peer] = conn
            else:
                if line is None:
                    line = self._waiting[peer] = collections.deque()
                line.append(conn)
                if len(line) > len(self._waiting.get(self._largest, ())):
                    self._largest = peer
            if self._count > limit:
                self._drop_one()
        if self._count and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_some)

    def _drop_one(self) -> None:
        """Full: close, unanswered, the oldest waiting connection of the address with the
        most waiting (the flood's, not the client that just arrived from elsewhere); with
        no address waiting twice, the oldest quiet one."""
        if self._waiting:
            peer = self._largest if self._largest in self._waiting else next(iter(self._waiting))
            line = self._waiting[peer]
            line.popleft().close()
            if not line:
                del self._waiting[peer]
        else:
            self._express.pop(next(iter(self._express))).close()
        self._count -= 1
        if self._on_dropped is not None:
            self._on_dropped("backlog")

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
        loop = asyncio.get_running_loop()
        started = resets = 0
        busy_left = self._busy_per_turn if pacing.interactive() else self._per_turn
        while self._count and started < self._per_turn and resets < RESETS_PER_TURN:
            busy = self._busy(self._next_peer())
            if busy and not busy_left:
                break
            conn, peer = self._next()
            if self._was_reset(conn):
                resets += 1
                continue
            started += 1
            busy_left -= busy
            task = loop.create_task(self._start_one(conn, peer))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
        if self._count:
            # The next batch after the loop has polled (and so accepted) again.
            self._scheduled = True
            loop.call_soon(self._start_some)

    def _express_turn(self) -> bool:
        """Whether the next start is the express line's: the lines take turns."""
        return bool(self._express) and (self._express_next or not self._waiting)

    def _next_peer(self) -> str:
        """The address whose connection _next() takes."""
        return next(iter(self._express if self._express_turn() else self._waiting))

    def _next(self) -> tuple[socket.socket, str]:
        """The connection to start next: express and rotation take turns."""
        self._count -= 1
        express = self._express_turn()
        self._express_next = not express
        if express:
            peer = next(iter(self._express))
            return self._express.pop(peer), peer
        peer = next(iter(self._waiting))  # the address whose turn it is
        line = self._waiting.pop(peer)
        conn = line.popleft()
        if line:
            self._waiting[peer] = line  # to the back of the rotation
        return conn, peer

    def _was_reset(self, conn: socket.socket) -> bool:
        """Closes `conn` if the client reset it (the peek fails); data or a half-close
        means a session."""
        try:
            conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            conn.close()
            if self._on_dropped is not None:
                self._on_dropped("reset")
            return True
        return False

    async def _start_one(self, conn: socket.socket, peer: str) -> None:
        self._starting_from[peer] += 1
        try:
            await self._start(conn, peer)
        except BaseException:
            with contextlib.suppress(OSError):
                conn.close()
            raise
        finally:
            self._starting_from[peer] -= 1
            if not self._starting_from[peer]:
                del self._starting_from[peer]

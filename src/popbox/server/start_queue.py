"""Connections waiting to become sessions, started a few per loop turn with client
addresses taken in turn: the start budget of every POP3 listener (server/accepting.py for
plain listeners, server/proxy_listener.py once the PROXY header has named the client).

A session costs a few hundred microseconds to start (transport, session, greeting, two
log lines; a TLS handshake more), and a client's next command waits for the loop turn to
end. So sessions start from this queue at most `per_turn` a loop turn, and the loop keeps
serving the sessions it has; while a quiet client is being served (pacing.py), at most
`busy_per_turn` of them (one, and none if one started less than BUSY_START_EVERY ago)
are from busy addresses, a flood's. The queue is one line per client address, served in
rotation (one connection from each address in turn, oldest first within an address): a
flood from a few addresses, however many connections, delays a client from another
address by a few turns, not by the whole flood.

A quiet address (none of its connections waiting, fewer than QUIET sessions open) does
not even wait for its turn: its connection goes to an express line, and express and
rotation take turns at starting. A flood spread over a botnet's addresses, a few
connections each, would otherwise put an honest client behind every one of them: as it
is, the client waits for one start, whatever the flood. Starting one flood session per
turn while a quiet client is served keeps the turns short; the turn after is only as
far away as what the loop has to do. A botnet's addresses had nothing open when their
first connections came, so those went to the express line; once the rest of the flood
has made an address busy, its express connection joins its line again, first in it.

A flood's sessions are background work (pacing.py), given a step per loop turn. While
MAX_PACED steps or more wait, a busy address's session starts only every
BACKED_UP_START_EVERY: each would mostly wait too, and sessions that wait are objects
that every young pass of the garbage collector walks, while a connection that waits here
is only a socket. (Under a burst of 5,000 connects, a thousand and more paced sessions
made those passes last 10-20 ms, each a stall for every client.) Busy addresses are not
only floods, many users behind one NAT are one too: their sessions keep starting,
twenty a second, however long the backlog lasts. (A hundred a second: 1-17 honest
sessions over 5x in each of three long hostile runs; twenty: 2-5.)

A connection that the client reset while it waited is closed without a session: that
costs one recv(2), where a session costs a hundred times more, and a third of a connect
flood may be resets. A client that only half-closed (`printf 'USER ...' | nc`) still
gets its session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypedDict

from popbox import pacing

__all__ = ["BUSY_PER_TURN", "BUSY_START_EVERY", "PER_TURN", "QUIET", "StartQueue", "Starter"]

# Sessions started per loop turn. Fewer per turn would keep a busy server's newcomers
# waiting turns for nothing: fifty TLS clients over eight addresses ran 20 % slower, with
# a p99 half as long again, at one per turn.
PER_TURN = 16
# Of those, sessions of a busy address (a flood's: ServerContext.busy) while a quiet
# client is being served (pacing.py): its next command waits for one start, not sixteen.
BUSY_PER_TURN = 1
# And then only if none did for this long: 250 a second. One a turn was 1,000 a second
# and more under a 5,000-connect burst, each with a greeting, a close and two log lines;
# at one each 4 ms the honest client's median session in the burst fell from 23-34 ms to
# 12-16 (10 ms idle), and its sessions in the long hostile run from 864-912 to 1,160-1,226.
BUSY_START_EVERY = 0.004
# Paced steps waiting (pacing.py) past which a busy address's session starts only if
# none did for BACKED_UP_START_EVERY seconds.
MAX_PACED = 64
BACKED_UP_START_EVERY = 0.05
# Reset connections closed unstarted per loop turn at most (a few microseconds each).
RESETS_PER_TURN = 64
# An address with fewer sessions open than this, and nothing waiting, is quiet.
QUIET = 2

Starter = Callable[[socket.socket, str], Coroutine[Any, Any, None]]


class StartOptions(TypedDict, total=False):
    """StartQueue's keyword arguments but max_waiting (for classes built on it)."""

    per_turn: int
    busy_per_turn: int
    on_dropped: Callable[[str], None] | None
    on_waiting: Callable[[], None] | None
    open_from: Callable[[str], int]
    busy: Callable[[str], bool]


def nothing_open(peer: str) -> int:
    return 0


def never_busy(peer: str) -> bool:
    return False


class StartQueue:
    """Runs `start(sock, peer_ip)` for each connection put(), as described above. `start`
    owns the socket from then on. `open_from(peer_ip)` tells how many sessions an address
    has open. `max_waiting()` bounds the queue (asked at each put, so a reloaded limit
    applies); past it the oldest connection of the address with the most waiting is
    closed unanswered, and `on_dropped("backlog")` called; `on_dropped("reset")` for each
    reset connection closed unstarted. `on_waiting()` after each loop turn's starts and
    at close: `waiting` may have changed."""

    def __init__(
        self,
        start: Starter,
        *,
        max_waiting: Callable[[], int],
        per_turn: int = PER_TURN,
        busy_per_turn: int = BUSY_PER_TURN,
        on_dropped: Callable[[str], None] | None = None,
        on_waiting: Callable[[], None] | None = None,
        open_from: Callable[[str], int] = nothing_open,
        busy: Callable[[str], bool] = never_busy,
    ) -> None:
        self._start = start
        self._max_waiting = max_waiting
        self._per_turn = per_turn
        self._busy_per_turn = busy_per_turn
        self._on_dropped = on_dropped
        self._on_waiting = on_waiting
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
        self._busy_started_at = -math.inf  # loop.time() of the last start of a busy address

    @property
    def waiting(self) -> int:
        return self._count

    def waiting_from(self, peer: str) -> int:
        """Connections from `peer` waiting to start or starting (in their TLS handshake,
        on an implicit-TLS port: not yet a session, and as much work as one)."""
        waiting = len(self._waiting.get(peer, ())) + (peer in self._express)
        return waiting + self._starting_from[peer]

    def put(self, conn: socket.socket, peer: str, limit: int | None = None) -> None:
        """Queue a connection (non-blocking) from `peer`; `limit`: max_waiting(), when
        the caller asked it already for a batch. Starting begins on the next loop turn."""
        if self._closed:
            conn.close()
            return
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
        if self._count > (self._max_waiting() if limit is None else limit):
            self._drop_one()
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_some)

    def close_waiting(self) -> None:
        """Close, unanswered, every connection not yet started; put() closes from now on."""
        self._closed = True
        for line in self._waiting.values():
            for conn in line:
                conn.close()
        for conn in self._express.values():
            conn.close()
        self._waiting.clear()
        self._express.clear()
        self._count = 0
        if self._on_waiting is not None:
            self._on_waiting()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._starting, return_exceptions=True)

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

    # -- starting -------------------------------------------------------------------------

    def _start_some(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        started = resets = 0
        interactive = pacing.interactive()
        busy_left = self._busy_per_turn if interactive else self._per_turn
        backed_up = pacing.waiting() >= MAX_PACED
        every = BACKED_UP_START_EVERY if backed_up else BUSY_START_EVERY if interactive else 0
        if loop.time() - self._busy_started_at < every:
            busy_left = 0
        while self._count and started < self._per_turn and resets < RESETS_PER_TURN:
            self._demote_busy_express()
            busy = self._busy(self._next_peer())
            if busy and not busy_left:
                if not self._express:
                    break
                self._express_next = True  # the rotation's turn passes: quiet ones may start
                continue
            conn, peer = self._next()
            if self._was_reset(conn):
                resets += 1
                continue
            started += 1
            if busy:
                busy_left = 0 if backed_up else busy_left - 1
                self._busy_started_at = loop.time()
            task = loop.create_task(self._start_one(conn, peer))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
        if self._on_waiting is not None:
            self._on_waiting()
        if self._count:
            # The next batch after the loop has polled (and so accepted) again.
            self._scheduled = True
            loop.call_soon(self._start_some)

    def _demote_busy_express(self) -> None:
        """Express connections whose addresses became busy since they came (a flood's
        first connections, its others behind them) go to the front of their addresses'
        lines: the express line is for quiet addresses, and a busy one at its head would
        hold a quiet client behind it for a turn each while starts are paced."""
        while self._express:
            peer = next(iter(self._express))
            if not self._busy(peer):
                return
            conn = self._express.pop(peer)
            line = self._waiting.get(peer)
            if line is None:
                line = self._waiting[peer] = collections.deque()
            line.appendleft(conn)

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

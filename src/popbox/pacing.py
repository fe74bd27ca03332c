"""Background work a step per loop turn, so that an interactive client is never stuck
behind it.

The event loop runs, in each turn, everything that became ready, and a client's command
waits for a turn or two before its reply leaves: its latency is the length of the turns.
Some work is big or plentiful and need not be quick: the blocks of a big message (ten
sessions whose 20 MB RETR is never read still fill megabytes of kernel buffer each),
counting the size of a big new message, and everything done for an address that has
several sessions open (a flood of connects, a botnet's garbage). Such work waits for a
step() before each piece: at most STEPS_PER_TURN steps are given per loop turn, in the
order asked, and the rest of each turn belongs to everything else. When nothing else
runs, turns are short and the steps follow each other at full speed.

Pacing is for the clients it protects: only while interactive work was seen lately
(foreground(), called for each command of a quiet session) are steps given one per
turn. Without it (a benchmark's fifty clients from one address, all of them busy) up to
UNPACED_PER_TURN steps run per turn, as if there were no pacer.

One pacer serves the whole event loop (step() is a module function), so that every kind
of background work shares the one budget.
"""

from __future__ import annotations

import asyncio
import collections
import time

# Steps per loop turn. A step is a piece of background work of at most a few hundred
# microseconds: a 64 KiB block encoded and sent or counted, a command line handled.
STEPS_PER_TURN = 1
# Steps per loop turn while no interactive work was seen for FOREGROUND_WINDOW seconds.
UNPACED_PER_TURN = 64
FOREGROUND_WINDOW = 0.5


class Pacer:
    def __init__(
        self, per_turn: int = STEPS_PER_TURN, unpaced_per_turn: int = UNPACED_PER_TURN
    ) -> None:
        self._per_turn = per_turn
        self._unpaced_per_turn = unpaced_per_turn
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._foreground_at = -FOREGROUND_WINDOW  # time.monotonic() of the last one

    def foreground(self) -> None:
        """Interactive work just ran: pace the background for FOREGROUND_WINDOW."""
        self._foreground_at = time.monotonic()

    def interactive(self) -> bool:
        """Whether interactive work was seen within FOREGROUND_WINDOW."""
        return time.monotonic() - self._foreground_at < FOREGROUND_WINDOW

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def step(self) -> None:
        """Wait for this step's turn (first come, first served); at once when nothing
        is paced and nothing waits."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop: what the old one left is void
            self._loop, self._scheduled = loop, False
            self._waiting.clear()
        if not self._waiting and not self.interactive():
            return
        turn: asyncio.Future[None] = loop.create_future()
        self._waiting.append(turn)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._release)
        await turn

    def _release(self) -> None:
        self._scheduled = False
        released = 0
        per_turn = self._per_turn if self.interactive() else self._unpaced_per_turn
        while self._waiting and released < per_turn:
            turn = self._waiting.popleft()
            if not turn.done():  # not a cancelled task's
                turn.set_result(None)
                released += 1
        if self._waiting and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._release)


_PACER = Pacer()


async def step() -> None:
    """Wait for a background step of the running event loop (see above)."""
    await _PACER.step()


def foreground() -> None:
    """A quiet client's command is being served: pace the background (see above)."""
    _PACER.foreground()


def interactive() -> bool:
    """Whether a quiet client's command was served within FOREGROUND_WINDOW seconds."""
    return _PACER.interactive()


def waiting() -> int:
    """Steps waiting now (for tests and diagnostics)."""
    return _PACER.waiting

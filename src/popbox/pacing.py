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

One pacer serves the whole event loop (step() is a module function), so that every kind
of background work shares the one budget.
"""

from __future__ import annotations

import asyncio
import collections

# Steps per loop turn. A step is a piece of background work of at most a few hundred
# microseconds: a 64 KiB block encoded and sent or counted, a command line handled.
STEPS_PER_TURN = 1


class Pacer:
    def __init__(self, per_turn: int = STEPS_PER_TURN) -> None:
        self._per_turn = per_turn
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def step(self) -> None:
        """Wait for this step's turn (first come, first served)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop: what the old one left is void
            self._loop, self._scheduled = loop, False
            self._waiting.clear()
        turn: asyncio.Future[None] = loop.create_future()
        self._waiting.append(turn)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._release)
        await turn

    def _release(self) -> None:
        self._scheduled = False
        released = 0
        while self._waiting and released < self._per_turn:
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


def waiting() -> int:
    """Steps waiting now (for tests and diagnostics)."""
    return _PACER.waiting

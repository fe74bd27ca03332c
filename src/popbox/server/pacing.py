"""Bulk work a step per loop turn, so that short commands are never stuck behind it.

The event loop runs, in each turn, everything that became ready. A session streaming a
big message would encode block after block in one turn for as long as the socket takes
them (a client that stops reading still has megabytes of kernel buffer to fill), and ten
such sessions make every turn last milliseconds: an interactive client's every command
waits for one turn or two, and its whole session slows tenfold. So the blocks after a
big message's first go through a Pacer: at most `per_turn` bulk steps run per loop turn,
in the order they asked, and the rest of each turn belongs to everything else. When
nothing else runs, turns are short and the steps follow each other at full speed.
"""

from __future__ import annotations

import asyncio
import collections

# Bulk steps (a block of up to 64 KiB to encode and send) per loop turn.
STEPS_PER_TURN = 1


class Pacer:
    def __init__(self, per_turn: int = STEPS_PER_TURN) -> None:
        self._per_turn = per_turn
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._scheduled = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def step(self) -> None:
        """Wait for this step's turn (first come, first served)."""
        loop = asyncio.get_running_loop()
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
            if not turn.done():  # not a cancelled session's
                turn.set_result(None)
                released += 1
        if self._waiting:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._release)

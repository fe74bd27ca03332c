"""The pacer (popbox/pacing.py): while a quiet client is served, background steps a few
per loop turn, first come first served, and the loop's other work runs in every turn
between them; with no quiet client about, no pacing at all."""

from __future__ import annotations

import asyncio

import pytest

from popbox import pacing
from popbox.pacing import Pacer


class Turns:
    """Counts loop turns: a callback that re-arms itself once per turn."""

    def __init__(self) -> None:
        self.count = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        assert self._handle is not None
        self._handle.cancel()


def test_steps_run_a_few_per_turn_in_the_order_asked() -> None:
    async def main() -> list[tuple[str, int, int]]:
        pacer = Pacer(per_turn=2)
        pacer.foreground()
        turns = Turns()
        turns.start()
        log: list[tuple[str, int, int]] = []

        async def stream(name: str, blocks: int) -> None:
            for block in range(blocks):
                await pacer.step()
                log.append((name, block, turns.count))

        await asyncio.gather(stream("a", 3), stream("b", 3), stream("c", 3))
        turns.stop()
        return log

    log = asyncio.run(main())
    assert [(name, block) for name, block, _ in log] == [
        ("a", 0),
        ("b", 0),
        ("c", 0),
        ("a", 1),
        ("b", 1),
        ("c", 1),
        ("a", 2),
        ("b", 2),
        ("c", 2),
    ]
    per_turn: dict[int, int] = {}
    for _, _, turn in log:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    assert max(per_turn.values()) == 2
    assert len(per_turn) >= 5  # 9 steps, 2 a turn


def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    async def main() -> list[str]:
        pacer = Pacer(per_turn=1)
        pacer.foreground()
        done: list[str] = []

        async def one(name: str) -> None:
            await pacer.step()
            done.append(name)

        first = asyncio.create_task(one("first"))
        doomed = asyncio.create_task(one("doomed"))
        last = asyncio.create_task(one("last"))
        await asyncio.sleep(0)  # all three are waiting
        assert pacer.waiting == 3
        doomed.cancel()
        await asyncio.gather(first, last)
        assert doomed.cancelled()
        assert pacer.waiting == 0
        return done

    assert asyncio.run(main()) == ["first", "last"]


def test_alone_a_stream_is_not_held_back() -> None:
    async def main() -> int:
        pacer = Pacer()
        pacer.foreground()
        turns = Turns()
        turns.start()
        for _ in range(50):
            await pacer.step()
        turns.stop()
        return turns.count

    # One step a turn at most, and the next turn comes at once: 50 steps, two turns each.
    assert 50 <= asyncio.run(main()) <= 110


def test_without_a_quiet_client_steps_do_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> tuple[int, int]:
        pacer = Pacer()
        turns = Turns()
        turns.start()
        for _ in range(50):
            await pacer.step()  # nothing paced: no wait at all
        unpaced = turns.count
        pacer.foreground()
        for _ in range(5):
            await pacer.step()
        turns.stop()
        return unpaced, turns.count - unpaced

    monkeypatch.setattr(pacing, "FOREGROUND_WINDOW", 60.0)
    unpaced, paced = asyncio.run(main())
    assert unpaced == 0
    assert paced >= 5

"""The full garbage collections' schedule (popbox/server/collector.py), with the real
collector: a full pass waits while a quiet client is being served, and still comes when
memory grows (a leak of reference cycles) or when it is overdue."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import weakref
from collections.abc import Iterator

import pytest

from popbox import pacing
from popbox.server import collector
from popbox.server.collector import FULL_AFTER, Schedule


class Node:
    """One link of a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None
        self.payload = [(n,) for n in range(8)]


def old_cycle() -> weakref.ref[Node]:
    """A reference cycle that is garbage and old (in generation 2), as a session's objects
    would be after seconds of life: only a full pass frees it."""
    first, second = Node(), Node()
    first.other, second.other = second, first
    gc.collect(1)  # generation 0 -> 1 -> 2
    gc.collect(1)
    alive = weakref.ref(first)
    del first, second
    return alive


def make_due() -> None:
    """FULL_AFTER young-generation passes since the last full one."""
    for _ in range(FULL_AFTER):
        gc.collect(1)


@pytest.fixture(autouse=True)
def collector_stopped(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No automatic pass in this process while a test counts on which pass ran, and a
    pacer that has served no client yet."""
    monkeypatch.setattr(pacing, "_PACER", pacing.Pacer())
    gc.disable()
    gc.collect()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def quiet_client_served() -> Iterator[None]:
    pacing.foreground()
    yield


def test_not_due_without_young_passes() -> None:
    schedule = Schedule()
    alive = old_cycle()  # two young passes: fewer than FULL_AFTER
    assert gc.get_count()[2] < FULL_AFTER
    assert not schedule.due()
    assert alive() is not None


def test_due_and_no_client_served_lately_a_full_pass_frees_old_cycles() -> None:
    schedule = Schedule()
    alive = old_cycle()
    make_due()
    assert alive() is not None  # young passes do not free it
    assert not pacing.interactive()
    assert schedule.due()
    assert schedule.collect() >= 2
    assert alive() is None
    assert schedule.passes == 1
    assert gc.get_count()[2] == 0
    assert not schedule.due()  # not again until young passes make it due


@pytest.mark.usefixtures("quiet_client_served")
def test_a_full_pass_waits_while_a_quiet_client_is_served() -> None:
    schedule = Schedule()
    alive = old_cycle()
    make_due()
    assert pacing.interactive()
    assert not schedule.due()
    assert alive() is not None


@pytest.mark.usefixtures("quiet_client_served")
def test_a_full_pass_comes_anyway_when_overdue() -> None:
    schedule = Schedule(latest=0.0)
    alive = old_cycle()
    make_due()
    assert schedule.due()
    schedule.collect()
    assert alive() is None


@pytest.mark.usefixtures("quiet_client_served")
def test_a_leak_of_cycles_gets_a_full_pass_while_clients_are_served() -> None:
    schedule = Schedule(growth=1.05, min_growth=0)
    leaked = [old_cycle() for _ in range(sys.getallocatedblocks() // 100)]
    make_due()
    grown = sys.getallocatedblocks() / schedule.blocks
    assert grown >= 1.05, grown
    assert schedule.due()
    schedule.collect()
    assert all(alive() is None for alive in leaked)
    assert sys.getallocatedblocks() < 1.05 * schedule.blocks


@pytest.mark.usefixtures("quiet_client_served")
def test_growth_below_min_growth_waits_while_a_quiet_client_is_served() -> None:
    """Memory doubled from a small start (a server's first connections): no full pass
    while clients are served, until it has grown by min_growth blocks as well."""
    schedule = Schedule(growth=1.05)
    cycles = [old_cycle() for _ in range(sys.getallocatedblocks() // 100)]
    make_due()
    now = sys.getallocatedblocks()
    assert now >= 1.05 * schedule.blocks
    assert now < schedule.blocks + schedule.min_growth
    assert not schedule.due()
    schedule.min_growth = now - schedule.blocks
    assert schedule.due()
    schedule.collect()
    assert all(alive() is None for alive in cycles)


def test_run_starts_the_due_full_pass() -> None:
    async def main() -> weakref.ref[Node]:
        schedule = Schedule()
        alive = old_cycle()
        make_due()
        task = asyncio.create_task(collector.run(schedule, check_every=0.01))
        for _ in range(500):
            if schedule.passes:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert schedule.passes == 1
        return alive

    assert asyncio.run(main())() is None


def test_take_over_turns_only_the_automatic_full_passes_off() -> None:
    """In a process of its own: the settings are the whole process's."""
    script = (
        "import gc\n"
        "from popbox.server import collector\n"
        "before = gc.get_threshold()\n"
        "assert not collector.taken_over()\n"
        "collector.freeze_loaded()\n"
        "frozen = gc.get_freeze_count()\n"
        "collector.take_over()\n"
        "print(before, gc.get_threshold(), frozen > 1000, collector.taken_over())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    young, middle, _ = gc.get_threshold()
    expected = f"({young}, {middle}, 10) ({young}, {middle}, {2**31 - 1}) True True\n"
    assert out == expected

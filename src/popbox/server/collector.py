"""When the garbage collector's full passes run: at a quiet moment, not in a client's
session.

CPython frees almost everything by reference counting; its cycle collector finds the
rest. A young pass looks only at recent objects and is short. A full pass walks every
object the process tracks, and with a thousand sessions open (some 40 tracked objects
each: transport, protocol, session, task, timers) that is 30-70 ms in which the event
loop runs nothing. CPython starts one whenever a quarter more objects have lived long
enough to be old. Sessions that last a few seconds (a flood of connects) make objects
old all the time, so the full passes come every few seconds, each one a stall for every
client at that moment.

popbox makes no reference cycles among objects that live that long: under the hostile
clients of tests/server/test_hostile_clients.py the full passes found nothing to free,
and 7,852 sessions of the churn benchmark gave CPython no reason to start one. So a
serving process takes over the schedule (take_over()): automatic full passes are off,
young passes stay as they are, and run() starts a full pass only when one is due
(FULL_AFTER young-generation passes since the last) and

- no quiet client has been served lately (pacing.interactive() is false), or
- memory has grown by GROWTH times since the last full pass, and by MIN_GROWTH blocks
  at least (sys.getallocatedblocks(), the live objects' small-allocation blocks: a cycle
  leak would show there), or
- LATEST seconds have passed since the last full pass anyway.

So a leak cannot grow without bound, and a busy server still has a full pass every
LATEST seconds, costing the sessions of that moment what CPython's schedule costs them
every few seconds.

This is for CPython's generational collector (3.11-3.13, 3.14.5 and later). The
incremental one of 3.14.0-3.14.4 has no full passes to move, and ignores generation 2's
threshold; there take_over() changes nothing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time

from popbox import pacing

log = logging.getLogger(__name__)

# Seconds between checks whether a full pass is due.
CHECK_EVERY = 1.0
# Young-generation (1) passes since the last full pass before another is due: CPython's
# own default for generation 2's threshold.
FULL_AFTER = 10
# A full pass even while clients are served, when the small-allocation blocks have grown
# this many times since the last one...
GROWTH = 2.0
# ...and by this many at least. A server just started has few: its first thousand
# connections double them (160,000 to 280,000 under tests/server/test_hostile_clients.py),
# and doubling alone would start a full pass in the middle of such a load, a 50-200 ms
# stall for every client then, to find nothing. Half a million blocks are some 30-60 MB.
MIN_GROWTH = 500_000
# ...or this many seconds have passed.
LATEST = 600.0
# Generation 2's threshold while the schedule is ours: never reached (counts young
# passes; the largest value gc.set_threshold takes).
_NEVER = 2**31 - 1

_taken_over = False


def freeze_loaded() -> None:
    """Put what is loaded by now out of the collector's sight: it lives as long as the
    server. A full pass then walks session objects only, not every module, and worker
    processes do not copy the master's pages by walking them."""
    gc.collect()
    gc.freeze()


def take_over() -> None:
    """Turn automatic full passes off in this process: run() starts them. For a process
    that serves clients; a worker inherits freeze_loaded() from its master."""
    global _taken_over  # noqa: PLW0603 - the collector's settings are the process's
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)
    _taken_over = gc.get_threshold()[2] == _NEVER  # not the incremental collector


def taken_over() -> bool:
    return _taken_over


class Schedule:
    """The decision, apart from the loop that asks for it (see the module's docstring)."""

    def __init__(
        self, growth: float = GROWTH, latest: float = LATEST, min_growth: int = MIN_GROWTH
    ) -> None:
        self.growth = growth
        self.min_growth = min_growth
        self.latest = latest
        self.last = time.monotonic()
        self.blocks = sys.getallocatedblocks()
        self.passes = 0  # full passes this schedule started

    def due(self) -> bool:
        if gc.get_count()[2] < FULL_AFTER:
            return False
        if not pacing.interactive():
            return True
        now = sys.getallocatedblocks()
        grown = now >= self.growth * self.blocks and now >= self.blocks + self.min_growth
        return grown or time.monotonic() - self.last >= self.latest

    def collect(self) -> int:
        """A full pass now; what it freed."""
        started = time.monotonic()
        freed = gc.collect()
        self.last = time.monotonic()
        self.blocks = sys.getallocatedblocks()
        self.passes += 1
        took = (self.last - started) * 1e3
        log.debug("full garbage collection: %d freed in %.1f ms", freed, took)
        return freed


async def run(schedule: Schedule | None = None, check_every: float = CHECK_EVERY) -> None:
    """Start the full passes for as long as the event loop runs (until cancelled)."""
    schedule = schedule or Schedule()
    while True:
        await asyncio.sleep(check_every)
        if schedule.due():
            schedule.collect()

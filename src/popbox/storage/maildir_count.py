"""Counting a big new message's wire size (RFC 1939 section 11) on the event loop, a block
per background step.

A Maildir message whose name carries no size is counted once, when a session first lists
it. Counting is CPU work (bytes.count) that holds the GIL. In a worker thread it took the
GIL from the event loop after every system call the loop made: ten 20 MB messages counted
while sessions ran slowed every other session several times over. On the event loop,
paced (popbox/pacing.py), it costs a loop turn at most one block's count, and no thread
contends for the GIL. The blocks are read on the loop while they are in the page cache
(preadv2 RWF_NOWAIT), else in a worker thread, which only waits for the disk.

Messages up to BIG_MESSAGE octets (nearly all mail) are counted in the snapshot's thread,
in one read: about 0.2 ms of GIL at most.
"""

from __future__ import annotations

import asyncio
import os
from functools import partial

from popbox import pacing
from popbox.storage.base import READ_BLOCK_SIZE, StoreError
from popbox.storage.maildir_inline import read_block_if_cached
from popbox.storage.maildir_listing import MESSAGE_OPEN_FLAGS
from popbox.storage.octets import WireOctetCounter
from popbox.storage.threads import in_thread_owned, in_thread_reading

BIG_MESSAGE = 128 * 1024


async def count_wire_octets(path: str) -> int:
    """The wire size of the message at `path`. Raises OSError (FileNotFoundError if it
    vanished)."""
    fd = await in_thread_owned(partial(os.open, path, MESSAGE_OPEN_FLAGS), os.close)
    counter = WireOctetCounter()
    offset = 0
    try:
        while True:
            await pacing.step()
            block = read_block_if_cached(fd, offset)
            if block is None:
                read = partial(os.pread, fd, READ_BLOCK_SIZE, offset)
                try:
                    block = await in_thread_reading(fd, read)
                except asyncio.CancelledError:
                    fd = -1  # closed when the worker is done
                    raise
            if not block:
                return counter.octets
            counter.feed(block)
            offset += len(block)
    finally:
        if fd >= 0:
            os.close(fd)


async def count_into(counted: dict[str, int], paths: dict[str, str]) -> None:
    """Count each message of `paths` (by name) into `counted`; one that vanished is left
    out (moved by a flag change, the next listing finds it; or deleted). Raises
    StoreError."""
    for name, path in paths.items():
        try:
            counted[name] = await count_wire_octets(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot read message {path!r}: {exc.strerror}") from exc

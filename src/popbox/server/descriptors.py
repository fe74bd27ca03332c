"""The file descriptor table: grown to its full size before the first connection, and
shared between sessions and connections waiting to start.

Linux grows a process's descriptor table by doubling when a new descriptor does not fit
(at 256, 512, ... 8,192). In a process with threads (the log writer, the store's worker
threads) each growth waits for an RCU grace period: the accept(2) that needed the room
sleeps for about 10 ms, and the event loop with it. A burst of 5,000 connections crossed
five sizes, five stalls of 10-20 ms that every session felt. Grown once at start (a
descriptor duplicated at the top and closed again: the table never shrinks), the room is
there when the burst comes. The table costs 8 bytes and 2 bits per slot: half a MiB for
65,536.

A connection waiting to start (server/start_queue.py) holds a descriptor, which it did
not in the kernel's listen queue; past the waiting room, the oldest of the address with
the most waiting is closed unanswered. The room is what RLIMIT_NOFILE leaves once each
open session has PER_SESSION descriptors and a RESERVE_SHARE of the limit is kept free
for what is not a connection (maildrop files, LMTP, the metrics endpoint, the store's
pool). It was a fixed quarter of the limit: 5,000 of 20,000, which a burst of 5,000
connects filled, and each connect past it then cost an accept(2) and a close(2), 60-100
us on loopback, in turns of 8-13 ms for 100 ms and more; an honest client's session then
took 100-150 ms (10 ms idle).
"""

from __future__ import annotations

import logging
import os
import resource

log = logging.getLogger("popbox.server")

# Slots reserved at most, whatever RLIMIT_NOFILE allows (which may be a million).
MAX_RESERVED = 65536
# Descriptors a session holds: its socket and, at times, a maildrop file.
PER_SESSION = 2
# The part of RLIMIT_NOFILE kept free of connections: 1 / RESERVE_SHARE.
RESERVE_SHARE = 8


def descriptor_limit() -> int:
    """RLIMIT_NOFILE's soft limit (MAX_RESERVED times 16 for no limit at all)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 16 * MAX_RESERVED if soft == resource.RLIM_INFINITY else soft


def waiting_room(limit: int, sessions: int, listeners: int) -> int:
    """Connections each of `listeners` start queues may hold while `sessions` are open,
    under a descriptor `limit` (see above); at least one."""
    free = limit - limit // RESERVE_SHARE - PER_SESSION * sessions
    return max(1, free // max(1, listeners))


def reserve_descriptor_table() -> int:
    """Grow this process's descriptor table to min(RLIMIT_NOFILE, MAX_RESERVED) slots;
    returns the size asked for (0: nothing done)."""
    size = min(descriptor_limit(), MAX_RESERVED)
    top = size - 1
    try:
        os.fstat(top)
    except OSError:
        pass  # free, as expected
    else:
        return size  # in use: the table is that big already
    try:
        spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        log.warning("cannot reserve descriptors: %s", exc)
        return 0
    try:
        os.dup2(spare, top, inheritable=False)
        os.close(top)
    except OSError as exc:
        log.warning("cannot reserve %d descriptors: %s", size, exc)
        return 0
    finally:
        os.close(spare)
    return size

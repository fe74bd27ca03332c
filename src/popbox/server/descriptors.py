"""The file descriptor table, grown to its full size before the first connection.

Linux grows a process's descriptor table by doubling when a new descriptor does not fit
(at 256, 512, ... 8,192). In a process with threads (the log writer, the store's worker
threads) each growth waits for an RCU grace period: the accept(2) that needed the room
sleeps for about 10 ms, and the event loop with it. A burst of 5,000 connections crossed
five sizes, five stalls of 10-20 ms that every session felt. Grown once at start (a
descriptor duplicated at the top and closed again: the table never shrinks), the room is
there when the burst comes. The table costs 8 bytes and 2 bits per slot: half a MiB for
65,536.
"""

from __future__ import annotations

import logging
import os
import resource

log = logging.getLogger("popbox.server")

# Slots reserved at most, whatever RLIMIT_NOFILE allows (which may be a million).
MAX_RESERVED = 65536


def reserve_descriptor_table() -> int:
    """Grow this process's descriptor table to min(RLIMIT_NOFILE, MAX_RESERVED) slots;
    returns the size asked for (0: nothing done)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    size = MAX_RESERVED if soft == resource.RLIM_INFINITY else min(soft, MAX_RESERVED)
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

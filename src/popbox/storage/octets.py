"""Counting a stored message's size as sent on the wire (RFC 1939 section 11, "octets").

The wire form (what protocol/encoder.py sends) has every line end as CRLF: an existing CRLF
stays two octets, a bare LF gains a CR, a bare CR is data (one octet), and a message whose
last line lacks a line end gets a CRLF. Byte-stuffing dots are not counted (RFC 1939
section 11: the size "does not include ... byte-stuffing"). So

    octets = stored size + number of bare LFs + (2 if non-empty and not ending in LF else 0)

and an empty message is 0 octets. Counting uses bytes.count per block (no Python loop per
line); the only state carried across blocks is the last octet, for a CRLF split in two.
"""

from __future__ import annotations

import os

# Block size for counting a whole file: big enough that the count is I/O bound, small
# enough to bound memory per concurrently opening session.
COUNT_BLOCK_SIZE = 1024 * 1024

_CR = 0x0D
_LF = 0x0A


class WireOctetCounter:
    """Incremental wire-size counter; feed the stored bytes in blocks of any size."""

    __slots__ = ("_bare_lf", "_last", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._bare_lf = 0
        self._last = -1

    def feed(self, block: bytes) -> None:
        if not block:
            return
        line_feeds = block.count(b"\n")
        # Most stores hold LF-only mail: skip the second pass when there is no CR at all.
        crlfs = block.count(b"\r\n") if b"\r" in block else 0
        if self._last == _CR and block[0] == _LF:
            # A CRLF split across two blocks: the LF is not bare.
            crlfs += 1
        self._bare_lf += line_feeds - crlfs
        self._size += len(block)
        self._last = block[-1]

    @property
    def octets(self) -> int:
        if self._size == 0:
            return 0
        final_crlf = 0 if self._last == _LF else 2
        return self._size + self._bare_lf + final_crlf


def wire_octets(data: bytes) -> int:
    """The wire size of a whole message held in memory."""
    counter = WireOctetCounter()
    counter.feed(data)
    return counter.octets


def wire_octets_of_fd(fd: int, block_size: int = COUNT_BLOCK_SIZE) -> int:
    """The wire size of the file open at `fd`, read from its current offset to EOF.

    Blocking: call it from a worker thread (asyncio.to_thread), never on the event loop.
    """
    counter = WireOctetCounter()
    while block := os.read(fd, block_size):
        counter.feed(block)
    return counter.octets

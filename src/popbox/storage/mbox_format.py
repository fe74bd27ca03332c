"""The mbox file format (RFC 4155; mboxo and mboxrd) as Postfix local(8), procmail and mutt
write it: where messages start and end, and the `>From ` quoting.

An mbox is a sequence of records. Each record is a separator line starting with "From "
(the envelope sender and the delivery time, "From alice@example.com Sat Jan  3 01:05:34
1996"), then the message with LF line ends, then one empty line that the writer adds after
every message. So:

- a separator is a line starting with "From " at the very start of the file or right after
  an empty line (the octets "\\n\\nFrom "). A "From " line anywhere else is body text: the
  writers quote "From " at the start of every body line anyway (see below), and readers such
  as ours must not split a message at an unquoted mid-paragraph "From";
- the separator line is not part of the message; neither is the empty line before the next
  separator, nor the empty line at the very end of the file (a file ending in "\\n\\n").
  A file whose last message lacks that empty line (or even its final LF) is read as it is:
  the message then simply ends at the end of the file;
- bytes before the first separator (not an mbox record) are not a message: they are never
  listed and always kept when the file is rewritten.

Lines that would look like a separator are quoted by prefixing ">": mboxo quotes lines
starting "From " and never unquotes (the ">" stays part of the message); mboxrd quotes lines
matching `^>*From ` and removes one ">" from lines matching `^>+From ` on reading, so a
message reads back exactly as delivered.

All scanning works on large blocks with bytes.find / re over the block (no Python loop per
line), so a 1 GB mbox is parsed in about a second.
"""

from __future__ import annotations

import os
import re
from typing import Final, Literal

from popbox.storage.base import READ_BLOCK_SIZE, StoreError

__all__ = [
    "MBOX_FORMATS",
    "SCAN_BLOCK_SIZE",
    "SEPARATOR",
    "MboxFormat",
    "MessageStream",
    "Unquoter",
    "find_separators",
    "is_separator_at",
    "pread_exact",
    "quote_body",
]

MboxFormat = Literal["mboxo", "mboxrd"]
MBOX_FORMATS: Final = ("mboxo", "mboxrd")

# RFC 4155 section 2: "the "From " separator line".
SEPARATOR: Final = b"From "

# A separator after the empty line that ends the previous record.
_SEPARATOR_AFTER_BLANK: Final = b"\n\n" + SEPARATOR

# Block size for scanning a whole file: big enough that scanning is I/O bound (bytes.find
# runs at memory speed), small enough to bound the memory of each session that opens.
SCAN_BLOCK_SIZE: Final = 1024 * 1024

# mboxrd: a line to unquote on reading; the lookahead sees the whole line because callers
# only pass regions that end with a line end.
_QUOTED_LINE = re.compile(rb"\n>(?=>*From )")
_GT_RUN = re.compile(rb">+")
# Delivery quoting, applied to "\n" + body (so that the first line is a line too).
_MBOXRD_TO_QUOTE = re.compile(rb"\n(>*From )")


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """`size` octets at `offset`; StoreError if the file ended early (it shrank under us)."""
    try:
        data = os.pread(fd, size, offset)
    except OSError as exc:
        raise StoreError(f"cannot read mbox: {exc.strerror}") from exc
    if len(data) != size:
        raise StoreError(f"mbox shrank under us: no data at offset {offset + len(data)}")
    return data


def find_separators(
    fd: int, size: int, block_size: int = SCAN_BLOCK_SIZE, *, start: int = 0
) -> list[int]:
    """Offsets of the separator lines within the first `size` octets of the file at `fd`,
    from `start` on (the empty line before a separator at `start` is read too)."""
    overlap = len(_SEPARATOR_AFTER_BLANK) - 1
    block_size = max(block_size, 2 * len(_SEPARATOR_AFTER_BLANK))
    found: list[int] = []
    offset = max(0, start - 2)
    while offset < size:
        block = pread_exact(fd, min(block_size, size - offset), offset)
        if offset == 0 and block.startswith(SEPARATOR):
            found.append(0)
        position = block.find(_SEPARATOR_AFTER_BLANK)
        while position >= 0:
            found.append(offset + position + 2)
            position = block.find(_SEPARATOR_AFTER_BLANK, position + 1)
        if offset + len(block) >= size:
            break
        # The next block repeats the last octets: a match across the seam is found there
        # (and only there: a match needs all its octets in one block).
        offset += len(block) - overlap
    return [offset for offset in found if offset >= start] if start else found


def is_separator_at(fd: int, offset: int) -> bool:
    """Whether a separator line still starts at `offset` (the file may have changed)."""
    if offset == 1:
        return False
    expected = SEPARATOR if offset == 0 else _SEPARATOR_AFTER_BLANK
    try:
        return pread_exact(fd, len(expected), max(0, offset - 2)) == expected
    except StoreError:
        return False  # the file is shorter now


def quote_body(body: bytes, mbox_format: MboxFormat) -> bytes:
    """Quote the lines of `body` (LF line ends) that would read as separators."""
    if mbox_format == "mboxo":
        quoted = (b"\n" + body).replace(b"\nFrom ", b"\n>From ")
    else:
        quoted = _MBOXRD_TO_QUOTE.sub(rb"\n>\1", b"\n" + body)
    return quoted[1:]


class Unquoter:
    """mboxrd reading: remove one ">" from every line matching `^>+From `.

    Feed the message content (which starts at a line start) in blocks of any size, then
    call flush(); the output is the same however the input is split. A line whose start
    is cut by a block end ("\\n>>Fr" | "om ...") is decided when the next block comes: the
    ">" run is passed on at once except its last ">", which is held with the partial
    "From " (at most MAX_HELD octets) until the line is known.
    """

    MAX_HELD: Final = len(b">From")

    __slots__ = ("_held", "_line_start")

    def __init__(self) -> None:
        self._line_start = True
        self._held = b""

    def feed(self, block: bytes) -> bytes:
        if not block:
            return b""
        if self._held:
            block, self._held = self._held + block, b""
        out: list[bytes] = []
        position = 0
        if self._line_start:
            position = self._line_head(block, out)
            if self._held:
                return b"".join(out)
        last_lf = block.rfind(b"\n", position)
        if last_lf < 0:
            out.append(block[position:])
            self._line_start = False
            return b"".join(out)
        out.append(_QUOTED_LINE.sub(b"\n", block[position : last_lf + 1]))
        tail = block[last_lf + 1 :]
        self._line_start = True
        if tail:
            position = self._line_head(tail, out)
            if not self._held:
                out.append(tail[position:])
                self._line_start = False
        return b"".join(out)

    def flush(self) -> bytes:
        """The held octets: the message ended inside an undecided line (not a quoted one)."""
        held, self._held = self._held, b""
        self._line_start = True
        return held

    def _line_head(self, data: bytes, out: list[bytes]) -> int:
        """Handle the start of a line at data[0]; return where normal copying resumes."""
        run = _GT_RUN.match(data)
        if run is None:
            return 0
        end = run.end()
        after = data[end : end + len(SEPARATOR)]
        if after == SEPARATOR:
            out.append(data[1:end])  # the run minus one ">"
            return end
        if len(after) < len(SEPARATOR) and SEPARATOR.startswith(after):
            # The data ends inside the ">" run or inside "From ": undecided.
            out.append(data[: end - 1])
            self._held = data[end - 1 :]
            return len(data)
        return 0


class MessageStream:
    """The message at [start, end) of the file, as read() yields it: in blocks of at most
    `block_size` octets, unquoted for mboxrd, never more than a block in memory."""

    __slots__ = ("_end", "_fd", "_position", "_raw_size", "_unquoter", "finished")

    def __init__(
        self,
        fd: int,
        start: int,
        end: int,
        mbox_format: MboxFormat,
        block_size: int = READ_BLOCK_SIZE,
    ) -> None:
        self._fd = fd
        self._position = start
        self._end = end
        self._unquoter = Unquoter() if mbox_format == "mboxrd" else None
        # Held octets come out with the next block: leave room for them.
        self._raw_size = block_size - (Unquoter.MAX_HELD if self._unquoter else 0)
        self.finished = False

    def next_blocks(self, limit: int) -> list[bytes]:
        """Up to `limit` non-empty blocks; fewer only when the message is done."""
        blocks: list[bytes] = []
        while len(blocks) < limit and not self.finished:
            if self._position < self._end:
                size = min(self._raw_size, self._end - self._position)
                raw = pread_exact(self._fd, size, self._position)
                self._position += size
                block = self._unquoter.feed(raw) if self._unquoter else raw
            else:
                block = self._unquoter.flush() if self._unquoter else b""
                self.finished = True
            if block:
                blocks.append(block)
        return blocks

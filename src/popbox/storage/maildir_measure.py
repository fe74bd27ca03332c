"""Reading one Maildir message for what its name does not say: the wire size (RFC 1939
section 11), the delivery time of a name without one, and the X-UIDL header.

A message is opened at most once, and only when needed: a name with `,W=<n>` and a time
needs no I/O at all. The size count and the X-UIDL search share one pass over the file;
the X-UIDL search alone reads only the header block (up to the first empty line).

Everything here blocks: call it from a worker thread.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass

from popbox.storage.maildir_listing import MESSAGE_OPEN_FLAGS, is_valid_uidl
from popbox.storage.octets import COUNT_BLOCK_SIZE, WireOctetCounter, wire_octets

# How much of a message is searched for X-UIDL when the header block has not ended: RFC
# 5322 sets no limit on header size, so this bounds the work a hostile message can cause.
# Real header blocks, even with long Received chains, are far smaller.
HEADER_SCAN_LIMIT = 256 * 1024

# Reads of the header block alone (X-UIDL without a size count): most headers fit in one.
_HEADER_BLOCK_SIZE = 16 * 1024

# The end of the header block (RFC 5322 section 2.1: an empty line), with LF or CRLF ends,
# and a header block that is empty because the message starts with its empty line.
_END_OF_HEADER = re.compile(rb"\n\r?\n")
_FIELD = re.compile(rb"x-uidl[ \t]*:(.*)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class Measured:
    """What reading the file found. Fields not asked for are None."""

    octets: int | None
    mtime_ns: int | None
    x_uidl: str | None


def measure_file(
    path: str, *, octets: bool, mtime: bool, x_uidl: bool, count_up_to: int | None = None
) -> Measured | None:
    """Open `path` once and find what was asked for; a file of more than `count_up_to`
    octets is not counted (octets None: storage/maildir_count.py counts it). None if it is
    not a regular file (a symlink or a directory planted since the scan). Raises
    FileNotFoundError if it vanished, OSError on other failures."""
    if not (octets or x_uidl):
        if not mtime:
            return Measured(None, None, None)
        status = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(status.st_mode):
            return None
        return Measured(None, status.st_mtime_ns, None)
    try:
        fd = os.open(path, MESSAGE_OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # replaced by a symlink since the scan: not a message
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return None
        if octets and (count_up_to is None or status.st_size <= count_up_to):
            size, header = _count_and_keep_header(fd, status.st_size, keep_header=x_uidl)
        else:
            size, header = None, _read_header(fd) if x_uidl else b""
    finally:
        os.close(fd)
    found = find_x_uidl(header) if x_uidl else None
    return Measured(size, status.st_mtime_ns if mtime else None, found)


def _count_and_keep_header(fd: int, size: int, *, keep_header: bool) -> tuple[int, bytes]:
    if size < COUNT_BLOCK_SIZE:
        # Most messages: one read of the whole file (one more octet than stat said, to see
        # the end of file without a second read unless the file grew meanwhile).
        data = os.read(fd, size + 1)
        if len(data) <= size:
            return wire_octets(data), _header_part(data) if keep_header else b""
        os.lseek(fd, 0, os.SEEK_SET)
    counter = WireOctetCounter()
    header = b""
    while block := os.read(fd, COUNT_BLOCK_SIZE):
        counter.feed(block)
        if keep_header and len(header) < HEADER_SCAN_LIMIT:
            header = _header_part(header + block)
            keep_header = _END_OF_HEADER.search(header) is None and _starts_body(header)
    return counter.octets, header


def _read_header(fd: int) -> bytes:
    header = b""
    while len(header) < HEADER_SCAN_LIMIT:
        block = os.read(fd, _HEADER_BLOCK_SIZE)
        if not block:
            break
        header = _header_part(header + block)
        if _END_OF_HEADER.search(header) or not _starts_body(header):
            break
    return header


def _starts_body(header: bytes) -> bool:
    """False when the message starts with its empty line: there is no header at all."""
    return not (header.startswith(b"\n") or header.startswith(b"\r\n"))


def _header_part(data: bytes) -> bytes:
    """`data` cut to the scan limit, and after the header block's empty line."""
    data = data[:HEADER_SCAN_LIMIT]
    end = _END_OF_HEADER.search(data)
    return data if end is None else data[: end.end()]


def find_x_uidl(header: bytes) -> str | None:
    """The value of the first X-UIDL field of a header block, if it is a valid unique-id
    (RFC 1939 section 7), else None. Folded values are unfolded (RFC 5322 section 2.2.3);
    the field's own surrounding white space is not part of the value."""
    if not _starts_body(header):
        return None
    end = _END_OF_HEADER.search(header)
    if end is not None:
        header = header[: end.start() + 1]
    elif len(header) >= HEADER_SCAN_LIMIT or not header.endswith(b"\n"):
        # Cut inside a line: that last line is incomplete, so not trusted.
        header = header[: header.rfind(b"\n") + 1]
    lines = header.split(b"\n")
    for index, line in enumerate(lines):
        match = _FIELD.match(line)
        if match is None:
            continue
        value = match.group(1)
        for more in lines[index + 1 :]:
            if not more.startswith((b" ", b"\t")):
                break
            value += more
        return _as_uidl(value)
    return None


def _as_uidl(value: bytes) -> str | None:
    text = value.replace(b"\r", b"").strip(b" \t")
    if not text.isascii():
        return None
    candidate = text.decode("ascii")
    return candidate if is_valid_uidl(candidate) else None

"""The message text after DATA (RFC 5321 section 4.5.2), decoded without I/O.

Bytes in, in chunks split anywhere; out: the message in the stored form (LF line ends,
delivery/message.py), its size on the wire, and whether it went over the size limit.
The text ends at the line "." (CRLF.CRLF); a leading dot of any other line is the
sender's transparency dot and is removed.

Lines of any length are taken: RFC 5321's 1000-octet line limit is for SMTP transport,
and a local delivery agent that refused longer lines would bounce mail an MTA had
accepted (Dovecot's LMTP takes them too). What bounds memory is the message size limit:
once over it, the text is still read to its end but no longer kept.
"""

from __future__ import annotations

__all__ = ["DataDecoder"]

_CRLF = b"\r\n"
_END = b".\r\n"


class DataDecoder:
    """Feed the octets after the 354 reply until `done`; then read `message`."""

    __slots__ = ("_at_line_start", "_done", "_held", "_limit", "_parts", "_wire_size")

    def __init__(self, limit: int | None) -> None:
        # The most wire octets (CRLF line ends, no transparency dots) kept: RFC 1870's
        # message size, the SIZE announced in LHLO. None: no limit.
        self._limit = limit
        self._parts: list[bytes] = []
        self._wire_size = 0
        self._at_line_start = True
        # Up to two octets that cannot be judged yet: a CR that may start a CRLF, or at a
        # line start "." / ".\r" that may be the end of the text.
        self._held = b""
        self._done = False

    @property
    def done(self) -> bool:
        """The end-of-text line has been seen; feed nothing more."""
        return self._done

    @property
    def wire_size(self) -> int:
        """The message's size with CRLF line ends, dots unstuffed (RFC 1870 SIZE)."""
        return self._wire_size

    @property
    def too_big(self) -> bool:
        return self._limit is not None and self._wire_size > self._limit

    @property
    def message(self) -> bytes:
        """The message in the stored form. Only once done and not too_big."""
        if not self._done or self.too_big:
            raise RuntimeError("no message: the text is not complete or went over the limit")
        return b"".join(self._parts)

    def feed(self, chunk: bytes) -> None:
        if self._done:
            raise RuntimeError("the message text has ended")
        data = self._held + chunk
        self._held = b""
        position = 0
        while position < len(data):
            if self._at_line_start:
                rest = data[position:]
                if rest.startswith(_END):
                    self._done = True
                    return
                if _END.startswith(rest):
                    self._held = rest  # "." or ".\r": the end, or a stuffed dot?
                    return
                if rest.startswith(b"."):
                    position += 1  # the transparency dot (RFC 5321 section 4.5.2)
                self._at_line_start = False
            position = self._take_line(data, position)

    def _take_line(self, data: bytes, position: int) -> int:
        """Take octets of the current line from `position`; return where it stopped."""
        end = data.find(_CRLF, position)
        if end < 0:
            stop = len(data) - 1 if data.endswith(b"\r") else len(data)
            self._keep(data[position:stop], stop - position)
            self._held = data[stop:]
            return len(data)
        self._keep(data[position:end] + b"\n", end - position + len(_CRLF))
        self._at_line_start = True
        return end + len(_CRLF)

    def _keep(self, stored: bytes, wire_octets: int) -> None:
        self._wire_size += wire_octets
        if self.too_big:
            self._parts.clear()
        elif stored:
            self._parts.append(stored)

"""The multi-line encoder: exact wire bytes for the edges (shared/STYLE.md item 7), and
agreement with a naive line-by-line model of RFC 1939 for any input and any block size."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_helpers import naive_wire as model
from core_helpers import wire_size
from popbox.protocol.encoder import MessageEncoder, encode_lines

ROWS = [
    # (stored message, top_lines, exact wire bytes after the status line)
    (b"", None, b".\r\n"),
    (b"a", None, b"a\r\n.\r\n"),
    (b"a\n", None, b"a\r\n.\r\n"),
    (b"a\r\n", None, b"a\r\n.\r\n"),
    (b".", None, b"..\r\n.\r\n"),
    (b".\r\n", None, b"..\r\n.\r\n"),
    (b".hidden\r\nx\r\n", None, b"..hidden\r\nx\r\n.\r\n"),
    (b"a\n.\nb\n..\n", None, b"a\r\n..\r\nb\r\n...\r\n.\r\n"),
    (b"bare\rcr\r\n", None, b"bare\rcr\r\n.\r\n"),
    (b"ends with cr\r", None, b"ends with cr\r\r\n.\r\n"),
    (b"\r\n\r\n", None, b"\r\n\r\n.\r\n"),
    (b"x" * 998 + b"\n", None, b"x" * 998 + b"\r\n.\r\n"),
    # TOP (RFC 1939 section 7): header, blank line, n body lines.
    (b"H: 1\r\n\r\nb1\r\nb2\r\n", 0, b"H: 1\r\n\r\n.\r\n"),
    (b"H: 1\r\n\r\nb1\r\nb2\r\n", 1, b"H: 1\r\n\r\nb1\r\n.\r\n"),
    (b"H: 1\r\n\r\nb1\r\nb2\r\n", 2, b"H: 1\r\n\r\nb1\r\nb2\r\n.\r\n"),
    (b"H: 1\r\n\r\nb1\r\nb2\r\n", 3, b"H: 1\r\n\r\nb1\r\nb2\r\n.\r\n"),
    (b"H: 1\n\n.b1\nb2", 1, b"H: 1\r\n\r\n..b1\r\n.\r\n"),
    (b"H: 1\n\nb1\nb2", 5, b"H: 1\r\n\r\nb1\r\nb2\r\n.\r\n"),
    (b"H: 1\nH: 2\n", 0, b"H: 1\r\nH: 2\r\n.\r\n"),  # no body at all
    (b"H: 1", 0, b"H: 1\r\n.\r\n"),
    (b"\r\nbody\r\nmore\r\n", 1, b"\r\nbody\r\n.\r\n"),  # empty header
    (b"\nbody\n", 0, b"\r\n.\r\n"),
    (b"", 0, b".\r\n"),
    (b"H: 1\r\n\r\n\r\n\r\nx\r\n", 2, b"H: 1\r\n\r\n\r\n\r\n.\r\n"),
]


def encode(message: bytes, top: int | None, block: int) -> bytes:
    encoder = MessageEncoder(top_lines=top)
    out = b""
    for i in range(0, len(message), block):
        out += encoder.feed(message[i : i + block])
    return out + encoder.finish()


@pytest.mark.parametrize(("message", "top", "wire"), ROWS)
@pytest.mark.parametrize("block", [1, 2, 3, 7, 65536])
def test_exact_wire_bytes(message: bytes, top: int | None, wire: bytes, block: int) -> None:
    assert encode(message, top, block) == wire


def unstuff_size(wire: bytes) -> int:
    """Octets of the message as the client stores it: without stuffing and the end line."""
    lines = wire[:-3].split(b"\r\n")
    return sum(len(line[1:] if line.startswith(b".") else line) + 2 for line in lines[:-1])


@pytest.mark.parametrize(("message", "top", "wire"), [r for r in ROWS if r[1] is None])
def test_retr_size_matches_listed_octets(message: bytes, top: None, wire: bytes) -> None:
    """RFC 1939 section 11: the size excludes stuffing; LF counts as CRLF."""
    assert unstuff_size(wire) == wire_size(message)


LINE = st.sampled_from([b"", b".", b"..", b"a", b".x", b"\r", b"x\ry", b"From x", b"  "])
MESSAGE = st.lists(st.tuples(LINE, st.sampled_from([b"\n", b"\r\n"])), max_size=12).map(
    lambda parts: b"".join(a + b for a, b in parts)
)


@settings(max_examples=500, deadline=None)
@given(
    MESSAGE,
    st.one_of(st.binary(max_size=3), st.sampled_from([b"", b"tail", b".", b"\r"])),
    st.one_of(st.none(), st.integers(min_value=0, max_value=6)),
    st.integers(min_value=1, max_value=9),
)
def test_encoder_agrees_with_naive_model(
    body: bytes, tail: bytes, top: int | None, block: int
) -> None:
    message = body + tail
    assert encode(message, top, block) == model(message, top)


@settings(max_examples=300, deadline=None)
@given(MESSAGE, st.binary(max_size=3), st.integers(min_value=1, max_value=9))
def test_octets_sent_are_the_listed_size(body: bytes, tail: bytes, block: int) -> None:
    """The encoder's own count is what LIST announces (storage/octets.py counts it from
    the stored bytes), however the message is cut into blocks; any other size is a
    size_problem, so the driver never sends a reply of the wrong size."""
    message = body + tail
    encoder = MessageEncoder()
    for i in range(0, len(message), block):
        encoder.feed(message[i : i + block])
        assert encoder.size_problem(wire_size(message)) is None
    encoder.finish()
    assert encoder.octets == wire_size(message)
    assert encoder.size_problem(wire_size(message)) is None
    assert encoder.size_problem(wire_size(message) + 1) is not None  # the file shrank
    if message:
        assert encoder.size_problem(wire_size(message) - 1) is not None  # it grew


def test_size_problem_mid_stream_and_for_top() -> None:
    encoder = MessageEncoder()
    encoder.feed(b"0123456789\n")  # 12 octets on the wire
    assert encoder.size_problem(12) is None
    assert encoder.size_problem(100) is None  # more may follow
    assert encoder.size_problem(11) == "11 octets listed, more than that stored"
    top = MessageEncoder(top_lines=0)
    top.feed(b"H: 1\n\nbody\n")
    top.finish()
    assert top.size_problem(14) is None  # TOP sends less than the whole message
    assert top.size_problem(5) is not None


def test_encode_lines_stuffs_and_terminates() -> None:
    assert encode_lines([b"1 2", b".x"]) == b"1 2\r\n..x\r\n.\r\n"
    assert encode_lines([]) == b".\r\n"


def test_top_marks_done_so_reading_can_stop() -> None:
    encoder = MessageEncoder(top_lines=1)
    assert encoder.feed(b"H: 1\n\nline one\nline two\n") == b"H: 1\r\n\r\nline one\r\n"
    assert encoder.done
    assert encoder.feed(b"more\n") == b""
    assert encoder.finish() == b".\r\n"


@pytest.mark.parametrize("block", [1, 3, 4096])
def test_outlook_no_nuls_workaround(block: int) -> None:
    """Dovecot's outlook-no-nuls: NUL octets go out as 0x80, nothing else changes."""
    message = b"H: 1\r\n\r\na\x00b\x00\x00\r\n"
    encoder = MessageEncoder(no_nuls=True)
    out = b"".join(encoder.feed(message[i : i + block]) for i in range(0, len(message), block))
    assert out + encoder.finish() == b"H: 1\r\n\r\na\x80b\x80\x80\r\n.\r\n"
    assert encode(message, None, block) == message + b".\r\n"


@pytest.mark.parametrize(
    ("message", "top", "wire"),
    [
        (b"H: 1\nH: 2\n", None, b"H: 1\r\nH: 2\r\n\r\n.\r\n"),  # no blank line: one is added
        (b"H: 1", None, b"H: 1\r\n\r\n.\r\n"),
        (b"H: 1\n\nbody\n", None, b"H: 1\r\n\r\nbody\r\n.\r\n"),  # has one: unchanged
        (b"H: 1\nH: 2\n", 0, b"H: 1\r\nH: 2\r\n\r\n.\r\n"),
        (b"H: 1\n\nb1\nb2\n", 1, b"H: 1\r\n\r\nb1\r\n.\r\n"),
        (b"", None, b".\r\n"),
    ],
)
@pytest.mark.parametrize("block", [1, 2, 4096])
def test_oe_ns_eoh_workaround(message: bytes, top: int | None, wire: bytes, block: int) -> None:
    """Dovecot's oe-ns-eoh: a message without the blank line after its header gets one."""
    encoder = MessageEncoder(top, add_end_of_headers=True)
    out = b"".join(encoder.feed(message[i : i + block]) for i in range(0, len(message), block))
    assert out + encoder.finish() == wire

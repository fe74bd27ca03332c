"""Wire-size counting (RFC 1939 section 11): exact values, chunk-size invariance, and
agreement with what the protocol encoder actually sends."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbox.protocol.encoder import TERMINATOR, MessageEncoder
from popbox.storage.octets import WireOctetCounter, wire_octets, wire_octets_of_fd


def reference_octets(data: bytes) -> int:
    """Straight from the definition: all line ends CRLF, a final CRLF if missing."""
    if not data:
        return 0
    wire = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not data.endswith(b"\n"):
        wire += b"\r\n"
    return len(wire)


@pytest.mark.parametrize(
    ("data", "octets"),
    [
        pytest.param(b"", 0, id="empty"),
        pytest.param(b"a\r\nb\r\n", 6, id="crlf"),
        pytest.param(b"a\nb\n", 6, id="lf"),
        pytest.param(b"a\r\nbc\n\n", 9, id="mixed"),
        pytest.param(b"a\nb", 6, id="no-final-newline"),
        pytest.param(b"abc", 5, id="one-line-no-newline"),
        pytest.param(b"\n", 2, id="lone-lf"),
        pytest.param(b"\r\n", 2, id="lone-crlf"),
        pytest.param(b"a\rb\r\n", 5, id="bare-cr-is-data"),
        pytest.param(b"a\r", 4, id="ends-in-bare-cr"),
        pytest.param(b"\r", 3, id="lone-cr"),
        pytest.param(b"\r\r\n", 3, id="cr-before-crlf"),
        pytest.param(b"\n\r", 5, id="lf-then-cr"),
    ],
)
def test_wire_octets_exact(data: bytes, octets: int) -> None:
    assert wire_octets(data) == octets
    assert reference_octets(data) == octets


# Map random bytes onto the octets that matter: CR, LF, "." and two letters.
_ALPHABET = bytes(b"\r\n.ab"[i % 5] for i in range(256))
_NO_DOT_ALPHABET = bytes(b"\r\nab"[i % 4] for i in range(256))


@given(
    data=st.binary(max_size=200).map(lambda b: b.translate(_ALPHABET)),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_counter_is_chunk_size_invariant(data: bytes, cuts: list[int]) -> None:
    counter = WireOctetCounter()
    bounds = [0, *sorted(cut for cut in cuts if cut <= len(data)), len(data)]
    for start, end in itertools.pairwise(bounds):
        counter.feed(data[start:end])
    assert counter.octets == reference_octets(data)


@given(
    data=st.binary(max_size=200).map(lambda b: b.translate(_NO_DOT_ALPHABET)),
    size=st.integers(min_value=1, max_value=64),
)
def test_counter_matches_encoder_output(data: bytes, size: int) -> None:
    # LIST octets must equal what RETR sends, without byte-stuffing and terminator (no "."
    # in the data, so nothing is stuffed).
    encoder = MessageEncoder()
    sent = b"".join(encoder.feed(data[i : i + size]) for i in range(0, len(data), size))
    sent += encoder.finish()
    assert sent.endswith(TERMINATOR)
    assert wire_octets(data) == len(sent) - len(TERMINATOR)


@pytest.mark.parametrize("block_size", [1, 2, 3, 7, 1024 * 1024])
def test_fd_count_carries_cr_across_blocks(tmp_path: Path, block_size: int) -> None:
    data = b"line\r\n" * 50 + b"bare\n" * 7 + b"\r" * 3 + b"tail"
    path = tmp_path / "msg"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert wire_octets_of_fd(fd, block_size) == 300 + 42 + 3 + 4 + 2
    finally:
        os.close(fd)

"""DataDecoder: the text after DATA (RFC 5321 section 4.5.2) to the stored form.

Each script is fed whole, byte by byte and in chunks of every size up to its length, and
must give the same result (shared/STYLE.md item 6); hypothesis splits it anywhere.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbox.delivery.lmtp_data import DataDecoder


def splits(data: bytes) -> list[list[bytes]]:
    """The data whole, byte by byte, and in chunks of 2..len(data)."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    for size in range(2, len(data)):
        ways.append([data[i : i + size] for i in range(0, len(data), size)])
    return ways


def decode(chunks: list[bytes], limit: int | None = None) -> DataDecoder:
    decoder = DataDecoder(limit)
    for chunk in chunks:
        decoder.feed(chunk)
        if decoder.done:
            break
    return decoder


# (text after the 354 reply, up to and with the final ".", stored form, wire size)
CASES = [
    (b".\r\n", b"", 0),
    (b"a\r\n.\r\n", b"a\n", 3),
    (b"\r\n.\r\n", b"\n", 2),
    (b"..\r\n.\r\n", b".\n", 3),  # a line of one dot, stuffed
    (b"..x\r\n...\r\n.\r\n", b".x\n..\n", 8),
    (b".x\r\n.\r\n", b"x\n", 3),  # an unstuffed leading dot is dropped all the same
    (b"a.\r\n.b\r\n.\r\n", b"a.\nb\n", 7),
    (b"bare\rcr\r\n.\r\n", b"bare\rcr\n", 9),  # a bare CR is data
    (b"bare\nlf\r\n.\r\n", b"bare\nlf\n", 9),  # a bare LF too (not a line end on the wire)
    (b".\r\r\n.\r\n", b"\r\n", 3),  # ".\r" then CRLF: not the end
    (b"x" * 3000 + b"\r\n.\r\n", b"x" * 3000 + b"\n", 3002),  # no line-length limit
    (b"Subject: \xc3\xa9\r\n\r\nbody\r\n.\r\n", b"Subject: \xc3\xa9\n\nbody\n", 21),
]


@pytest.mark.parametrize(("text", "stored", "wire_size"), CASES)
def test_decodes_in_any_chunking(text: bytes, stored: bytes, wire_size: int) -> None:
    for chunks in splits(text):
        decoder = decode(chunks)
        assert decoder.done
        assert decoder.message == stored
        assert decoder.wire_size == wire_size
        assert not decoder.too_big


def test_not_done_before_the_final_dot() -> None:
    for text in (b"a\r\n", b"a\r\n.", b"a\r\n.\r", b"a\r\n..\r\n", b"a.\r\n"):
        decoder = decode([text])
        assert not decoder.done
        with pytest.raises(RuntimeError):
            _ = decoder.message


def test_nothing_may_follow_the_end() -> None:
    decoder = decode([b".\r\n"])
    with pytest.raises(RuntimeError):
        decoder.feed(b"MAIL FROM:<>\r\n")


def test_size_limit_counts_wire_octets() -> None:
    text = b"12345678\r\n..\r\n.\r\n"  # 10 + 3 wire octets: the stuffing dot is not counted
    assert decode([text], limit=13).message == b"12345678\n.\n"
    for chunks in splits(text):
        over = decode(chunks, limit=12)
        assert over.done
        assert over.too_big
        assert over.wire_size == 13
        with pytest.raises(RuntimeError):
            _ = over.message


@given(
    lines=st.lists(st.binary(max_size=12).filter(lambda b: b"\r\n" not in b), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_any_split_gives_the_same_message(lines: list[bytes], cuts: list[int]) -> None:
    # The sender's side (RFC 5321 section 4.5.2): stuff a dot onto lines starting with one.
    wire = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    text = wire + b".\r\n"
    points = sorted({min(cut, len(text)) for cut in cuts})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    decoder = decode(chunks)
    assert decoder.done
    assert decoder.message == b"".join(line + b"\n" for line in lines)
    assert decoder.wire_size == sum(len(line) + 2 for line in lines)

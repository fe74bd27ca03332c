"""mbox format pieces: separator search across block seams, mboxrd unquoting in any chunking,
delivery quoting, header block ends, UIDL candidates and their uniqueness."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popbox.storage.mbox_format import (
    MboxFormat,
    MessageStream,
    Unquoter,
    find_separators,
    is_separator_at,
    quote_body,
)
from popbox.storage.mbox_uidl import (
    UidlCandidate,
    assign_unique_ids,
    header_end,
    uidl_candidate,
)


def unquote_reference(data: bytes) -> bytes:
    """mboxrd unquoting, one line at a time (the slow, obvious way)."""
    lines = data.splitlines(keepends=True)
    return b"".join(line[1:] if re.match(rb">+From ", line) else line for line in lines)


def unquote_in_chunks(data: bytes, sizes: list[int]) -> bytes:
    unquoter = Unquoter()
    out: list[bytes] = []
    position = 0
    for size in sizes:
        out.append(unquoter.feed(data[position : position + size]))
        position += size
    out.append(unquoter.feed(data[position:]))
    out.append(unquoter.flush())
    return b"".join(out)


# Text made of the pieces that matter: ">" runs, "From ", its prefixes, line ends.
_PIECES = st.sampled_from([b">", b">>", b"From ", b"Fro", b"m ", b"F", b"\n", b"\r\n", b"x", b" "])
_TEXT = st.lists(_PIECES, max_size=40).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(_TEXT, st.lists(st.integers(min_value=0, max_value=12), max_size=12))
def test_unquoting_is_chunk_invariant_and_matches_the_line_rule(
    data: bytes, sizes: list[int]
) -> None:
    assert unquote_in_chunks(data, sizes) == unquote_reference(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b">From a\n", b"From a\n"),
        (b">>From a\n>>>From b\n", b">From a\n>>From b\n"),
        (b"x\n>From a\nFrom b\n", b"x\nFrom a\nFrom b\n"),
        (b"> From a\n>from a\n>Froma\n", b"> From a\n>from a\n>Froma\n"),
        (b">From", b">From"),  # not "From " (no space): left alone
        (b"a >From b\n", b"a >From b\n"),
        (b">From a\r\n", b"From a\r\n"),
    ],
)
def test_unquoting_table(data: bytes, expected: bytes) -> None:
    for size in range(1, len(data) + 1):
        assert unquote_in_chunks(data, [size] * len(data)) == expected


def test_quote_body_mboxo_and_mboxrd() -> None:
    body = b"From a\n>From b\nx From c\n\nFrom d\n"
    assert quote_body(body, "mboxo") == b">From a\n>From b\nx From c\n\n>From d\n"
    assert quote_body(body, "mboxrd") == b">From a\n>>From b\nx From c\n\n>From d\n"
    assert unquote_reference(quote_body(body, "mboxrd")) == body


def _file(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "mbox"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize("block_size", [14, 15, 16, 17, 19, 23, 64, 1 << 20])
def test_separators_are_found_across_block_seams(tmp_path: Path, block_size: int) -> None:
    data = b"From a\nx\n\nFrom b\n\n\nFrom c\nFrom d\n\nFrom e\n\nxFrom f\n"
    fd = _file(tmp_path, data)
    try:
        expected = [0, data.index(b"From b"), data.index(b"From c"), data.index(b"From e")]
        assert find_separators(fd, len(data), block_size) == expected
        assert find_separators(fd, data.index(b"From e") + 4, block_size) == expected[:3]
        assert [is_separator_at(fd, offset) for offset in expected] == [True] * 4
        assert not is_separator_at(fd, data.index(b"From d"))
        assert not is_separator_at(fd, len(data) + 10)
    finally:
        os.close(fd)


def test_a_file_not_starting_with_from_has_no_separator_at_zero(tmp_path: Path) -> None:
    data = b"\nFrom a\n\nFrom b\n"
    fd = _file(tmp_path, data)
    try:
        assert find_separators(fd, len(data)) == [data.index(b"From b")]
    finally:
        os.close(fd)


def test_message_stream_blocks_are_bounded(tmp_path: Path) -> None:
    content = (b">From x\n" * 3 + b"y" * 40) * 20
    fd = _file(tmp_path, b"From a\n" + content + b"\n")
    try:
        cases: list[tuple[MboxFormat, bytes]] = [
            ("mboxrd", unquote_reference(content)),
            ("mboxo", content),
        ]
        for mbox_format, expected in cases:
            stream = MessageStream(fd, 7, 7 + len(content), mbox_format, block_size=16)
            blocks: list[bytes] = []
            while not stream.finished:
                blocks.extend(stream.next_blocks(3))
            assert all(0 < len(block) <= 16 for block in blocks)
            assert b"".join(blocks) == expected
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"A: b\nC: d\n\nbody\n", b"A: b\nC: d\n"),
        (b"A: b\r\nC: d\r\n\r\nbody\r\n", b"A: b\r\nC: d\r\n"),
        (b"A: b\n\r\n\nbody", b"A: b\n"),
        (b"\nbody\n", b""),
        (b"\r\nbody\n", b""),
    ],
)
def test_header_end(data: bytes, expected: bytes) -> None:
    assert data[: header_end(data)] == expected
    assert header_end(b"A: b\nC: d\n") == -1


def test_uidl_candidate_uses_a_valid_x_uidl() -> None:
    assert uidl_candidate(b"Subject: a\nX-UIDL:  abc-123 \n").x_uidl == "abc-123"
    assert uidl_candidate(b"x-uidl:abc\r\n").x_uidl == "abc"
    assert uidl_candidate(b"X-UIDL: two words\n").x_uidl is None
    assert uidl_candidate(b"X-UIDL: " + b"a" * 71 + b"\n").x_uidl is None
    assert uidl_candidate(b"X-UIDL:\n").x_uidl is None
    assert uidl_candidate(b"X-UIDL: caf\xc3\xa9\n").x_uidl is None


def test_header_digest_ignores_fields_mail_readers_rewrite() -> None:
    plain = uidl_candidate(b"Subject: a\nMessage-ID: <1@x>\n").digest
    assert len(plain) == 32
    assert re.fullmatch("[0-9a-f]{32}", plain)
    touched = b"Status: RO\nSubject: a\nX-Status: A\nX-Keywords: $x\n y\nMessage-ID: <1@x>\n"
    assert uidl_candidate(touched + b"Content-Length: 10\nLines: 2\nX-UID: 7\n").digest == plain
    assert uidl_candidate(b"Subject: a\r\nMessage-ID: <1@x>\r\n").digest == plain
    assert uidl_candidate(b"Subject: b\nMessage-ID: <1@x>\n").digest != plain
    assert uidl_candidate(b"Subject: a\nMessage-ID: <1@x>\nX-UIDL: z z\n").digest != plain


def test_assign_unique_ids() -> None:
    candidates = [
        UidlCandidate(None, "d1"),
        UidlCandidate("x1", "d2"),
        UidlCandidate(None, "d1"),
        UidlCandidate("dup", "d3"),
        UidlCandidate("dup", "d4"),
        UidlCandidate(None, "d1"),
        UidlCandidate("d5-2", "d6"),
        UidlCandidate(None, "d5"),
        UidlCandidate(None, "d5"),
    ]
    assert assign_unique_ids(candidates) == [
        "d1",
        "x1",
        "d1-2",
        "d3",
        "d4",
        "d1-3",
        "d5-2",
        "d5",
        "d5-3",
    ]

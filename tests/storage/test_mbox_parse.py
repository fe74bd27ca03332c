"""Parsing mbox files written by the real writers' rules: which bytes make each message, and
sizes that equal what the encoder sends."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_mbox_support import (
    MUTT_FROM,
    POSTFIX_FROM,
    mbox_path,
    read_all,
    record,
    run,
    store_at,
    wire_size,
    with_drop,
)

from popbox.storage.base import READ_BLOCK_SIZE, MessageGone, MessageInfo, StoreError
from popbox.storage.mbox import MboxMaildrop
from popbox.storage.mbox_format import MboxFormat


def listed(
    tmp_path: Path, data: bytes, mbox_format: MboxFormat = "mboxo"
) -> list[tuple[MessageInfo, bytes]]:
    """Write the mbox, open it, read every message; check each size against the wire."""
    mbox_path(tmp_path).write_bytes(data)

    async def body(drop: MboxMaildrop) -> list[tuple[MessageInfo, bytes]]:
        found = []
        for info in drop.listing:
            blocks = await read_all(drop, info.key)
            assert all(0 < len(block) <= READ_BLOCK_SIZE for block in blocks)
            assert info.octets == wire_size(blocks), info
            found.append((info, b"".join(blocks)))
        return found

    return with_drop(tmp_path, body, mbox_format)


def contents(tmp_path: Path, data: bytes, mbox_format: MboxFormat = "mboxo") -> list[bytes]:
    return [message for _, message in listed(tmp_path, data, mbox_format)]


FIRST = b"Subject: first\nMessage-ID: <1@x>\n\nHello.\n>From the quoted line.\n"
SECOND = b"Subject: second\nMessage-ID: <2@x>\n\nBye.\n"


def test_postfix_and_procmail_style(tmp_path: Path) -> None:
    data = record(FIRST) + record(SECOND)
    assert contents(tmp_path, data) == [FIRST, SECOND]


def test_mutt_style_content_length_is_ignored(tmp_path: Path) -> None:
    # mutt adds Content-Length: and Lines:; a wrong value must not move the boundary.
    first = b"From: a@x\nContent-Length: 3\nLines: 1\nStatus: RO\n\nline one\nline two\n"
    second = b"From: b@x\nContent-Length: 99999\n\nshort\n"
    data = record(first, MUTT_FROM) + record(second, MUTT_FROM)
    assert contents(tmp_path, data) == [first, second]


def test_from_lines_inside_bodies(tmp_path: Path) -> None:
    # Postfix quotes "From " at a line start; an unquoted "From " not after an empty line
    # (a careless writer) is body text, as is "From" without the space.
    first = (
        b"Subject: a\n\nI wrote this\nFrom the top of my head.\n>From quoted.\n"
        b"\nFromage is French.\n\n>From after a blank line, quoted.\n"
    )
    data = record(first) + record(SECOND)
    assert contents(tmp_path, data) == [first, SECOND]


def test_an_unquoted_from_after_an_empty_line_starts_a_message(tmp_path: Path) -> None:
    # The mboxo ambiguity: such a line is a separator, whoever wrote it.
    data = POSTFIX_FROM + b"Subject: a\n\nbody\n\nFrom here on\nmore\n"
    assert contents(tmp_path, data) == [b"Subject: a\n\nbody\n", b"more\n"]


QUOTED = b"Subject: q\n\n>From one\n>>From two\nFrom-less\n>>>From three\n> From four\n"


def test_mboxo_leaves_quotes_alone(tmp_path: Path) -> None:
    assert contents(tmp_path, record(QUOTED), "mboxo") == [QUOTED]


def test_mboxrd_removes_one_quote(tmp_path: Path) -> None:
    expected = b"Subject: q\n\nFrom one\n>From two\nFrom-less\n>>From three\n> From four\n"
    [(info, message)] = listed(tmp_path, record(QUOTED), "mboxrd")
    assert message == expected
    assert info.octets == len(expected) + expected.count(b"\n")


def test_mboxrd_quote_on_the_first_line_and_at_block_seams(tmp_path: Path) -> None:
    # ">From " lines at every offset around the read block boundaries.
    filler = b"x" * (READ_BLOCK_SIZE - 9) + b"\n"
    body = b">From first line\n" + (filler + b">>From z\n") * 3 + b">From" + b"\n"
    expected = b"From first line\n" + (filler + b">From z\n") * 3 + b">From\n"
    [(info, message)] = listed(tmp_path, record(body), "mboxrd")
    assert message == expected
    assert info.octets == len(expected) + expected.count(b"\n")


def test_empty_file_is_an_empty_maildrop(tmp_path: Path) -> None:
    assert listed(tmp_path, b"") == []


def test_missing_file_is_an_empty_maildrop_and_is_not_created(tmp_path: Path) -> None:
    assert with_drop(tmp_path, _listing) == []
    assert not mbox_path(tmp_path).exists()
    assert not (tmp_path / "alice.lock").exists()


async def _listing(drop: MboxMaildrop) -> list[MessageInfo]:
    return list(drop.listing)


def test_missing_directory_is_an_empty_maildrop(tmp_path: Path) -> None:
    store = store_at(tmp_path / "nowhere")

    async def main() -> int:
        drop = await store.open("alice")
        await drop.close()
        return len(drop.listing)

    assert run(main()) == 0
    assert not (tmp_path / "nowhere").exists()


def test_no_trailing_newline(tmp_path: Path) -> None:
    data = record(FIRST) + POSTFIX_FROM + b"Subject: last\n\nno line end"
    [first, (info, last)] = listed(tmp_path, data)
    assert first[1] == FIRST
    assert last == b"Subject: last\n\nno line end"
    assert info.octets == len(last) + 2 + 2  # two LFs become CRLF; CRLF added at the end


def test_no_empty_line_after_the_last_message(tmp_path: Path) -> None:
    data = record(FIRST) + POSTFIX_FROM + SECOND
    assert contents(tmp_path, data) == [FIRST, SECOND]


def test_messages_ending_in_empty_lines_keep_them(tmp_path: Path) -> None:
    ends_blank = b"Subject: e\n\nbody\n\n\n"
    data = record(ends_blank) + record(ends_blank)
    assert contents(tmp_path, data) == [ends_blank, ends_blank]


def test_empty_messages_and_bare_separators(tmp_path: Path) -> None:
    data = POSTFIX_FROM + b"\n" + record(FIRST) + POSTFIX_FROM + b"\n" + b"From x"
    found = listed(tmp_path, data)
    assert [message for _, message in found] == [b"", FIRST, b"", b""]
    assert [info.octets for info, _ in found] == [0, FIRST.count(b"\n") + len(FIRST), 0, 0]


def test_crlf_content(tmp_path: Path) -> None:
    # Some delivery agents store CRLF as received; the empty line after it is still LF.
    crlf = b"Subject: crlf\r\nMessage-ID: <3@x>\r\n\r\nline\r\nbare\rcr\r\n"
    data = record(crlf) + record(SECOND)
    [(info, message), second] = listed(tmp_path, data)
    assert message == crlf
    assert info.octets == len(crlf)
    assert second[1] == SECOND


def test_crlf_empty_line_before_a_separator_is_not_a_boundary(tmp_path: Path) -> None:
    # Only an empty line (LF alone) may precede a separator; CRLF files are one message.
    data = POSTFIX_FROM + b"A: b\r\n\r\nbody\r\n\r\nFrom x\r\nmore\r\n"
    assert contents(tmp_path, data) == [data[len(POSTFIX_FROM) :]]


def test_bytes_before_the_first_separator_are_not_a_message(tmp_path: Path) -> None:
    data = b"garbage\n\n" + record(FIRST)
    assert contents(tmp_path, data) == [FIRST]


def test_uw_imap_folder_data_message_is_not_listed(tmp_path: Path) -> None:
    pseudo = (
        b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
        b"X-IMAP: 1089104613 0000000002\n\nThis text is part of the internal format.\n"
    )
    data = record(pseudo) + record(FIRST)
    assert contents(tmp_path, data) == [FIRST]


def test_long_lines_and_big_messages_stream_in_bounded_blocks(tmp_path: Path) -> None:
    big = b"Subject: big\n\n" + b"y" * (3 * READ_BLOCK_SIZE + 17) + b"\n.dot\n" * 1000
    data = record(big) + record(SECOND)
    assert contents(tmp_path, data) == [big, SECOND]


def test_read_after_close_is_refused(tmp_path: Path) -> None:
    mbox_path(tmp_path).write_bytes(record(FIRST))

    async def main() -> None:
        drop = await store_at(tmp_path).open("alice")
        key = drop.listing[0].key
        await drop.close()
        await drop.close()
        with pytest.raises(StoreError):
            await read_all(drop, key)
        again = await store_at(tmp_path).open("alice")
        try:
            with pytest.raises(KeyError):
                await read_all(again, "nope")
        finally:
            await again.close()

    run(main())


def test_store_error_when_the_file_changed_underneath(tmp_path: Path) -> None:
    """Not MessageGone ("no longer exists"): the message may well be elsewhere in the
    rewritten file; the client should try again later ([SYS/TEMP])."""
    path = mbox_path(tmp_path)
    path.write_bytes(record(FIRST) + record(SECOND))

    async def body(drop: MboxMaildrop) -> None:
        with path.open("r+b") as rogue:  # a writer that ignores every lock
            rogue.truncate(10)
        for listed in drop.listing:
            with pytest.raises(StoreError, match="changed under the session") as caught:
                await read_all(drop, listed.key)
            assert not isinstance(caught.value, MessageGone)

    with_drop(tmp_path, body)


def test_a_read_interrupted_by_close_stops(tmp_path: Path) -> None:
    big = b"Subject: big\n\n" + b"z" * (10 * READ_BLOCK_SIZE) + b"\n"
    mbox_path(tmp_path).write_bytes(record(big))

    async def main() -> None:
        drop = await store_at(tmp_path).open("alice")
        blocks = drop.read(drop.listing[0].key)
        assert len(await anext(blocks)) == READ_BLOCK_SIZE
        await drop.close()
        with pytest.raises(StoreError):
            async for _ in blocks:
                pass

    run(main())

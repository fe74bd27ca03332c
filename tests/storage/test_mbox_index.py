"""The mbox index `<mbox>.popbox-index` (storage/mbox_index.py): what an open takes from
it, what it checks, what it parses again, and that the listing is always the one a full
parse of the file gives."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_mbox_support import MUTT_FROM, mbox_path, record, with_drop

from popbox.storage import mbox_index, mbox_scan
from popbox.storage.base import MessageInfo
from popbox.storage.mbox import MboxMaildrop
from popbox.storage.mbox_format import MboxFormat
from popbox.storage.mbox_index import INDEX_SUFFIX, FileStamp
from popbox.storage.mbox_records import Parsed, Record

MESSAGES = [b"Subject: m%d\nMessage-ID: <%d@x>\n\nbody %d\n" % (n, n, n) for n in range(6)]


def write(tmp_path: Path, messages: list[bytes]) -> Path:
    path = mbox_path(tmp_path)
    path.write_bytes(b"".join(record(m) for m in messages))
    return path


def listing(tmp_path: Path, mbox_format: MboxFormat = "mboxo") -> tuple[MessageInfo, ...]:
    async def body(drop: MboxMaildrop) -> tuple[MessageInfo, ...]:
        return tuple(drop.listing)

    return with_drop(tmp_path, body, mbox_format)


def full_parse(path: Path, mbox_format: MboxFormat = "mboxo") -> Parsed:
    fd = os.open(path, os.O_RDONLY)
    try:
        return mbox_scan.parse(fd, os.fstat(fd).st_size, mbox_format)
    finally:
        os.close(fd)


def index_of(path: Path) -> Parsed:
    index = mbox_index._read_index(str(path))
    assert index is not None
    return index.parsed


class Calls:
    """Counts the full parses and the tail parses of the opens that follow."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = 0
        self.appended: list[int] = []  # the size the index knew, at each tail parse
        parse, appended = mbox_scan.parse, mbox_scan.parse_appended

        def counted_parse(fd: int, size: int, fmt: MboxFormat) -> Parsed:
            self.full += 1
            return parse(fd, size, fmt)

        def counted_appended(fd: int, size: int, fmt: MboxFormat, known: Parsed) -> Parsed:
            self.appended.append(known.size)
            return appended(fd, size, fmt, known)

        monkeypatch.setattr(mbox_index, "parse", counted_parse)
        monkeypatch.setattr(mbox_index, "parse_appended", counted_appended)


class Clock:
    """mbox_index's clock, `ahead` nanoseconds ahead of the real one."""

    def __init__(self) -> None:
        self.ahead = 0
        self.real: Callable[[], int] = time.time_ns

    def time_ns(self) -> int:
        return self.real() + self.ahead


def settle(monkeypatch: pytest.MonkeyPatch, clock: Clock | None = None) -> Clock:
    """From now on mbox_index's clock is SETTLE_NS further ahead: every stamp taken is
    settled."""
    clock = clock or Clock()
    clock.ahead += FileStamp.SETTLE_NS + 1
    monkeypatch.setattr(mbox_index, "time", clock)
    return clock


def test_first_open_parses_and_writes_the_index(tmp_path: Path) -> None:
    path = write(tmp_path, MESSAGES[:3])
    first = listing(tmp_path)
    index_path = tmp_path / ("alice" + INDEX_SUFFIX)
    assert index_path.stat().st_mode & 0o777 == 0o600
    assert index_of(path) == full_parse(path)
    assert [info.octets for info in first] == [len(m) + m.count(b"\n") for m in MESSAGES[:3]]


def test_a_settled_index_is_used_without_reading_the_mbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, MESSAGES[:3])
    before = listing(tmp_path)  # written with fresh stamps: not trusted yet
    settle(monkeypatch)
    listing(tmp_path)  # checked, and written again with settled stamps
    written = (tmp_path / ("alice" + INDEX_SUFFIX)).stat().st_mtime_ns

    def no_read(*args: object) -> bool:
        raise AssertionError("the mbox was read")

    monkeypatch.setattr(mbox_index, "_in_place", no_read)
    monkeypatch.setattr(mbox_index, "is_separator_at", no_read)
    calls = Calls(monkeypatch)
    assert listing(tmp_path) == before
    assert (calls.full, calls.appended) == (0, [])
    assert (tmp_path / ("alice" + INDEX_SUFFIX)).stat().st_mtime_ns == written  # not rewritten


def test_fresh_stamps_are_checked_record_by_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MESSAGES[:3])
    listing(tmp_path)
    checked: list[int] = []
    real = mbox_index._in_place

    def spy(fd: int, records: tuple[Record, ...]) -> bool:
        checked.extend(record.separator for record in records)
        return real(fd, records)

    monkeypatch.setattr(mbox_index, "_in_place", spy)
    calls = Calls(monkeypatch)
    listing(tmp_path)
    assert checked == [r.separator for r in full_parse(path).records]
    assert (calls.full, calls.appended) == (0, [])


def test_records_that_moved_by_a_whole_record_are_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mail reader deleted the first message in place (same inode), then a message of the
    same length was delivered: same size, every separator where one was, yet other
    messages at each offset. The fingerprints differ: the file is parsed whole."""
    path = write(tmp_path, MESSAGES[:3])
    before = listing(tmp_path)
    settle(monkeypatch)
    with path.open("r+b") as file:
        file.write(b"".join(record(m) for m in MESSAGES[1:4]))
    assert path.stat().st_size == sum(len(record(m)) for m in MESSAGES[:3])
    calls = Calls(monkeypatch)
    after = listing(tmp_path)
    assert (calls.full, calls.appended) == (1, [])
    assert after == tuple(full_parse(path).snapshot().listing)
    assert [info.unique_id for info in after[:2]] == [info.unique_id for info in before[1:]]


def test_appended_mail_is_the_only_part_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MESSAGES[:3])
    old = listing(tmp_path)
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(record(MESSAGES[3]) + record(MESSAGES[0], MUTT_FROM))  # a duplicate
    calls = Calls(monkeypatch)
    new = listing(tmp_path)
    assert (calls.full, calls.appended) == (0, [size])
    assert new[:3] == old
    assert new == tuple(full_parse(path).snapshot().listing)
    assert new[4].unique_id == new[0].unique_id + "-2"
    assert index_of(path) == full_parse(path)


def test_a_separator_that_is_no_longer_one_means_a_full_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The empty line before the second record became "x" (same size, every record's
    first octets as they were): "From " there is body text now, and two records are one."""
    path = write(tmp_path, MESSAGES[:3])
    listing(tmp_path)
    data = path.read_bytes()
    second = data.index(b"\n\nFrom ") + 1
    path.write_bytes(data[:second] + b"x" + data[second + 1 :])
    calls = Calls(monkeypatch)
    after = listing(tmp_path)
    assert (calls.full, calls.appended) == (1, [])
    assert after == tuple(full_parse(path).snapshot().listing)
    assert len(after) == 2


def test_an_edit_that_moves_a_separator_means_a_full_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mail reader rewrote the mbox in place (same inode), a header longer than it was;
    then mail was appended: the size grew, and the file is parsed whole."""
    path = write(tmp_path, MESSAGES[:3])
    listing(tmp_path)
    inode = path.stat().st_ino
    edited = [MESSAGES[0].replace(b"Subject: m0", b"Subject: m0 (edited)"), *MESSAGES[1:4]]
    with path.open("r+b") as file:
        file.write(b"".join(record(m) for m in edited))
    assert path.stat().st_ino == inode
    calls = Calls(monkeypatch)
    assert listing(tmp_path) == tuple(full_parse(path).snapshot().listing)
    assert (calls.full, calls.appended) == (1, [])


def test_a_replaced_or_shorter_file_or_another_format_means_a_full_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MESSAGES[:3])
    listing(tmp_path)
    settle(monkeypatch)
    calls = Calls(monkeypatch)
    listing(tmp_path, "mboxrd")
    assert calls.full == 1
    replaced = tmp_path / "new"
    replaced.write_bytes(path.read_bytes())
    replaced.replace(path)  # same bytes, another inode
    listing(tmp_path, "mboxrd")
    assert calls.full == 2
    path.write_bytes(b"".join(record(m) for m in MESSAGES[:2]))  # truncated in place
    assert listing(tmp_path, "mboxrd") == tuple(full_parse(path, "mboxrd").snapshot().listing)
    assert calls.full == 3
    assert calls.appended == []


def test_a_damaged_index_is_logged_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, MESSAGES[:3])
    good = listing(tmp_path)
    index_path = tmp_path / ("alice" + INDEX_SUFFIX)
    data = bytearray(index_path.read_bytes())
    header_end = data.index(b"\n", data.index(b"\n") + 1) + 1
    data[header_end : header_end + 8] = (999).to_bytes(8, "little")  # first separator
    index_path.write_bytes(bytes(data))
    assert listing(tmp_path) == good
    assert "ignoring mbox index" in caplog.text
    assert index_of(path) == full_parse(path)
    index_path.write_bytes(b"popbox-mbox-index 1 little\nnot a stamp\n")
    assert listing(tmp_path) == good
    assert index_of(path) == full_parse(path)
    # Far bigger than any index of this mbox could be: not read whole, not used.
    index_path.write_bytes(index_path.read_bytes() + b"\n" * 1_000_000)
    caplog.clear()
    assert listing(tmp_path) == good
    assert "ignoring mbox index" in caplog.text
    assert index_path.stat().st_size < 1000


def test_update_indexes_the_rewritten_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MESSAGES[:5])

    async def delete(drop: MboxMaildrop) -> None:
        keys = [drop.listing[n].key for n in (0, 2, 4)]
        assert (await drop.delete(keys)).failed == ()

    with_drop(tmp_path, delete)
    assert path.read_bytes() == record(MESSAGES[1]) + record(MESSAGES[3])
    assert index_of(path) == full_parse(path)
    calls = Calls(monkeypatch)
    assert listing(tmp_path) == tuple(full_parse(path).snapshot().listing)
    assert (calls.full, calls.appended) == (0, [])


def test_a_preamble_is_not_indexed(tmp_path: Path) -> None:
    path = mbox_path(tmp_path)
    path.write_bytes(b"not mail\n\n" + record(MESSAGES[0]))
    assert len(listing(tmp_path)) == 1
    assert not (tmp_path / ("alice" + INDEX_SUFFIX)).exists()


def test_an_index_that_cannot_be_written_is_logged_and_the_mbox_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, MESSAGES[:2])
    (tmp_path / ("alice" + INDEX_SUFFIX)).mkdir()  # in the way, even for root
    assert [info.octets for info in listing(tmp_path)] == [len(m) + 4 for m in MESSAGES[:2]]
    assert "cannot read mbox index" in caplog.text
    assert "cannot write mbox index" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if "popbox-tmp" in p.name] == []


# Messages for the model test: some identical (UIDL suffixes), some with X-UIDL, one body
# line that mboxrd unquotes, one without its final line end.
POOL = [
    b"Subject: a\n\nbody a\n",
    b"Subject: a\n\nbody a\n",
    b"Subject: b\nX-UIDL: uid-b\n\nb\n>From here\n",
    b"Subject: c\n\n" + b"c" * 3000 + b"\n",
    b"X-IMAP: 1 2\nSubject: folder data\n\n",
    b"Subject: d\n\nno final line end",
]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.sampled_from(range(len(POOL))), max_size=3)),
        st.tuples(st.just("delete"), st.lists(st.integers(0, 7), max_size=3)),
        st.tuples(st.just("edit"), st.integers(0, 7)),
        st.tuples(st.just("settle"), st.booleans()),
    ),
    max_size=8,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.lists(st.sampled_from(range(len(POOL))), max_size=4),
    ops=operations,
    mbox_format=st.sampled_from(["mboxo", "mboxrd"]),
)
def test_every_open_lists_what_a_full_parse_lists(
    tmp_path_factory: pytest.TempPathFactory,
    start: list[int],
    ops: list[tuple[str, object]],
    mbox_format: MboxFormat,
) -> None:
    """Whatever happened to the mbox between sessions (deliveries, UPDATEs, edits in
    place by a mail reader), the listing an open gives is a full parse's."""
    tmp_path = tmp_path_factory.mktemp("mbox")
    path = mbox_path(tmp_path)
    path.write_bytes(b"".join(record(POOL[n]) if n != 5 else _unended(POOL[n]) for n in start))
    clock = Clock()
    with pytest.MonkeyPatch.context() as monkeypatch:
        for op, argument in [("open", None), *ops, ("open", None)]:
            if op == "append":
                assert isinstance(argument, list)
                with path.open("ab") as file:
                    file.write(b"".join(record(POOL[n]) for n in argument))
            elif op == "delete":
                assert isinstance(argument, list)

                async def delete(drop: MboxMaildrop, numbers: list[int] = argument) -> None:
                    keys = {drop.listing[n].key for n in numbers if n < len(drop.listing)}
                    await drop.delete(sorted(keys))

                with_drop(tmp_path, delete, mbox_format)
            elif op == "edit":  # a header one octet longer, in place (same inode)
                data = path.read_bytes()
                at = data.find(b"Subject: ", _nth_record(data, argument))
                if at >= 0:
                    path.write_bytes(data[:at] + b"Subject:  " + data[at + 9 :])
            elif op == "settle" and argument:
                settle(monkeypatch, clock)
            expected = tuple(full_parse(path, mbox_format).snapshot().listing)
            assert listing(tmp_path, mbox_format) == expected, (op, argument)


def _unended(message: bytes) -> bytes:
    return b"From x  Sat Jan  3 01:05:34 1996\n" + message


def _nth_record(data: bytes, n: object) -> int:
    assert isinstance(n, int)
    position = 0
    for _ in range(n):
        found = data.find(b"\n\nFrom ", position)
        if found < 0:
            return len(data)
        position = found + 2
    return position

"""The Maildir store: creation, listing snapshot, UIDL, streaming reads, UPDATE deletes."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import TypeVar

import pytest

from popbox.storage import maildir as maildir_module
from popbox.storage import maildir_inline
from popbox.storage import threads as threads_module
from popbox.storage.base import READ_BLOCK_SIZE, MessageGone, StoreError
from popbox.storage.locking import LOCK_FILE_NAME
from popbox.storage.maildir import (
    InvalidMaildropUser,
    MaildirMaildrop,
    MaildirStore,
    expand_location,
)
from popbox.storage.threads import in_thread_owned

_T = TypeVar("_T")


def run(coro: Awaitable[_T]) -> _T:
    async def main() -> _T:
        return await coro

    return asyncio.run(main())


def store_at(tmp_path: Path) -> MaildirStore:
    return MaildirStore(str(tmp_path / "%u" / "Maildir"))


def maildir_of(tmp_path: Path, user: str = "alice") -> Path:
    maildir = tmp_path / user / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    return maildir


def deliver(maildir: Path, name: str, data: bytes, sub: str = "new") -> Path:
    path = maildir / sub / name
    path.write_bytes(data)
    return path


async def opened(tmp_path: Path, user: str = "alice") -> MaildirMaildrop:
    return await store_at(tmp_path).open(user)


async def read_all(drop: MaildirMaildrop, key: str) -> list[bytes]:
    async with aclosing(drop.read(key)) as blocks:
        return [block async for block in blocks]


def with_drop(tmp_path: Path, body: Callable[[MaildirMaildrop], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        drop = await opened(tmp_path)
        try:
            return await body(drop)
        finally:
            await drop.close()

    return asyncio.run(main())


# --- location and creation ------------------------------------------------------------


def test_missing_maildrop_is_created_empty(tmp_path: Path) -> None:
    drop = run(opened(tmp_path))
    try:
        assert list(drop.listing) == []
        maildir = tmp_path / "alice" / "Maildir"
        assert drop.path == str(maildir)
        for sub in ("new", "cur", "tmp"):
            assert (maildir / sub).is_dir()
            assert (maildir / sub).stat().st_mode & 0o777 == 0o700
        assert maildir.stat().st_mode & 0o777 == 0o700
        assert (maildir / LOCK_FILE_NAME).is_file()
    finally:
        run(drop.close())


@pytest.mark.parametrize("user", ["", ".", "..", "../etc", "a/b", "a\0b", "/abs", "x@../y"])
def test_invalid_user_names_are_refused_before_any_file_is_touched(
    tmp_path: Path, user: str
) -> None:
    with pytest.raises(InvalidMaildropUser):
        run(opened(tmp_path, user))
    assert list(tmp_path.iterdir()) == []
    assert issubclass(InvalidMaildropUser, StoreError)


def test_location_template_fields() -> None:
    assert expand_location("/m/%d/%n/Maildir", "bob@example.org") == "/m/example.org/bob/Maildir"
    assert expand_location("/m/%u", "bob@example.org") == "/m/bob@example.org"
    assert expand_location("~/%u/100%%", "bob") == "~/bob/100%"
    with pytest.raises(InvalidMaildropUser):
        expand_location("/m/%d/%n", "bob")  # no domain: refused, not "/m//bob"


@pytest.mark.parametrize("template", ["", "/srv/mail/shared", "/m/%d", "/m/%u/%x", "/m/%u%"])
def test_bad_location_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="template"):
        MaildirStore(template)


def test_maildir_path_that_is_a_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "Maildir").write_bytes(b"not a directory")
    with pytest.raises(StoreError):
        run(opened(tmp_path))


# --- listing snapshot -------------------------------------------------------------------

OCTET_CASES = {
    "1700000001.M1P1.host": (b"a\r\nb\r\n", 6),  # CRLF
    "1700000002.M1P1.host": (b"a\nb\n", 6),  # LF
    "1700000003.M1P1.host": (b"a\r\nbc\n\n", 9),  # mixed
    "1700000004.M1P1.host": (b"a\nb", 6),  # no final newline
    "1700000005.M1P1.host": (b"", 0),  # empty
    "1700000006.M1P1.host": (b"a\rb\r\n", 5),  # bare CR is data
    "1700000007.M1P1.host": (b"a\r", 4),  # ends in a bare CR
}


def test_listing_octets_are_wire_sizes(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    for name, (data, _) in OCTET_CASES.items():
        deliver(maildir, name, data, sub="cur" if data.endswith(b"\n") else "new")
    drop = run(opened(tmp_path))
    run(drop.close())
    assert [(m.key, m.octets) for m in drop.listing] == [
        (name, octets) for name, (_, octets) in OCTET_CASES.items()
    ]


def test_w_field_is_trusted(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    deliver(maildir, "1700000000.M1P1.host,S=4,W=999:2,S", b"abc\n", sub="cur")
    deliver(maildir, "legacy,W=77", b"abc\n")
    drop = run(opened(tmp_path))
    run(drop.close())
    assert sorted((m.key, m.octets) for m in drop.listing) == [
        ("1700000000.M1P1.host,S=4,W=999", 999),
        ("legacy,W=77", 77),
    ]


def test_oldest_delivery_is_message_one(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    deliver(maildir, "1700000300.M1P1.host", b"4\n")
    deliver(maildir, "1700000100.M10P1.host:2,S", b"2\n", sub="cur")
    deliver(maildir, "1700000100.M9P1.host", b"1\n")
    legacy = deliver(maildir, "legacy-name", b"3\n", sub="cur")
    os.utime(legacy, (1700000200, 1700000200))
    deliver(maildir, "1700000100.M10P1.aaa", b"2b\n")  # same time: then by name
    drop = run(opened(tmp_path))
    run(drop.close())
    assert [m.key for m in drop.listing] == [
        "1700000100.M9P1.host",
        "1700000100.M10P1.aaa",
        "1700000100.M10P1.host",
        "legacy-name",
        "1700000300.M1P1.host",
    ]


def test_non_messages_are_not_listed(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    deliver(maildir, "1700000000.M1P1.host", b"real\n")
    deliver(maildir, "1700000001.M1P1.host", b"in delivery\n", sub="tmp")
    deliver(maildir, ".hidden", b"dotfile\n", sub="cur")
    (maildir / "cur" / "1700000002.M1P1.dir").mkdir()
    (maildir / "new" / "1700000003.M1P1.link").symlink_to(maildir / "new" / "1700000000.M1P1.host")
    os.mkfifo(maildir / "cur" / "1700000005.M1P1.fifo")
    drop = run(opened(tmp_path))
    run(drop.close())
    assert [m.key for m in drop.listing] == ["1700000000.M1P1.host"]


# --- UIDL (RFC 1939 section 7) -------------------------------------------------------------


def test_uidl_survives_move_to_cur_and_flag_changes(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    name = "1700000000.M1P1.host,S=6,W=7"
    deliver(maildir, name, b"hello\n")
    seen = []
    for target in (None, "cur/" + name + ":2,", "cur/" + name + ":2,RS"):
        if target is not None:
            current = next(p for p in maildir.glob("*/" + name + "*") if p.parent.name != "tmp")
            current.rename(maildir / target)
        drop = run(opened(tmp_path))
        run(drop.close())
        seen.append([(m.key, m.unique_id, m.octets) for m in drop.listing])
    assert seen == [[(name, name, 7)]] * 3


def test_qualifying_base_name_is_the_uidl(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    name = "1700000000.M1P1.h" + "x" * 53  # exactly 70 characters
    deliver(maildir, name, b"x\n")
    drop = run(opened(tmp_path))
    run(drop.close())
    assert [m.unique_id for m in drop.listing] == [name]


@pytest.mark.parametrize(
    "raw_name",
    [
        b"1700000000.M1P1.host with space",
        b"1700000000.M1P1." + b"h" * 60,  # 76 characters: too long
        b"1700000000.M1P1.caf\xc3\xa9",  # UTF-8, outside 0x21-0x7E
        b"1700000000.M1P1.\xff\xfe",  # not UTF-8 at all
        b"1700000000.M1P1.tab\there",
    ],
)
def test_non_qualifying_names_get_a_stable_digest(tmp_path: Path, raw_name: bytes) -> None:
    maildir = maildir_of(tmp_path)
    with open(os.path.join(os.fsencode(maildir / "new"), raw_name), "wb") as message:
        message.write(b"x\n")
    drop = run(opened(tmp_path))
    run(drop.close())
    (info,) = drop.listing
    assert info.key == os.fsdecode(raw_name)
    assert info.unique_id == hashlib.sha1(raw_name).hexdigest()
    assert 1 <= len(info.unique_id) <= 70
    assert all(0x21 <= ord(c) <= 0x7E for c in info.unique_id)
    # Stable: the same digest after a move to cur/ with flags.
    os.rename(
        os.path.join(os.fsencode(maildir / "new"), raw_name),
        os.path.join(os.fsencode(maildir / "cur"), raw_name + b":2,S"),
    )
    again = run(opened(tmp_path))
    assert [m.unique_id for m in again.listing] == [info.unique_id]
    assert run(read_all(again, info.key)) == [b"x\n"]
    run(again.close())


# --- read --------------------------------------------------------------------------------


def test_read_streams_a_big_message_in_bounded_blocks(tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    deliver(maildir_of(tmp_path), "1700000000.M1P1.host", data)

    async def body(drop: MaildirMaildrop) -> list[bytes]:
        return await read_all(drop, drop.listing[0].key)

    blocks = with_drop(tmp_path, body)
    assert all(0 < len(block) <= READ_BLOCK_SIZE for block in blocks)
    assert len(blocks) == -(-len(data) // READ_BLOCK_SIZE)
    assert b"".join(blocks) == data


def _count_thread_reads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every read the worker thread does (its open-and-read hop)."""
    calls: list[object] = []
    original = maildir_module._open_and_read

    def counted(*args: str) -> tuple[int, str, list[bytes]]:
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(maildir_module, "_open_and_read", counted)
    return calls


def _evict_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # only clean pages can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_small_cached_message_is_read_without_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maildir_inline._OnTheLoop, "enabled", True)
    data = b"Subject: small\n\n" + b"x" * (READ_BLOCK_SIZE - 100)
    deliver(maildir_of(tmp_path), "1700000000.M1P1.host", data)
    calls = _count_thread_reads(monkeypatch)
    assert with_drop(tmp_path, lambda drop: read_all(drop, drop.listing[0].key)) == [data]
    assert calls == []


@pytest.mark.parametrize("size", [READ_BLOCK_SIZE, READ_BLOCK_SIZE + 1, 3 * READ_BLOCK_SIZE])
def test_message_of_a_block_or_more_is_read_by_the_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    data = os.urandom(size)
    deliver(maildir_of(tmp_path), "1700000000.M1P1.host", data)
    calls = _count_thread_reads(monkeypatch)
    blocks = with_drop(tmp_path, lambda drop: read_all(drop, drop.listing[0].key))
    assert b"".join(blocks) == data
    assert len(calls) == 1


def test_message_not_in_the_page_cache_is_read_by_the_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # preadv2(RWF_NOWAIT) says EAGAIN rather than wait for the disk: the event loop never
    # waits for a read; the worker thread does it.
    data = b"Subject: cold\n\n" + os.urandom(20_000)
    path = deliver(maildir_of(tmp_path), "1700000000.M1P1.host", data)
    calls = _count_thread_reads(monkeypatch)

    async def body(drop: MaildirMaildrop) -> int:
        # Pages another CPU has just added can escape one eviction: try a few times.
        for attempt in range(1, 21):
            _evict_from_page_cache(path)
            assert await read_all(drop, drop.listing[0].key) == [data]
            if calls:
                return attempt
        return 0

    assert with_drop(tmp_path, body) > 0
    assert len(calls) == 1


def test_slow_reads_on_the_event_loop_send_every_later_read_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A stalled network filesystem, as open(2) would see it: every inline read is slow.
    monkeypatch.setattr(maildir_inline._OnTheLoop, "enabled", True)
    monkeypatch.setattr(maildir_inline._OnTheLoop, "_slow_at", collections.deque(maxlen=3))
    real = maildir_inline.read_if_cached

    def stalled(path: str) -> bytes | None:
        time.sleep(0.05)
        return real(path)

    monkeypatch.setattr(maildir_module, "read_if_cached", stalled)
    messages = [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(4)]
    maildir = maildir_of(tmp_path)
    for n, message in enumerate(messages):
        deliver(maildir, f"170000000{n}.M1P1.host", message)
    calls = _count_thread_reads(monkeypatch)

    async def body(drop: MaildirMaildrop) -> list[list[bytes]]:
        return [await read_all(drop, message.key) for message in drop.listing]

    assert with_drop(tmp_path, body) == [[message] for message in messages]
    assert len(calls) == 1  # three reads were inline (and slow); the fourth was not
    assert maildir_inline._OnTheLoop.enabled is False
    assert "messages are read in worker threads from now on" in caplog.text


def test_read_empty_message_yields_nothing(tmp_path: Path) -> None:
    deliver(maildir_of(tmp_path), "1700000000.M1P1.host", b"")
    assert with_drop(tmp_path, lambda drop: read_all(drop, drop.listing[0].key)) == []


def test_read_follows_a_move_and_a_flag_change(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    first = deliver(maildir, "1700000000.M1P1.host", b"moved\n")

    async def body(drop: MaildirMaildrop) -> list[bytes]:
        key = drop.listing[0].key
        first.rename(maildir / "cur" / (key + ":2,S"))
        got = await read_all(drop, key)
        (maildir / "cur" / (key + ":2,S")).rename(maildir / "cur" / (key + ":2,RS"))
        return got + await read_all(drop, key)

    assert with_drop(tmp_path, body) == [b"moved\n", b"moved\n"]


def test_read_of_a_vanished_message_raises_message_gone_first(tmp_path: Path) -> None:
    path = deliver(maildir_of(tmp_path), "1700000000.M1P1.host", b"gone\n")
    blocks: list[bytes] = []

    async def body(drop: MaildirMaildrop) -> None:
        path.unlink()
        async with aclosing(drop.read(drop.listing[0].key)) as stream:
            async for block in stream:
                blocks.append(block)

    with pytest.raises(MessageGone):
        with_drop(tmp_path, body)
    assert blocks == []


def test_read_error_other_than_gone_is_store_error(tmp_path: Path) -> None:
    path = deliver(maildir_of(tmp_path), "1700000000.M1P1.host", b"x\n")

    async def body(drop: MaildirMaildrop) -> list[bytes]:
        path.unlink()
        path.mkdir()  # EISDIR on read
        return await read_all(drop, drop.listing[0].key)

    with pytest.raises(StoreError) as caught:
        with_drop(tmp_path, body)
    assert not isinstance(caught.value, MessageGone)


def test_unknown_key_and_closed_maildrop(tmp_path: Path) -> None:
    deliver(maildir_of(tmp_path), "1700000000.M1P1.host", b"x\n")

    async def body() -> None:
        drop = await opened(tmp_path)
        with pytest.raises(KeyError):
            await read_all(drop, "no-such-key")
        with pytest.raises(KeyError):
            await drop.delete(["no-such-key"])
        await drop.close()
        await drop.close()  # idempotent
        assert drop.closed
        with pytest.raises(StoreError):
            await read_all(drop, drop.listing[0].key)
        with pytest.raises(StoreError):
            await drop.delete([drop.listing[0].key])

    run(body())


# --- delete (RFC 1939 section 6, UPDATE) ---------------------------------------------------


def test_delete_counts_an_already_missing_file_as_removed(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    one = deliver(maildir, "1700000001.M1P1.host", b"1\n")
    deliver(maildir, "1700000002.M1P1.host", b"2\n")
    three = deliver(maildir, "1700000003.M1P1.host", b"3\n")

    async def body(drop: MaildirMaildrop) -> tuple[tuple[str, ...], tuple[str, ...]]:
        one.unlink()
        three.rename(maildir / "cur" / (three.name + ":2,S"))  # moved by another agent
        result = await drop.delete([drop.listing[0].key, drop.listing[2].key])
        return result.removed, result.failed

    removed, failed = with_drop(tmp_path, body)
    assert removed == ("1700000001.M1P1.host", "1700000003.M1P1.host")
    assert failed == ()
    assert sorted(p.name for p in maildir.glob("*/*")) == ["1700000002.M1P1.host"]


def test_delete_failure_goes_to_failed_and_the_rest_continues(tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path)
    stuck = deliver(maildir, "1700000001.M1P1.host", b"1\n")
    deliver(maildir, "1700000002.M1P1.host", b"2\n")

    async def body(drop: MaildirMaildrop) -> tuple[tuple[str, ...], tuple[str, ...]]:
        # Root ignores permission bits, so make unlink fail another way: the message path
        # is now a non-empty directory (EISDIR).
        stuck.unlink()
        stuck.mkdir()
        (stuck / "inner").write_bytes(b"x")
        result = await drop.delete([m.key for m in drop.listing])
        return result.removed, result.failed

    removed, failed = with_drop(tmp_path, body)
    assert removed == ("1700000002.M1P1.host",)
    assert failed == ("1700000001.M1P1.host",)
    assert not (maildir / "new" / "1700000002.M1P1.host").exists()


# --- cancellation never leaks a lock or a descriptor ------------------------------------------


def test_cancelled_thread_result_is_disposed() -> None:
    started = threading.Event()
    proceed = threading.Event()

    def work() -> str:
        started.set()
        proceed.wait(10)
        return "resource"

    async def body() -> list[str]:
        disposed: list[str] = []
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def dispose(value: str) -> None:
            disposed.append(value)
            loop.call_soon_threadsafe(done.set)

        task = asyncio.create_task(in_thread_owned(work, dispose))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        proceed.set()
        await asyncio.wait_for(done.wait(), 10)
        return disposed

    assert run(body()) == ["resource"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_cancelled_read_closes_its_file_after_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(maildir_of(tmp_path), "1700000000.M1P1.host", b"x" * (20 * READ_BLOCK_SIZE))
    closed = asyncio.Event()
    original = threads_module._close_when_done

    def close_after(fd: int, future: asyncio.Future[list[bytes]]) -> None:
        original(fd, future)
        closed.set()

    monkeypatch.setattr(threads_module, "_close_when_done", close_after)

    async def body(drop: MaildirMaildrop) -> None:
        baseline = _open_fds()
        first_block = asyncio.Event()

        async def consume() -> None:
            # The only suspension point is the store's worker-thread read.
            async for _ in drop.read(drop.listing[0].key):
                first_block.set()

        task = asyncio.create_task(consume())
        await first_block.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 10)
        assert _open_fds() == baseline

    with_drop(tmp_path, body)

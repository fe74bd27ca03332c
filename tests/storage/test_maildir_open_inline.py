"""Opening a maildrop on the event loop (storage/maildir_inline.py): a maildrop whose
cache may stand in for the listing is locked and listed without a worker thread; every
other open (new mail, no maildrop yet, a corrupt cache) goes to the thread as before,
and one slow open sends all later ones there."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from popbox.storage import maildir as maildir_module
from popbox.storage import maildir_inline, maildir_snapshot
from popbox.storage.base import MaildropLocked
from popbox.storage.locking import MaildropLock
from popbox.storage.maildir import MaildirStore
from popbox.storage.maildir_cache import CACHE_FILE_NAME
from popbox.storage.maildir_snapshot import Snapshot
from popbox.storage.maildir_uidl import UidlSettings

_T = TypeVar("_T")

MESSAGES = {
    "1700000000.M1P1.host": b"Subject: one\n\nfirst\n",
    "1700000001.M2P1.host": b"Subject: two\n\nsecond\n",
}


def run(coro: Awaitable[_T]) -> _T:
    async def main() -> _T:
        return await coro

    return asyncio.run(main())


@pytest.fixture
def maildir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """alice's maildrop with two messages, new/ and cur/ last changed 10 s ago."""
    monkeypatch.setattr(maildir_inline._OnTheLoop, "enabled", True)
    monkeypatch.setattr(maildir_inline._OnTheLoop, "_slow_at", collections.deque(maxlen=3))
    path = tmp_path / "alice" / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True)
    for name, data in MESSAGES.items():
        (path / "new" / name).write_bytes(data)
    settle(path)
    return path


def settle(path: Path) -> None:
    when = time.time() - 10
    for sub in ("new", "cur"):
        os.utime(path / sub, (when, when))


def store(maildir: Path) -> MaildirStore:
    return MaildirStore(str(maildir.parents[1] / "%u" / "Maildir"))


def thread_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The maildirs the worker thread locks and lists (its one hop of an open)."""
    calls: list[str] = []
    original = maildir_module._lock_and_snapshot

    def counted(
        maildir: str, settings: UidlSettings, counted: dict[str, int], count_up_to: int | None
    ) -> tuple[MaildropLock, Snapshot]:
        calls.append(maildir)
        return original(maildir, settings, counted, count_up_to)

    monkeypatch.setattr(maildir_module, "_lock_and_snapshot", counted)
    return calls


def keys(maildir: Path) -> list[str]:
    async def scenario() -> list[str]:
        drop = await store(maildir).open("alice")
        await drop.close()
        return [message.key for message in drop.listing]

    return run(scenario())


def test_a_maildrop_whose_cache_is_current_opens_without_a_worker_thread(
    maildir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = thread_opens(monkeypatch)
    assert keys(maildir) == list(MESSAGES)  # lists it, writes the cache
    assert calls == [str(maildir)]
    assert keys(maildir) == list(MESSAGES)
    assert calls == [str(maildir)]  # the second open was the event loop's

    async def locked_while_open() -> None:
        drop = await store(maildir).open("alice")
        try:
            with pytest.raises(MaildropLocked):
                await store(maildir).open("alice")
            data = b"".join([block async for block in drop.read("1700000001.M2P1.host")])
            assert data == MESSAGES["1700000001.M2P1.host"]
        finally:
            await drop.close()

    run(locked_while_open())
    assert calls == [str(maildir)]
    assert keys(maildir) == list(MESSAGES)  # the lock was released


def test_a_big_maildrop_is_opened_by_the_worker_thread(
    maildir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache over CACHE_ON_THE_LOOP octets would take too long to parse on the loop (a
    100,000-message maildrop: 140 ms); such a maildrop opens in the thread, every time,
    and the loop keeps doing the small ones."""
    names = [f"18000{n:05d}.M{n}P1.host" for n in range(1500)]
    for name in names:
        (maildir / "cur" / f"{name}:2,S").write_bytes(b"Subject: many\n\n")
    settle(maildir)
    calls = thread_opens(monkeypatch)
    assert keys(maildir) == list(MESSAGES) + names
    assert (maildir / CACHE_FILE_NAME).stat().st_size > maildir_inline.CACHE_ON_THE_LOOP
    assert keys(maildir) == list(MESSAGES) + names
    assert calls == [str(maildir)] * 2
    assert maildir_inline._OnTheLoop.enabled


def test_new_mail_is_listed_by_the_worker_thread(
    maildir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys(maildir)
    calls = thread_opens(monkeypatch)
    (maildir / "new" / "1700000002.M3P1.host").write_bytes(b"Subject: three\n\nthird\n")
    assert keys(maildir) == [*MESSAGES, "1700000002.M3P1.host"]
    assert calls == [str(maildir)]


def test_a_missing_maildrop_is_created_by_the_worker_thread(
    maildir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = thread_opens(monkeypatch)
    bob = maildir.parents[1] / "bob" / "Maildir"

    async def scenario() -> int:
        drop = await store(maildir).open("bob")
        await drop.close()
        return len(drop.listing)

    assert run(scenario()) == 0
    assert calls == [str(bob)]
    assert sorted(path.name for path in bob.iterdir() if path.is_dir()) == ["cur", "new", "tmp"]


def test_a_corrupt_cache_is_reported_once_and_rebuilt(
    maildir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    keys(maildir)
    (maildir / CACHE_FILE_NAME).write_bytes(b"not a cache\n")
    calls = thread_opens(monkeypatch)
    assert keys(maildir) == list(MESSAGES)
    assert calls == [str(maildir)]
    assert caplog.text.count("is corrupt, rebuilding it") == 1


def stall_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled network filesystem, as stat(2) would see it: every inline open is slow."""
    real = maildir_snapshot.cached_snapshot

    def stalled(path: str, settings: UidlSettings, up_to: int) -> Snapshot | None:
        time.sleep(0.05)
        return real(path, settings, up_to)

    monkeypatch.setattr(maildir_inline, "cached_snapshot", stalled)


def test_slow_opens_on_the_event_loop_send_every_later_one_to_threads(
    maildir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    keys(maildir)
    stall_opens(monkeypatch)
    calls = thread_opens(monkeypatch)
    strikes = maildir_inline._OnTheLoop.STRIKES
    for strike in range(1, strikes + 1):
        assert keys(maildir) == list(MESSAGES)
        assert calls == []  # each slow open was still the event loop's
        assert maildir_inline._OnTheLoop.enabled is (strike < strikes)
    assert "maildrops are opened and messages are read in worker threads" in caplog.text
    assert keys(maildir) == list(MESSAGES)
    assert calls == [str(maildir)]


def test_slow_pieces_far_apart_keep_the_work_on_the_loop(
    maildir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A garbage collection or a descheduled process now and then makes a piece slow; as
    long as STRIKES of them do not fall within WINDOW, nothing moves to threads."""
    monkeypatch.setattr(maildir_inline._OnTheLoop, "WINDOW", 0.01)  # < the 50 ms stall
    caplog.set_level(logging.INFO, logger="popbox.storage.maildir_inline")
    keys(maildir)
    stall_opens(monkeypatch)
    calls = thread_opens(monkeypatch)
    for _ in range(maildir_inline._OnTheLoop.STRIKES + 1):
        assert keys(maildir) == list(MESSAGES)
    assert calls == []
    assert maildir_inline._OnTheLoop.enabled
    assert caplog.text.count(" ms on the event loop\n") == maildir_inline._OnTheLoop.STRIKES + 1
    assert "worker threads from now on" not in caplog.text

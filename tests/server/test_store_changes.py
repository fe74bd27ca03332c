"""The store changing under a session of the real `popbox serve` (issue 7, item 2): mail
that another program removes, moves, replaces or rewrites while a session holds the
maildrop, and PostgreSQL restarted mid-session.

The promise: the client gets `-ERR` (`[SYS/TEMP]` when the store cannot say what happened)
or, once a `+OK` has gone out, a closed connection; never a wrong size or another
message's bytes. The server stays up and the next session works.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fault_helpers import USERS, lmtp_deliver, retr, serve
from pg_helpers import PostgresServer, deliver, write_pg_config
from server_helpers import (
    PopboxServer,
    RawClient,
    close_everything_started,
    crlf,
    launch,
    maildir_contents,
    write_maildir,
)

FIRST = b"From: a@example.org\nSubject: one\n\nfirst body\n"
SECOND = b"From: b@example.org\nSubject: two\n\nsecond body, a bit longer\n"
THIRD = b"From: c@example.org\nSubject: three\n\nthird\n"
TEMP_READ = b"-ERR [SYS/TEMP] message cannot be read now\r\n"
NOT_REMOVED = b"-ERR some deleted messages not removed\r\n"


@pytest.fixture(autouse=True)
def _cleanup() -> object:
    yield None
    close_everything_started()


def record(message: bytes, sender: bytes = b"x@example.org") -> bytes:
    return b"From %s Thu Nov 26 12:00:00 2026\n%s\n" % (sender, message)


def login(server: PopboxServer, count: int) -> RawClient:
    client = RawClient(server)
    assert client.login("alice", "secret").startswith(b"+OK maildrop has %d messages" % count)
    return client


def list_sizes(client: RawClient) -> list[int]:
    client.send(b"LIST\r\n")
    lines = client.read_multiline().split(b"\r\n")[1:-2]
    return [int(line.split()[1]) for line in lines]


def retr_ok(client: RawClient, number: int) -> bytes:
    client.send(b"RETR %d\r\n" % number)
    reply = client.read_multiline()
    assert reply.startswith(b"+OK "), reply
    return retr(reply)


def test_maildir_message_removed_or_moved_by_another_agent(tmp_path: Path) -> None:
    maildir = tmp_path / "mail" / "alice" / "Maildir"
    names = write_maildir(maildir, [FIRST, SECOND, THIRD])
    server = serve(tmp_path, f"maildir:{tmp_path}/mail/%u/Maildir")
    client = login(server, 3)
    (maildir / "new" / names[1]).unlink()  # another POP3 or IMAP server took it
    os.rename(maildir / "new" / names[2], maildir / "cur" / f"{names[2]}:2,S")  # seen
    assert retr_ok(client, 1) == crlf(FIRST)
    assert client.command(b"RETR 2") == b"-ERR message 2 no longer exists\r\n"
    assert retr_ok(client, 3) == crlf(THIRD)  # followed to cur/, flags and all
    for number in (2, 3):
        assert client.command(b"DELE %d" % number) == b"+OK message %d deleted\r\n" % number
    # The vanished one counts as removed (RFC 1939 section 6: it is not there any more).
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (1 messages left)\r\n"
    assert maildir_contents(maildir) == [FIRST]


BIG = b"Subject: big\n\n" + b"0123456789abcde\n" * 20_000  # 320,000 octets, 5 blocks


@pytest.mark.parametrize(
    ("original", "replacement"),
    [
        (SECOND, SECOND + b"x" * 100),
        (SECOND, b"Subject: short\n\n"),
        (BIG, BIG[:200_000]),
        (BIG, BIG + b"more\n" * 20_000),
    ],
    ids=["longer", "shorter", "big-shorter", "big-longer"],
)
def test_maildir_message_replaced_by_one_of_another_size(
    tmp_path: Path, original: bytes, replacement: bytes
) -> None:
    """LIST announced the size: RETR never sends more or fewer octets under it. Found
    before anything was sent, the reply is [SYS/TEMP]; after the +OK line (a message of
    several blocks), the connection is closed with no terminating dot (shared/DESIGN.md),
    so the client knows the message did not arrive whole."""
    maildir = tmp_path / "mail" / "alice" / "Maildir"
    names = write_maildir(maildir, [original, THIRD])
    server = serve(tmp_path, f"maildir:{tmp_path}/mail/%u/Maildir")
    client = login(server, 2)
    announced = len(crlf(original))
    assert list_sizes(client) == [announced, len(crlf(THIRD))]
    swap = maildir / "tmp" / "swap"
    swap.write_bytes(replacement)
    os.rename(swap, maildir / "new" / names[0])  # an editor replaces the file whole
    changed = f"message 1 changed under the session: {announced} octets listed"
    if original is SECOND:
        assert client.command(b"RETR 1") == TEMP_READ
        server.log.wait_for(r"read failed user=alice error=" + changed)
        assert retr_ok(client, 2) == crlf(THIRD)
        assert client.command(b"QUIT").startswith(b"+OK")
    else:
        client.send(b"RETR 1\r\n")
        received = client.read_until_closed()
        status = b"+OK %d octets\r\n" % announced
        assert received.startswith(status)
        assert not received.endswith(b"\r\n.\r\n")
        assert 0 < len(received) - len(status) < announced  # no dots to stuff in BIG
        assert crlf(replacement).startswith(received[len(status) :])
        server.log.wait_for(r"read failed after \+OK user=alice error=" + changed)
    # The next session lists the file as it is now, and serves it whole.
    again = login(server, 2)
    assert list_sizes(again) == [len(crlf(replacement)), len(crlf(THIRD))]
    assert retr_ok(again, 1) == crlf(replacement)


@pytest.mark.parametrize(
    ("message", "listed"),
    [(SECOND, 20), (SECOND, 500), (BIG, 400_000)],
    ids=["less", "more", "big"],
)
def test_maildir_name_with_a_wrong_w_size_is_counted_for_the_next_session(
    tmp_path: Path, message: bytes, listed: int
) -> None:
    """A name whose `,W=` is wrong (the file was edited after delivery): the session that
    finds out refuses or cuts the reply, as for any changed message; the next session
    lists the size the file really has and serves it. It used to take the name's size
    again at every open, so that no session could ever retrieve the message. The name,
    and so the unique-id, stay as they are."""
    maildir = tmp_path / "mail" / "alice" / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    name = f"1700000000.M1P1.host,S={len(message)},W={listed}"
    (maildir / "cur" / f"{name}:2,S").write_bytes(message)
    (maildir / "cur" / "1700000001.M2P1.host:2,S").write_bytes(THIRD)
    server = serve(tmp_path, f"maildir:{tmp_path}/mail/%u/Maildir")
    client = login(server, 2)
    assert list_sizes(client) == [listed, len(crlf(THIRD))]
    changed = f"message 1 changed under the session: {listed} octets listed"
    if message is SECOND:
        assert client.command(b"RETR 1") == TEMP_READ
        server.log.wait_for(r"read failed user=alice error=" + changed)
        assert client.command(b"QUIT").startswith(b"+OK")
    else:
        client.send(b"RETR 1\r\n")
        assert client.read_until_closed().startswith(b"+OK %d octets\r\n" % listed)
        server.log.wait_for(r"read failed after \+OK user=alice error=" + changed)
    for _ in range(2):  # from the cache the failed session wrote, then as it stands
        again = login(server, 2)
        assert list_sizes(again) == [len(crlf(message)), len(crlf(THIRD))]
        assert again.command(b"UIDL 1") == f"+OK 1 {name}\r\n".encode()
        assert retr_ok(again, 1) == crlf(message)
        assert again.command(b"QUIT").startswith(b"+OK")
        assert sorted(os.listdir(maildir / "cur")) == [f"{name}:2,S", "1700000001.M2P1.host:2,S"]


def test_mbox_truncated_by_a_program_that_ignores_locks(tmp_path: Path) -> None:
    (tmp_path / "mail").mkdir()
    mbox = tmp_path / "mail" / "alice"
    mbox.write_bytes(record(FIRST) + record(SECOND))
    server = serve(tmp_path, f"mbox:{tmp_path}/mail/%u")
    client = login(server, 2)
    with mbox.open("r+b") as rogue:
        rogue.truncate(len(record(FIRST)) + 20)  # cuts into the second message
    assert client.command(b"RETR 2") == TEMP_READ
    assert client.command(b"RETR 1") == TEMP_READ  # the file is not the one listed
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"QUIT") == NOT_REMOVED
    server.log.wait_for(r"mbox '.*/alice': nothing deleted: mbox .* shrank under us")
    assert mbox.read_bytes() == (record(FIRST) + record(SECOND))[: len(record(FIRST)) + 20]
    assert server.process.poll() is None


def test_mbox_rewritten_in_place_by_a_program_that_ignores_locks(tmp_path: Path) -> None:
    """Same inode, other bytes at the listed offsets: RETR must not serve them as the
    message it listed there."""
    (tmp_path / "mail").mkdir()
    mbox = tmp_path / "mail" / "alice"
    mbox.write_bytes(record(FIRST) + record(SECOND))
    server = serve(tmp_path, f"mbox:{tmp_path}/mail/%u")
    client = login(server, 2)
    assert list_sizes(client) == [len(crlf(FIRST)), len(crlf(SECOND))]
    with mbox.open("r+b") as rogue:  # e.g. another reader that removed the first one
        rogue.truncate(0)
        rogue.write(record(SECOND) + record(THIRD) + record(FIRST))
    assert client.command(b"RETR 1") == TEMP_READ
    assert client.command(b"RETR 2") == TEMP_READ
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (2 messages left)\r\n"
    again = login(server, 3)
    assert [retr_ok(again, n) for n in (1, 2, 3)] == [crlf(SECOND), crlf(THIRD), crlf(FIRST)]


def test_mbox_edited_in_place_between_sessions_past_what_the_index_checks(
    tmp_path: Path,
) -> None:
    """A mail reader changed a line deep in a message (same length, one line end more):
    same inode, same size, every record's first octets as indexed, so the next session
    lists the message with the size the index has (storage/mbox_index.py, as Dovecot's
    dirty syncs do). RETR must refuse it rather than send another size, drop the index,
    and the session after lists and serves the message as it now is."""
    (tmp_path / "mail").mkdir()
    mbox = tmp_path / "mail" / "alice"
    long_body = b"".join(b"line %04d of the second message\n" % n for n in range(100))
    second = b"From: b@example.org\nSubject: two\n\n" + long_body
    mbox.write_bytes(record(FIRST) + record(second))
    server = serve(tmp_path, f"mbox:{tmp_path}/mail/%u")
    client = login(server, 2)
    uidls = client.command(b"UIDL 2")
    assert client.command(b"QUIT").startswith(b"+OK")
    index = tmp_path / "mail" / "alice.popbox-index"
    assert index.exists()

    edited = second.replace(b"line 0090 of", b"line 0090\nof")  # 1,500 octets in
    assert len(edited) == len(second)
    inode = mbox.stat().st_ino
    with mbox.open("r+b") as reader:
        reader.write(record(FIRST) + record(edited))
    assert mbox.stat().st_ino == inode
    client = login(server, 2)
    assert list_sizes(client) == [len(crlf(FIRST)), len(crlf(second))]  # as indexed
    assert client.command(b"RETR 2") == TEMP_READ
    server.log.wait_for(r"message 2 changed under the session")
    assert not index.exists()
    assert client.command(b"QUIT").startswith(b"+OK")

    client = login(server, 2)
    assert list_sizes(client) == [len(crlf(FIRST)), len(crlf(edited))]
    assert retr_ok(client, 2) == crlf(edited)
    assert client.command(b"UIDL 2") == uidls  # the header is the same: so is the UIDL
    assert client.command(b"QUIT").startswith(b"+OK")
    assert index.exists()


def test_postgresql_restarted_mid_session(
    tmp_path: Path, pg_server: PostgresServer, pg_url: str
) -> None:
    """Not only stopped: restarted. The session's connection (and the advisory lock on
    it) is gone; the session gets [SYS/TEMP] and removes nothing, the maildrop is free for
    the next session at once, and pool and LMTP reconnect by themselves."""
    deliver(pg_url, "alice", [FIRST, SECOND])
    config = write_pg_config(tmp_path, pg_url, users=USERS, extra="[lmtp]\nport = 0\n")
    server = launch(tmp_path, config)
    old = login(server, 2)
    assert old.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    pg_server.stop("fast")
    pg_server.start()
    assert old.command(b"RETR 2") == TEMP_READ
    # The lock went with the session's connection: a new session gets in while the old
    # one is still connected (and can no longer change anything).
    new = login_eventually(server, 15)
    assert [retr_ok(new, n) for n in (1, 2)] == [crlf(FIRST), crlf(SECOND)]
    assert old.command(b"QUIT") == NOT_REMOVED
    assert new.command(b"DELE 2") == b"+OK message 2 deleted\r\n"
    assert new.command(b"QUIT") == b"+OK POP3 server signing off (1 messages left)\r\n"
    assert lmtp_deliver(server, THIRD.replace(b"\n", b"\r\n")) == (250, b"")
    last = login(server, 2)
    assert retr_ok(last, 1) == crlf(FIRST)
    assert last.command(b"QUIT").startswith(b"+OK")
    assert server.process.poll() is None


def login_eventually(server: PopboxServer, timeout: float) -> RawClient:
    """Log in until the pool has reconnected (its backoff: at most 4 s between tries)."""
    deadline = time.monotonic() + timeout
    while True:
        client = RawClient(server)
        reply = client.login("alice", "secret")
        if reply.startswith(b"+OK") or time.monotonic() > deadline:
            assert reply == b"+OK maildrop has 2 messages (%d octets)\r\n" % (
                len(crlf(FIRST)) + len(crlf(SECOND))
            )
            return client
        assert reply == b"-ERR [SYS/TEMP] maildrop is temporarily unavailable\r\n"
        client.close()
        time.sleep(0.1)

"""A full disk and a read-only store under the real `popbox serve` (issue 7, item 2).

The promise: a client gets `-ERR` (or `[SYS/TEMP]`) and the MTA a temporary failure, nothing
stored is lost or left half written, the server stays up, and once the disk has room (or
is writable) again the same server process works with no restart. The disk is a real
512 KiB tmpfs filled to the last page; a read-only store is a read-only bind mount of a
directory the test keeps writing through (tests/fault_helpers.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fault_helpers import (
    PAGE,
    TEMP_FAILURE,
    Mounts,
    fill,
    lmtp_deliver,
    mounts_for_test,
    popbox_deliver,
    retr,
    serve,
    tree,
)
from server_helpers import (
    PopboxServer,
    RawClient,
    crlf,
    lf_form,
    maildir_contents,
    write_maildir,
)

FIRST = b"From: a@example.org\nSubject: one\n\n.dotted first\n"
SECOND = b"From: b@example.org\nSubject: two\n\nsecond body\n"
# Bigger than what is left on the nearly full disk, so that the append runs out midway.
BIG = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 6000 + b"\r\n"
LATE = b"Subject: after the fault\r\n\r\nhello again\r\n"
ADDED = b"Return-Path: <sender@example.org>\r\nDelivered-To: alice\r\n"
MBOX = (
    b"From a@example.org Thu Nov 26 12:00:00 2026\n" + FIRST + b"\n"
    b"From b@example.org Thu Nov 26 12:01:00 2026\n" + SECOND + b"\n"
)
TEMP_LOGIN = b"-ERR [SYS/TEMP] maildrop is temporarily unavailable\r\n"
NOT_REMOVED = b"-ERR some deleted messages not removed\r\n"


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    with mounts_for_test() as made:
        yield made


def session(server: PopboxServer, greeting: bytes) -> RawClient:
    client = RawClient(server)
    assert client.login("alice", "secret") == greeting
    return client


def retr_all(client: RawClient, count: int) -> list[bytes]:
    bodies = []
    for number in range(1, count + 1):
        client.send(b"RETR %d\r\n" % number)
        bodies.append(retr(client.read_multiline()))
    return bodies


def still_serving(server: PopboxServer) -> None:
    assert server.process.poll() is None
    assert RawClient(server).command(b"QUIT") == b"+OK POP3 server signing off\r\n"


def test_maildir_on_a_full_disk(tmp_path: Path, mounts: Mounts) -> None:
    mail = mounts.tmpfs(tmp_path / "mail")
    maildir = mail / "alice" / "Maildir"
    write_maildir(maildir, [FIRST, SECOND])
    server = serve(tmp_path / "server", f"maildir:{mail}/%u/Maildir")
    session(server, b"+OK maildrop has 2 messages (102 octets)\r\n").command(b"QUIT")
    filler = fill(mail)

    # Delivery: a temporary failure, and nothing half written is left behind in tmp/.
    assert lmtp_deliver(server, BIG) == TEMP_FAILURE
    assert popbox_deliver(server, BIG) == 75  # EX_TEMPFAIL: the MTA retries
    assert sorted(path.name for path in (maildir / "tmp").iterdir()) == []
    assert maildir_contents(maildir) == [FIRST, SECOND]

    # Reading needs no room; UPDATE's unlinks neither (the cache write is best effort).
    client = session(server, b"+OK maildrop has 2 messages (102 octets)\r\n")
    assert retr_all(client, 2) == [crlf(FIRST), crlf(SECOND)]
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (1 messages left)\r\n"
    assert maildir_contents(maildir) == [SECOND]
    still_serving(server)

    # Room again: the same server delivers and serves, with no restart.
    filler.unlink()
    assert lmtp_deliver(server, LATE) == (250, b"")
    assert popbox_deliver(server, LATE) == 0
    client = session(server, b"+OK maildrop has 3 messages (%d octets)\r\n" % (50 + 97 + 41))
    assert retr_all(client, 3) == [crlf(SECOND), ADDED + LATE, LATE]
    assert client.command(b"QUIT").startswith(b"+OK")
    assert sorted(path.name for path in (maildir / "tmp").iterdir()) == []


def test_mbox_on_a_full_disk(tmp_path: Path, mounts: Mounts) -> None:
    mail = mounts.tmpfs(tmp_path / "mail")
    mbox = mail / "alice"
    mbox.write_bytes(MBOX)
    server = serve(tmp_path / "server", f"mbox:{mail}/%u")
    # Room for the dotlock and the append journal (a page each), not for the message:
    # the append runs out of space midway and is cut back.
    filler = fill(mail, leave=2 * PAGE)
    assert lmtp_deliver(server, BIG) == TEMP_FAILURE
    assert mbox.read_bytes() == MBOX
    assert popbox_deliver(server, BIG) == 75
    assert mbox.read_bytes() == MBOX

    # A session that opened while there was room; then the disk fills up. UPDATE's
    # rewrite (a temporary file renamed over the mbox) fails cleanly: the mbox stays.
    filler.unlink()
    client = session(server, b"+OK maildrop has 2 messages (102 octets)\r\n")
    filler = fill(mail)
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"QUIT") == NOT_REMOVED
    server.log.wait_for(r"mbox '.*/alice': nothing deleted: cannot rewrite mbox .*No space left")
    assert mbox.read_bytes() == MBOX
    # No temporary file, no lock left; the index the session wrote at login stays.
    assert sorted(tree(mail)) == ["alice", "alice.popbox-index", "filler"]
    # A new session needs room for its dotlock (the last page, freed by the one that
    # ended, is taken now): [SYS/TEMP], and still nothing lost.
    last_page = fill(mail, name="last-page")
    session(server, TEMP_LOGIN)
    server.log.wait_for(r"cannot create dotlock .*/alice\.lock'?: No space left on device")
    assert mbox.read_bytes() == MBOX
    still_serving(server)

    filler.unlink()
    last_page.unlink()
    assert lmtp_deliver(server, LATE) == (250, b"")
    client = session(server, b"+OK maildrop has 3 messages (%d octets)\r\n" % (102 + 97))
    assert retr_all(client, 3) == [crlf(FIRST), crlf(SECOND), ADDED + LATE]
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (2 messages left)\r\n"
    assert mbox.read_bytes().startswith(MBOX[MBOX.index(b"From b@") :])


def test_maildir_on_a_read_only_store(tmp_path: Path, mounts: Mounts) -> None:
    """Reading needs no write: login (the lock file exists), STAT, RETR; DELE is kept
    and QUIT says so; deliveries fail for now. Made writable again, everything works."""
    source = tmp_path / "rw"
    write_maildir(source / "alice" / "Maildir", [FIRST, SECOND])
    view = mounts.bind(source, tmp_path / "ro")
    server = serve(tmp_path / "server", f"maildir:{view}/%u/Maildir")
    session(server, b"+OK maildrop has 2 messages (102 octets)\r\n").command(b"QUIT")
    before = tree(source)
    mounts.remount(view, "ro")

    client = session(server, b"+OK maildrop has 2 messages (102 octets)\r\n")
    assert retr_all(client, 2) == [crlf(FIRST), crlf(SECOND)]
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"QUIT") == NOT_REMOVED
    assert lmtp_deliver(server, LATE) == TEMP_FAILURE
    assert popbox_deliver(server, LATE) == 75
    assert tree(source) == before
    still_serving(server)

    mounts.remount(view, "rw")
    assert lmtp_deliver(server, LATE) == (250, b"")
    client = session(server, b"+OK maildrop has 3 messages (%d octets)\r\n" % (102 + 97))
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (2 messages left)\r\n"
    assert maildir_contents(source / "alice" / "Maildir") == [SECOND, lf_form(ADDED + LATE)]


def test_mbox_on_a_read_only_store(tmp_path: Path, mounts: Mounts) -> None:
    """An mbox session must take the dotlock other mail programs respect (they may write
    through another mount): without it, [SYS/TEMP]; nothing is touched."""
    source = tmp_path / "rw"
    source.mkdir()
    (source / "alice").write_bytes(MBOX)
    view = mounts.bind(source, tmp_path / "ro")
    server = serve(tmp_path / "server", f"mbox:{view}/%u")
    mounts.remount(view, "ro")

    session(server, TEMP_LOGIN)
    assert lmtp_deliver(server, LATE) == TEMP_FAILURE
    assert popbox_deliver(server, LATE) == 75
    assert tree(source) == {"alice": MBOX}
    still_serving(server)

    mounts.remount(view, "rw")
    assert lmtp_deliver(server, LATE) == (250, b"")
    client = session(server, b"+OK maildrop has 3 messages (%d octets)\r\n" % (102 + 97))
    assert retr_all(client, 3) == [crlf(FIRST), crlf(SECOND), ADDED + LATE]
    assert client.command(b"QUIT").startswith(b"+OK")

"""`popbox serve` on PostgreSQL end to end: poplib and raw sockets against the real server,
a real PostgreSQL behind it (tests/pg_helpers.py), and the database itself as the oracle.

Every server's log is checked for the database password at the end: it must never show.
"""

from __future__ import annotations

import poplib
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pg_helpers import (
    PASSWORD,
    PostgresServer,
    add_users,
    deliver,
    write_pg_config,
)
from popbox.cli import main
from server_helpers import (
    PopboxServer,
    RawClient,
    client_corpus,
    close_everything_started,
    crlf,
    launch,
    rss_kib,
    write_maildir,
)

Serve = Callable[[Path], PopboxServer]
IN_USE = b"-ERR [IN-USE] maildrop is locked by another session\r\n"


@pytest.fixture
def serve() -> Iterator[Serve]:
    """serve(config) -> a running `popbox serve --config config`."""
    started: list[PopboxServer] = []

    def start(config: Path) -> PopboxServer:
        server = launch(config.parent, config)
        started.append(server)
        return server

    yield start
    close_everything_started()
    for server in started:
        assert PASSWORD not in "\n".join(server.log.lines)


def login_eventually(server: PopboxServer, user: str, password: str, timeout: float) -> bytes:
    """Log in again and again until the reply is +OK (or the deadline passes)."""
    deadline = time.monotonic() + timeout
    while True:
        client = RawClient(server)
        reply = client.login(user, password)
        if reply.startswith(b"+OK") or time.monotonic() > deadline:
            return reply
        client.close()
        time.sleep(0.1)


def test_poplib_reads_every_message_byte_for_byte_and_update_deletes(
    serve: Serve, tmp_path: Path, pg_server: PostgresServer, pg_url: str, pg_database: str
) -> None:
    corpus = client_corpus()  # the 2 MiB message spans 32 blocks
    deliver(pg_url, "alice", corpus)
    server = serve(write_pg_config(tmp_path, pg_url, users={"alice": "{PLAIN}secret"}))
    client = poplib.POP3(server.host, server.port, timeout=10)
    client.user("alice")
    total = sum(len(crlf(m)) for m in corpus)
    assert client.pass_("secret") == b"+OK maildrop has 8 messages (%d octets)" % total
    assert client.stat() == (8, total)
    _, listing, _ = client.list()
    assert listing == [b"%d %d" % (n, len(crlf(m))) for n, m in enumerate(corpus, 1)]
    for number, stored in enumerate(corpus, 1):
        status, lines, _ = client.retr(number)
        assert status == b"+OK %d octets" % len(crlf(stored))
        assert b"".join(line + b"\r\n" for line in lines) == crlf(stored)
    _, uidls, _ = client.uidl()
    rows = pg_server.sql("SELECT id, unique_id FROM messages ORDER BY id", database=pg_database)
    assert uidls == [b"%d %s" % (n, row["unique_id"].encode()) for n, row in enumerate(rows, 1)]
    client.dele(2)
    client.dele(6)  # the big one, with all its blocks
    assert client.quit() == b"+OK POP3 server signing off (6 messages left)"
    server.log.wait_for(
        r"logout user=alice client=127\.0\.0\.1 reason=quit top=0/0 retr=8/\d+ del=2/8 "
    )
    ids = [row["id"] for row in rows]
    left = pg_server.sql("SELECT id FROM messages ORDER BY id", database=pg_database)
    assert [row["id"] for row in left] == [ids[0], *ids[2:5], *ids[6:]]
    orphans = "SELECT count(*) FROM message_blocks WHERE message_id = $1 OR message_id = $2"
    assert pg_server.sql(orphans, ids[1], ids[5], database=pg_database) == [(0,)]


def test_update_failing_in_the_database_removes_nothing(
    serve: Serve, tmp_path: Path, pg_server: PostgresServer, pg_url: str, pg_database: str
) -> None:
    """UPDATE is one transaction: a failure on the second message keeps the first too."""
    deliver(pg_url, "alice", [b"Subject: a\n\na\n", b"Subject: b\n\nkeep me\n"])
    pg_server.script(
        """CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF OLD.octets = 23 THEN RAISE 'refused'; END IF; RETURN OLD; END $$;
        CREATE TRIGGER refuse BEFORE DELETE ON messages FOR EACH ROW EXECUTE FUNCTION refuse();
        """,
        database=pg_database,
    )
    server = serve(write_pg_config(tmp_path, pg_url, users={"alice": "{PLAIN}secret"}))
    client = RawClient(server)
    assert client.login("alice", "secret") == b"+OK maildrop has 2 messages (40 octets)\r\n"
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"DELE 2") == b"+OK message 2 deleted\r\n"
    assert client.command(b"QUIT") == b"-ERR some deleted messages not removed\r\n"
    assert pg_server.sql("SELECT count(*) FROM messages", database=pg_database) == [(2,)]


def test_big_message_streams_without_being_held(serve: Serve, tmp_path: Path, pg_url: str) -> None:
    """A client that does not read its RETR: the server does not fetch the message ahead
    (it reads a few blocks per query, after the socket drained); then it arrives exact."""
    big = b"Subject: big\r\n\r\n" + (b"z" * 76 + b"\r\n") * 150_000  # about 12 MB
    deliver(pg_url, "alice", [big])
    server = serve(write_pg_config(tmp_path, pg_url, users={"alice": "{PLAIN}secret"}))
    stalled = RawClient(server, timeout=30)
    stalled.login("alice", "secret")
    baseline = rss_kib(server.process.pid)
    stalled.send(b"RETR 1\r\n")
    other = RawClient(server)  # meanwhile, others are served
    assert other.command(b"QUIT").startswith(b"+OK")
    assert rss_kib(server.process.pid) - baseline < 8_000
    assert stalled.read_multiline() == b"+OK %d octets\r\n%s.\r\n" % (len(big), big)


def test_in_use_across_two_servers_and_released_when_one_is_killed(
    serve: Serve, tmp_path: Path, pg_url: str
) -> None:
    deliver(pg_url, "alice", [b"Subject: x\n\nx\n"])
    users = {"alice": "{PLAIN}secret"}
    node_a = serve(write_pg_config(tmp_path / "a", pg_url, users=users))
    node_b = serve(write_pg_config(tmp_path / "b", pg_url, users=users))
    holder = RawClient(node_a)
    assert holder.login("alice", "secret").startswith(b"+OK maildrop has 1 messages")
    assert RawClient(node_b).login("alice", "secret") == IN_USE
    node_b.log.wait_for(r"login failed user=alice client=127\.0\.0\.1 mechanism=USER reason=in-use")
    node_a.kill()  # SIGKILL: no cleanup; PostgreSQL ends its connection, and the lock
    assert login_eventually(node_b, "alice", "secret", 15).startswith(b"+OK maildrop has 1")


def test_users_from_the_database_and_lmtp_delivery(
    serve: Serve, tmp_path: Path, pg_server: PostgresServer, pg_url: str, pg_database: str
) -> None:
    add_users(pg_url, {"alice": ("secret", "PLAIN"), "bob": ("bob's pw", "SSHA512")})
    # alice's own EXPIRE (RFC 2449 section 6.7): a column, like userdb_expire_days.
    pg_server.sql("UPDATE users SET expire_days = 0 WHERE name = 'alice'", database=pg_database)
    config = write_pg_config(tmp_path, pg_url, users_url=pg_url, extra="[lmtp]\nport = 0\n")
    server = serve(config)
    port = int(server.log.wait_for(r"lmtp listening on 127\.0\.0\.1:(\d+)").group(1))
    message = b"From: s@example.org\r\nSubject: lmtp\r\n\r\n.leading dot\r\nbare\rcr\r\nend\r\n"
    with smtplib.LMTP("127.0.0.1", port) as lmtp:
        refused = lmtp.sendmail("s@example.org", ["alice", "bob", "nobody"], message)
        assert refused == {"nobody": (550, b"5.1.1 <nobody>: user unknown")}
        assert lmtp.getreply()[0] == 250  # bob's reply (RFC 2033: one per recipient)
    # USER/PASS and APOP for the PLAIN user, USER/PASS for the hashed one.
    alice = poplib.POP3(server.host, server.port, timeout=10)
    assert alice.apop("alice", "secret").startswith(b"+OK maildrop has 1 messages")
    assert alice.capa()["EXPIRE"] == ["0"]
    top = b"Return-Path: <s@example.org>\r\nDelivered-To: %s\r\n"
    _, lines, _ = alice.retr(1)
    assert b"".join(line + b"\r\n" for line in lines) == top % b"alice" + message
    assert alice.quit() == b"+OK POP3 server signing off (0 messages left)"  # expired
    bob = RawClient(server)
    assert bob.login("bob", "bob's pw").startswith(b"+OK maildrop has 1 messages")
    bob.send(b"RETR 1\r\n")
    body = top % b"bob" + message.replace(b"\r\n.", b"\r\n..")
    assert bob.read_multiline() == b"+OK %d octets\r\n%s.\r\n" % (len(top % b"bob" + message), body)
    wrong = RawClient(server)
    assert wrong.login("bob", "wrong") == b"-ERR [AUTH] invalid user name or password\r\n"

    # `popbox deliver` into the same database: exit statuses per sysexits.
    def popbox_deliver(*users: str) -> int:
        command = [sys.executable, "-m", "popbox", "deliver", "--config", str(config), *users]
        done = subprocess.run(command, input=message, capture_output=True, timeout=30, check=False)
        assert PASSWORD.encode() not in done.stderr
        return done.returncode

    assert popbox_deliver("alice") == 0
    assert popbox_deliver("alice", "nobody") == 67  # nobody gets it, alice neither
    again = RawClient(server)
    assert again.login("alice", "secret").startswith(b"+OK maildrop has 1 messages")


def test_database_unreachable_from_the_start(serve: Serve, tmp_path: Path) -> None:
    """Nothing listens there: the server starts anyway (with a warning) and answers
    [SYS/TEMP]; `popbox deliver` exits 75 so the MTA retries."""
    config = write_pg_config(
        tmp_path,
        f"postgresql://popbox:{PASSWORD}@127.0.0.1:1/popbox",
        users={"alice": "{PLAIN}secret"},
    )
    server = serve(config)
    server.log.wait_for(
        r"WARNING popbox\.server: mail\.location: database postgresql://popbox:\*\*\*@127\.0\.0\.1:1/"
        r"popbox unreachable at start \(ConnectionRefusedError: .*\); logins get -ERR"
    )
    client = RawClient(server)
    assert client.login("alice", "secret") == (
        b"-ERR [SYS/TEMP] maildrop is temporarily unavailable\r\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "popbox", "deliver", "--config", str(config), "alice"],
        input=b"Subject: x\n\nx\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 75
    assert b"alice: temporary failure: postgresql://popbox:***@127.0.0.1:1/popbox" in done.stderr
    assert PASSWORD.encode() not in done.stderr


def test_import_keeps_the_uidls_the_maildir_served(
    serve: Serve, tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = client_corpus()[:4]
    maildir = tmp_path / "old" / "mail" / "alice" / "Maildir"
    write_maildir(maildir, corpus)
    users = {"alice": "{PLAIN}secret"}
    old = serve(write_pg_config(tmp_path / "old", "maildir:mail/%u/Maildir", users=users))
    before = uidls_and_messages(old)
    old.stop()
    config = write_pg_config(tmp_path / "new", pg_url, users=users)
    command = ["import", "--config", str(config), "--from", f"maildir:{maildir}", "alice"]
    assert main(command) == 0
    assert capsys.readouterr().out == (
        f"imported 4 messages from maildir:{maildir} into the maildrop of alice (0 already there)\n"
    )
    assert main(command) == 0
    assert "imported 0 messages" in capsys.readouterr().out  # nothing twice
    new = serve(config)
    assert uidls_and_messages(new) == before
    assert len(list((maildir / "new").iterdir()) + list((maildir / "cur").iterdir())) == 4


def uidls_and_messages(server: PopboxServer) -> list[tuple[bytes, bytes]]:
    client = poplib.POP3(server.host, server.port, timeout=10)
    client.user("alice")
    client.pass_("secret")
    _, uidls, _ = client.uidl()
    found = []
    for line in uidls:
        number, uidl = line.split()
        found.append((uidl, b"\r\n".join(client.retr(int(number))[1])))
    client.quit()
    return found


def test_database_outage_is_sys_temp_and_the_server_recovers(
    serve: Serve, tmp_path: Path, pg_server: PostgresServer, pg_url: str
) -> None:
    add_users(pg_url, {"alice": ("secret", "PLAIN")})
    deliver(pg_url, "alice", [b"Subject: one\n\nkept\n", b"Subject: two\n\nkept\n"])
    server = serve(write_pg_config(tmp_path, pg_url, users_url=pg_url))
    session = RawClient(server)
    assert session.login("alice", "secret").startswith(b"+OK maildrop has 2 messages")
    assert session.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    pg_server.stop("fast")
    try:
        # The session's connection is gone: reading fails before +OK, deleting deletes nothing.
        assert session.command(b"RETR 2") == b"-ERR [SYS/TEMP] message cannot be read now\r\n"
        assert session.command(b"QUIT") == b"-ERR some deleted messages not removed\r\n"
        newcomer = RawClient(server)
        reply = newcomer.login("alice", "secret")
        assert reply == b"-ERR [SYS/TEMP] authentication is temporarily unavailable\r\n"
        server.log.wait_for(
            r"database postgresql://popbox:\*\*\*@127\.0\.0\.1:\d+/\w+ unreachable: "
        )
        assert server.process.poll() is None  # still up
    finally:
        pg_server.start()
    reply = login_eventually(server, "alice", "secret", 20)
    assert reply == b"+OK maildrop has 2 messages (44 octets)\r\n"  # nothing was lost
    server.log.wait_for(r"database postgresql://popbox:\*\*\*@\S+ reachable again")

"""`popbox serve` end to end with Python's poplib and a raw socket: exact bytes, files on disk."""

from __future__ import annotations

import os
import poplib
import signal
import time

from conftest import Starter

from server_helpers import RawClient, crlf, launch

MESSAGES = [
    b"From: a@example.org\r\nSubject: crlf\r\n\r\nplain CRLF body\r\n",
    b"From: b@example.org\nSubject: lf\n\nLF body\n.leading dot\n..two dots\n.\nend\n",
    b"Subject: no final newline\n\nlast line without newline",
    b".From: dot at byte 0\r\n\r\nbody\r\n",
    b"Subject: empty body\r\n\r\n",
    b"Subject: 8bit\n\n\xc3\xa9t\xc3\xa9 \xff\xfe latin and utf-8\n" + b"x" * 998 + b"\n",
]
USERS = {"alice": "{PLAIN}secret", "bob": "{PLAIN}bob pass"}


def test_poplib_downloads_every_message_byte_for_byte(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES})
    client = poplib.POP3(server.host, server.port, timeout=10)
    client.user("alice")
    assert client.pass_("secret") == b"+OK maildrop has 6 messages (%d octets)" % sum(
        len(crlf(m)) for m in MESSAGES
    )
    assert client.stat() == (6, sum(len(crlf(m)) for m in MESSAGES))
    _, listing, _ = client.list()
    assert listing == [b"%d %d" % (i, len(crlf(m))) for i, m in enumerate(MESSAGES, 1)]
    for number, stored in enumerate(MESSAGES, 1):
        status, lines, _octets = client.retr(number)
        assert status == b"+OK %d octets" % len(crlf(stored))
        assert b"".join(line + b"\r\n" for line in lines) == crlf(stored)
    _, uidls, _ = client.uidl()
    names = sorted(os.listdir(server.maildir("alice") / "new"))
    assert uidls == [b"%d %s" % (i, n.encode()) for i, n in enumerate(names, 1)]
    assert client.quit() == b"+OK POP3 server signing off (6 messages left)"
    assert len(os.listdir(server.maildir("alice") / "new")) == 6


def test_quit_commits_marked_messages(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES[:3]})
    names = sorted(os.listdir(server.maildir("alice") / "new"))
    client = RawClient(server)
    assert client.login("alice", "secret").startswith(b"+OK maildrop has 3 messages")
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"DELE 3") == b"+OK message 3 deleted\r\n"
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (1 messages left)\r\n"
    assert client.read_until_closed() == b""
    assert sorted(os.listdir(server.maildir("alice") / "new")) == [names[1]]
    server.log.wait_for(
        r"logout user=alice client=127\.0\.0\.1 reason=quit top=0/0 retr=0/0 del=2/3 size=190 "
    )


def test_dropped_connection_deletes_nothing_and_releases_lock(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES[:3]})
    before = sorted(os.listdir(server.maildir("alice") / "new"))
    client = RawClient(server)
    client.login("alice", "secret")
    for n in (1, 2, 3):
        client.command(b"DELE %d" % n)
    client.close()
    server.log.wait_for(r"logout user=alice .*reason=disconnected")
    assert sorted(os.listdir(server.maildir("alice") / "new")) == before
    again = RawClient(server)
    assert again.login("alice", "secret").startswith(b"+OK maildrop has 3 messages")


def test_maildrop_lock_holds_across_two_processes(popbox: Starter) -> None:
    first = popbox(USERS, {"alice": MESSAGES[:2]})
    second = launch(first.root, first.root / "popbox.toml")
    try:
        holder = RawClient(first)
        assert holder.login("alice", "secret").startswith(b"+OK")
        other = RawClient(second)
        assert other.login("alice", "secret") == (
            b"-ERR [IN-USE] maildrop is locked by another session\r\n"
        )
        # Another user's maildrop is not affected.
        assert RawClient(second).login("bob", "bob pass").startswith(b"+OK maildrop has 0")
        assert holder.command(b"QUIT").startswith(b"+OK")
        holder.read_until_closed()
        assert other.login("alice", "secret").startswith(b"+OK maildrop has 2 messages")
    finally:
        assert second.stop() == 0


def test_snapshot_is_fixed_at_login(popbox: Starter) -> None:
    from server_helpers import write_maildir  # noqa: PLC0415

    server = popbox(USERS, {"alice": MESSAGES[:1]})
    client = RawClient(server)
    client.login("alice", "secret")
    write_maildir(server.maildir("alice"), [b"Subject: late\r\n\r\nlate\r\n"], start=50)
    assert client.command(b"STAT") == b"+OK 1 %d\r\n" % len(crlf(MESSAGES[0]))
    client.command(b"QUIT")
    later = RawClient(server)
    assert later.login("alice", "secret").startswith(b"+OK maildrop has 2 messages")


def test_message_vanished_after_login(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES[:2]})
    client = RawClient(server)
    client.login("alice", "secret")
    first = sorted(os.listdir(server.maildir("alice") / "new"))[0]
    os.unlink(server.maildir("alice") / "new" / first)
    assert client.command(b"RETR 1") == b"-ERR message 1 no longer exists\r\n"
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (1 messages left)\r\n"


def test_message_moved_to_cur_with_flags_is_still_served(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES[:1]})
    client = RawClient(server)
    client.login("alice", "secret")
    uidl = client.command(b"UIDL 1")
    name = os.listdir(server.maildir("alice") / "new")[0]
    os.rename(
        server.maildir("alice") / "new" / name, server.maildir("alice") / "cur" / f"{name}:2,S"
    )
    client.send(b"RETR 1\r\n")
    assert client.read_multiline() == b"+OK %d octets\r\n%s.\r\n" % (
        len(crlf(MESSAGES[0])),
        crlf(MESSAGES[0]),
    )
    client.command(b"QUIT")
    again = RawClient(server)
    again.login("alice", "secret")
    assert again.command(b"UIDL 1") == uidl


def test_pipelined_commands_over_tcp(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES[:2]})
    client = RawClient(server)
    client.send(b"USER alice\r\nPASS secret\r\nSTAT\r\nLIST 2\r\nRETR 2\r\nNOOP\r\nQUIT\r\n")
    size1, size2 = len(crlf(MESSAGES[0])), len(crlf(MESSAGES[1]))
    stuffed = crlf(MESSAGES[1]).replace(b"\r\n.", b"\r\n..")
    assert client.read_until_closed() == (
        b"+OK send PASS\r\n"
        b"+OK maildrop has 2 messages (%d octets)\r\n"
        % (size1 + size2)
        + b"+OK 2 %d\r\n" % (size1 + size2)
        + b"+OK 2 %d\r\n" % size2
        + b"+OK %d octets\r\n" % size2
        + stuffed
        + b".\r\n+OK\r\n+OK POP3 server signing off (2 messages left)\r\n"
    )


def test_wrong_password_and_unknown_user_same_reply_same_delay(popbox: Starter) -> None:
    server = popbox(USERS)
    timings = {}
    for user, password in (("alice", "wrong"), ("nobody", "wrong"), ("../etc", "x")):
        client = RawClient(server)
        client.command(b"USER " + user.encode())
        started = time.monotonic()
        assert client.command(b"PASS " + password.encode()) == (
            b"-ERR [AUTH] invalid user name or password\r\n"
        )
        timings[user] = time.monotonic() - started
    assert all(0.3 <= t < 2.0 for t in timings.values()), timings
    assert not (server.root / "mail" / "nobody").exists()
    assert not (server.root / "etc").exists()


def test_logs_name_events_and_never_secrets(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES[:1]})
    client = RawClient(server)
    client.login("alice", "wrong-Pa55")
    client.login("alice", "secret")
    client.send(b"RETR 1\r\n")
    client.read_multiline()
    client.command(b"DELE 1")
    client.command(b"QUIT")
    server.log.wait_for(
        r"logout user=alice client=127\.0\.0\.1 reason=quit top=\d+/\d+ retr=1/\d+ del=1/"
    )
    server.log.wait_for(r"login failed user=alice client=127\.0\.0\.1 mechanism=USER")
    server.log.wait_for(r"login ok user=alice client=127\.0\.0\.1 mechanism=USER messages=1")
    text = "\n".join(server.log.lines)
    assert "wrong-Pa55" not in text
    assert "secret" not in text


def test_sigterm_closes_sessions_without_update(popbox: Starter) -> None:
    # shutdown_timeout = 0 (the test default): idle sessions are told and closed at once.
    server = popbox(USERS, {"alice": MESSAGES[:3]})
    before = sorted(os.listdir(server.maildir("alice") / "new"))
    client = RawClient(server)
    client.login("alice", "secret")
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    server.process.send_signal(signal.SIGTERM)
    assert client.read_until_closed() == b"-ERR [SYS/TEMP] server shutting down\r\n"
    assert server.process.wait(15) == 0
    assert sorted(os.listdir(server.maildir("alice") / "new")) == before
    server.log.wait_for(r"logout user=alice .*reason=shutdown")
    # The lock died with the session: a new server logs straight in.
    restarted = launch(server.root, server.root / "popbox.toml")
    try:
        assert RawClient(restarted).login("alice", "secret").startswith(b"+OK maildrop has 3")
    finally:
        assert restarted.stop(signal.SIGINT) == 0


def test_autologout_closes_silently_without_update(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES[:2]}, idle_timeout=1)
    server.log.wait_for(r"idle_timeout = 1 s is below RFC 1939 section 3's minimum")
    before = sorted(os.listdir(server.maildir("alice") / "new"))
    client = RawClient(server)
    client.login("alice", "secret")
    client.command(b"DELE 1")
    started = time.monotonic()
    assert client.read_until_closed() == b""
    assert time.monotonic() - started >= 0.9
    server.log.wait_for(r"autologout user=alice")
    assert sorted(os.listdir(server.maildir("alice") / "new")) == before

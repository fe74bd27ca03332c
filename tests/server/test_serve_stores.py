"""The mail stores and delivery through the real `popbox serve`: mbox, LMTP (swaks and
smtplib), `popbox deliver`, EXPIRE, UIDL formats and client workarounds."""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import Starter

from server_helpers import PopboxServer, RawClient, crlf, launch

USERS = {"alice": "{PLAIN}secret", "bob": "{PLAIN}bobpw"}
MESSAGE = b"From: sender@example.org\nSubject: hello\n\nFrom the mbox's point of view\n.dot\n"


def relocate(server: PopboxServer, location: str, mail_extra: str = "", extra: str = "") -> Path:
    """Rewrite the generated config's mail location (and more keys); returns it."""
    config = server.root / "popbox.toml"
    text = config.read_text().replace('"maildir:mail/%u/Maildir"\n', f'"{location}"\n' + mail_extra)
    config.write_text(text + extra)
    return config


def mbox_server(popbox: Starter, mail_extra: str = "", extra: str = "") -> PopboxServer:
    server = popbox(USERS)
    server.stop()
    config = relocate(server, "mbox:mail/%u", 'mbox_format = "mboxrd"\n' + mail_extra, extra)
    (server.root / "mail").mkdir()
    return launch(server.root, config)


def lmtp_port(server: PopboxServer) -> int:
    return int(server.log.wait_for(r"lmtp listening on 127\.0\.0\.1:(\d+)").group(1))


def retr_all(client: RawClient) -> list[bytes]:
    client.send(b"STAT\r\n")
    count = int(client.read_line().split()[1])
    bodies = []
    for number in range(1, count + 1):
        client.send(b"RETR %d\r\n" % number)
        reply = client.read_multiline()
        bodies.append(reply.split(b"\r\n", 1)[1][: -len(b".\r\n")].replace(b"\r\n..", b"\r\n."))
    return bodies


def test_mbox_store_served_and_updated(popbox: Starter) -> None:
    server = mbox_server(popbox)
    mbox = server.root / "mail" / "alice"
    mbox.write_bytes(
        b"From a@example.org Thu Nov 26 12:00:00 2026\nSubject: one\n\n>From quoted\n\n"
        b"From b@example.org Thu Nov 26 12:01:00 2026\nSubject: two\n\nbody two\n\n"
    )
    os.chmod(mbox, 0o640)
    client = RawClient(server)
    assert client.login("alice", "secret") == b"+OK maildrop has 2 messages (55 octets)\r\n"
    assert retr_all(client) == [
        b"Subject: one\r\n\r\nFrom quoted\r\n",  # mboxrd: one level of quoting undone
        b"Subject: two\r\n\r\nbody two\r\n",
    ]
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (1 messages left)\r\n"
    assert mbox.read_bytes() == (
        b"From b@example.org Thu Nov 26 12:01:00 2026\nSubject: two\n\nbody two\n\n"
    )
    assert mbox.stat().st_mode & 0o777 == 0o640


def test_lmtp_delivery_waits_for_the_mbox_session(popbox: Starter) -> None:
    server = mbox_server(popbox, extra="[lmtp]\nport = 0\n")
    port = lmtp_port(server)
    session = RawClient(server)
    assert session.login("alice", "secret") == b"+OK maildrop has 0 messages (0 octets)\r\n"
    results: dict[str, object] = {}

    def deliver() -> None:
        with smtplib.LMTP("127.0.0.1", port) as lmtp:
            # SMTP data is CRLF text (RFC 5321 section 2.3.8): no bare LFs on the wire.
            data = MESSAGE.replace(b"\n", b"\r\n")
            results["refused"] = lmtp.sendmail("sender@example.org", ["alice"], data)

    thread = threading.Thread(target=deliver)
    thread.start()
    assert session.command(b"STAT") == b"+OK 0 0\r\n"  # the snapshot does not change
    session.command(b"QUIT")
    thread.join(30)
    assert results == {"refused": {}}
    after = RawClient(server)
    assert after.login("alice", "secret").startswith(b"+OK maildrop has 1 messages")
    expected = b"Return-Path: <sender@example.org>\r\nDelivered-To: alice\r\n" + crlf(MESSAGE)
    assert retr_all(after) == [expected]


def test_an_mbox_user_named_like_a_dotlock_gets_no_mail_and_takes_none(
    popbox: Starter,
) -> None:
    """With mbox:mail/%u, a user "alice.lock" would have alice's dotlock for a mailbox:
    alice's next session removed it as stale. Such a user is refused, by LMTP (a
    permanent 550, the MTA bounces) and at login, and alice's mail stays hers."""
    server = popbox(USERS | {"alice.lock": "{PLAIN}lockpw"})
    server.stop()
    config = relocate(server, "mbox:mail/%u", extra="[lmtp]\nport = 0\n")
    (server.root / "mail").mkdir()
    server = launch(server.root, config)
    port = lmtp_port(server)
    data = MESSAGE.replace(b"\n", b"\r\n")
    with smtplib.LMTP("127.0.0.1", port) as lmtp:
        assert lmtp.sendmail("sender@example.org", ["alice"], data) == {}
        with pytest.raises(smtplib.SMTPResponseException) as refused:
            lmtp.sendmail("sender@example.org", ["alice.lock"], data)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error == b"5.1.1 <alice.lock>: no maildrop for this user"
    assert os.listdir(server.root / "mail") == ["alice"]
    server.log.wait_for(r"alice\.lock.*named like another's '\.lock' file")
    client = RawClient(server)
    client.send(b"USER alice.lock\r\n")
    assert client.read_line() == b"+OK send PASS\r\n"
    client.send(b"PASS lockpw\r\n")
    assert client.read_line().startswith(b"-ERR [SYS/PERM] ")
    owner = RawClient(server)
    assert owner.login("alice", "secret").startswith(b"+OK maildrop has 1 messages")
    assert owner.command(b"QUIT").startswith(b"+OK")
    assert "alice.lock" not in os.listdir(server.root / "mail")


def test_lmtp_swaks_into_maildir_then_pop3(popbox: Starter) -> None:
    server = popbox(USERS, extra="[lmtp]\nport = 0\n")
    port = lmtp_port(server)
    result = subprocess.run(
        [
            "swaks",
            "--protocol",
            "LMTP",
            "--server",
            "127.0.0.1",
            "--port",
            str(port),
            "--from",
            "sender@example.org",
            "--to",
            "alice,nobody",
            "--data",
            "-",
            "--hide-all",
        ],
        # swaks ends DATA with "\r\n.\r\n" itself: give it the text without the last CRLF.
        input=MESSAGE.rstrip(b"\n").replace(b"\n", b"\r\n"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr  # delivered to at least one recipient
    assert not (server.root / "mail" / "nobody").exists()
    names = os.listdir(server.maildir("alice") / "new")
    assert len(names) == 1
    assert re.fullmatch(r"\d+\.M\d+P\d+Q\d+\.[^,]+,S=\d+,W=\d+", names[0])
    client = RawClient(server)
    client.login("alice", "secret")
    expected = b"Return-Path: <sender@example.org>\r\nDelivered-To: alice\r\n" + crlf(MESSAGE)
    assert retr_all(client) == [expected]
    size = int(names[0].rsplit(",W=", 1)[1])
    assert client.command(b"LIST 1") == b"+OK 1 %d\r\n" % size == b"+OK 1 %d\r\n" % len(expected)


def test_popbox_deliver_command(popbox: Starter) -> None:
    server = popbox(USERS)
    config = str(server.root / "popbox.toml")

    def deliver(*users: str) -> int:
        command = [sys.executable, "-m", "popbox", "deliver", "--config", config, *users]
        done = subprocess.run(command, input=MESSAGE, capture_output=True, timeout=30, check=False)
        return done.returncode

    assert deliver("alice") == 0
    assert deliver("nobody") == 67  # EX_NOUSER
    assert deliver("alice", "nobody") == 67  # nobody gets it: the MTA bounces or retries
    client = RawClient(server)
    client.login("alice", "secret")
    assert retr_all(client) == [crlf(MESSAGE)]


def test_expire_zero_removes_retrieved_messages_at_update(popbox: Starter) -> None:
    mail = {"alice": [b"Subject: %d\r\n\r\nbody\r\n" % n for n in range(3)]}
    server = popbox(USERS, mail, mail_extra="expire_days = 0\n")
    client = RawClient(server)
    client.send(b"CAPA\r\n")
    assert b"EXPIRE 0\r\n" in client.read_multiline()
    client.login("alice", "secret")
    client.send(b"RETR 2\r\n")
    client.read_multiline()
    client.send(b"TOP 3 0\r\n")  # TOP is not a retrieval
    client.read_multiline()
    assert client.command(b"QUIT") == b"+OK POP3 server signing off (2 messages left)\r\n"
    again = RawClient(server)
    assert again.login("alice", "secret").startswith(b"+OK maildrop has 2 messages")
    assert retr_all(again) == [b"Subject: 0\r\n\r\nbody\r\n", b"Subject: 2\r\n\r\nbody\r\n"]


def test_expire_days_keeps_recently_retrieved_mail(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": [b"Subject: x\r\n\r\nx\r\n"]}, mail_extra="expire_days = 7\n")
    for _ in range(2):
        client = RawClient(server)
        client.login("alice", "secret")
        assert retr_all(client) == [b"Subject: x\r\n\r\nx\r\n"]
        client.command(b"QUIT")


def test_outlook_no_nuls_workaround(popbox: Starter) -> None:
    server = popbox(
        USERS,
        {"alice": [b"Subject: nul\r\n\r\na\x00b\r\n"]},
        client_workarounds=["outlook-no-nuls"],
    )
    client = RawClient(server)
    client.login("alice", "secret")
    assert retr_all(client) == [b"Subject: nul\r\n\r\na\x80b\r\n"]


def test_dovecot_uidlist_is_honoured(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": [b"Subject: a\r\n\r\na\r\n", b"Subject: b\r\n\r\nb\r\n"]})
    server.stop()
    maildir = server.maildir("alice")
    names = sorted(os.listdir(maildir / "new"))
    (maildir / "dovecot-uidlist").write_text(
        "3 V1764158400 N3 G0123456789abcdef0123456789abcdef\n"
        f"1 :{names[0]}\n"
        f"2 P{'legacy-uidl'} :{names[1]}\n"
    )
    config = relocate(server, "maildir:mail/%u/Maildir", 'uidl_format = "dovecot"\n')
    server = launch(server.root, config)
    client = RawClient(server)
    client.login("alice", "secret")
    client.send(b"UIDL\r\n")
    assert client.read_multiline() == (
        # Dovecot's default pop3_uidl_format %08Xu%08Xv (it prints lower-case hex), and a
        # stored P field as is.
        b"+OK unique-id listing follows\r\n1 %08x%08x\r\n2 legacy-uidl\r\n.\r\n" % (1, 1764158400)
    )


def test_per_user_expire_from_the_users_file(popbox: Starter) -> None:
    users = {"alice": "{PLAIN}secret::::::userdb_expire_days=0", "bob": "{PLAIN}bobpw"}
    mail = {name: [b"Subject: x\r\n\r\nx\r\n"] for name in users}
    server = popbox(users, mail, mail_extra="expire_days = 30\n")
    for name, password, left in (("alice", "secret", 0), ("bob", "bobpw", 1)):
        client = RawClient(server)
        client.login(name, password)
        client.send(b"CAPA\r\n")
        expire = b"EXPIRE 0\r\n" if name == "alice" else b"EXPIRE 30\r\n"
        assert expire in client.read_multiline()
        assert retr_all(client) == [b"Subject: x\r\n\r\nx\r\n"]
        assert client.command(b"QUIT") == (
            b"+OK POP3 server signing off (%d messages left)\r\n" % left
        )
        assert (
            len(os.listdir(server.maildir(name) / "new"))
            + len(os.listdir(server.maildir(name) / "cur"))
            == left
        )

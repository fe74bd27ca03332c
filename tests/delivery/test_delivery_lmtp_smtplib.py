"""The LMTP listener (RFC 2033) driven by Python's smtplib.LMTP and by raw bytes.

smtplib.LMTP is SMTP with LHLO: sendmail() returns the recipients refused at RCPT and
reads one reply after the final dot, the first recipient's. RFC 2033 section 4.2 sends one
reply per accepted recipient, so the tests read the others with getreply().

After delivery each maildrop is read back through MaildirStore.open and compared byte for
byte: the stored form is the message with LF line ends, after the two header lines the
listener adds (`Return-Path: <sender>`, `Delivered-To: rcpt`).
"""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import stat
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from popbox.auth.passwdfile import PasswdFileAuthenticator
from popbox.delivery import lmtp
from popbox.delivery.lmtp import LmtpServer, start_lmtp
from popbox.storage.maildir import MaildirStore

_T = TypeVar("_T")

HOSTNAME = "lmtp.test"
SENDER = "sender@example.net"
USERS = "alice:{PLAIN}secret\nbob@example.org:{PLAIN}secret\n"
MAX_SIZE = 100_000

# CRLF as on the wire; a dot to stuff, a bare CR, a line over 1000 octets, 8-bit text.
MESSAGE = (
    b"From: Sender <sender@example.net>\r\n"
    b"Subject: caf\xc3\xa9\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"bare\rcr\r\n" + b"x" * 2000 + b"\r\n"
    b"last line\r\n"
)

NAME = re.compile(r"\d+\.M\d+P\d+Q\d+\.[^,]+,S=(\d+),W=(\d+)")


def stored_form(sender: str, rcpt: str, message: bytes = MESSAGE) -> bytes:
    """What the maildrop must hold: the two added lines, then the message, LF line ends."""
    top = f"Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n".encode()
    return (top + message).replace(b"\r\n", b"\n")


@dataclass(frozen=True)
class Site:
    root: Path
    store: MaildirStore
    authenticator: PasswdFileAuthenticator

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user / "Maildir"


def make_site(tmp_path: Path, template: str = "%u/Maildir") -> Site:
    users = tmp_path / "users"
    users.write_text(USERS)
    store = MaildirStore(str(tmp_path / "mail" / template))
    return Site(tmp_path, store, PasswdFileAuthenticator(users))


async def start(
    site: Site, *, max_message_size: int = MAX_SIZE, path: str | None = None
) -> LmtpServer:
    return await start_lmtp(
        store=site.store,
        authenticator=site.authenticator,
        address="127.0.0.1",
        port=None if path else 0,
        path=path,
        max_message_size=max_message_size,
        hostname=HOSTNAME,
    )


def connect(server: LmtpServer) -> smtplib.LMTP:
    if server.path is not None:
        return smtplib.LMTP(server.path, local_hostname="client.test", timeout=30)
    assert server.address is not None
    host, port = server.address
    return smtplib.LMTP(host, port, local_hostname="client.test", timeout=30)


def with_client(
    site: Site,
    client: Callable[[LmtpServer], _T],
    *,
    max_message_size: int = MAX_SIZE,
    path: str | None = None,
) -> _T:
    """Start the listener, run the blocking `client` in a worker thread, stop."""

    async def main() -> _T:
        server = await start(site, max_message_size=max_message_size, path=path)
        try:
            return await asyncio.to_thread(client, server)
        finally:
            await server.close()

    return asyncio.run(main())


async def read_maildrop(store: MaildirStore, user: str) -> list[tuple[str, int, bytes]]:
    """(key, octets, stored bytes) of each message, through the POP3 store's own reader."""
    drop = await store.open(user)
    try:
        messages = []
        for info in drop.listing:
            async with aclosing(drop.read(info.key)) as blocks:
                messages.append((info.key, info.octets, b"".join([b async for b in blocks])))
        return messages
    finally:
        await drop.close()


def stored(site: Site, user: str) -> list[bytes]:
    """The user's messages, each checked for its ,S= and ,W= name fields."""
    bodies = []
    for key, octets, body in asyncio.run(read_maildrop(site.store, user)):
        match = NAME.fullmatch(key)
        assert match is not None, key
        wire = len(body.replace(b"\n", b"\r\n"))  # every stored line ends in LF
        assert (int(match.group(1)), int(match.group(2))) == (len(body), wire)
        assert octets == wire
        bodies.append(body)
    return bodies


def data_replies(client: smtplib.LMTP, message: bytes, accepted: int) -> list[tuple[int, bytes]]:
    """DATA, then one reply per accepted recipient (RFC 2033 section 4.2)."""
    replies = [client.data(message)]
    replies += [client.getreply() for _ in range(accepted - 1)]
    return replies


# --- smtplib ----------------------------------------------------------------------------


def test_sendmail_two_recipients_one_unknown(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    rcpts = ["alice@example.org", "nobody@example.org", "bob@example.org"]

    def client(server: LmtpServer) -> tuple[object, tuple[int, bytes]]:
        with connect(server) as lmtp_client:
            refused = lmtp_client.sendmail(SENDER, rcpts, MESSAGE)
            # sendmail read alice's reply; bob's is next.
            return refused, lmtp_client.getreply()

    refused, second = with_client(site, client)
    assert refused == {"nobody@example.org": (550, b"5.1.1 <nobody@example.org>: user unknown")}
    assert second == (250, b"2.0.0 <bob@example.org> delivered")
    assert stored(site, "alice") == [stored_form(SENDER, "alice@example.org")]
    assert stored(site, "bob@example.org") == [stored_form(SENDER, "bob@example.org")]
    assert not site.maildir("nobody").exists()


def test_every_reply_of_a_transaction(tmp_path: Path) -> None:
    site = make_site(tmp_path)

    def client(server: LmtpServer) -> list[tuple[int, bytes]]:
        with connect(server) as c:
            code, _ = c.ehlo()  # LHLO
            assert code == 250
            assert c.esmtp_features == {
                "8bitmime": "",
                "enhancedstatuscodes": "",
                "help": "",
                "pipelining": "",
                "size": str(MAX_SIZE),
                "smtputf8": "",
            }
            replies = [c.mail(SENDER)]
            for rcpt in ("Alice@example.org", "alice@elsewhere.test", "bob@Example.ORG", "ghost"):
                replies.append(c.rcpt(rcpt))
            return replies + data_replies(c, MESSAGE, accepted=2)

    assert with_client(site, client) == [
        (250, b"2.1.0 OK"),
        (550, b"5.1.1 <Alice@example.org>: user unknown"),  # user names are case-sensitive
        (250, b"2.1.5 <alice@elsewhere.test> OK"),  # the local part names alice
        (250, b"2.1.5 <bob@Example.ORG> OK"),  # domains are case-insensitive
        (550, b"5.1.1 <ghost>: user unknown"),
        (250, b"2.0.0 <alice@elsewhere.test> delivered"),
        (250, b"2.0.0 <bob@Example.ORG> delivered"),
    ]
    assert stored(site, "alice") == [stored_form(SENDER, "alice@elsewhere.test")]
    assert stored(site, "bob@example.org") == [stored_form(SENDER, "bob@Example.ORG")]


def test_null_sender(tmp_path: Path) -> None:
    """A bounce (RFC 5321 section 4.5.5) has the null reverse-path: Return-Path: <>."""
    site = make_site(tmp_path)

    def client(server: LmtpServer) -> list[tuple[int, bytes]]:
        with connect(server) as c:
            c.ehlo()
            replies = [c.mail(""), c.rcpt("alice")]
            return replies + data_replies(c, MESSAGE, accepted=1)

    assert with_client(site, client) == [
        (250, b"2.1.0 OK"),
        (250, b"2.1.5 <alice> OK"),
        (250, b"2.0.0 <alice> delivered"),
    ]
    assert stored(site, "alice") == [stored_form("", "alice")]


def test_store_failure_is_temporary_for_that_recipient_only(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    broken = site.maildir("alice")
    broken.mkdir(parents=True)
    (broken / "tmp").write_bytes(b"")  # a file where tmp/ belongs: fails even for root

    def client(server: LmtpServer) -> list[tuple[int, bytes]]:
        with connect(server) as c:
            c.ehlo()
            replies = [c.mail(SENDER), c.rcpt("alice@example.org"), c.rcpt("bob@example.org")]
            return replies + data_replies(c, MESSAGE, accepted=2)

    assert with_client(site, client)[3:] == [
        (451, b"4.3.0 <alice@example.org> temporary failure"),
        (250, b"2.0.0 <bob@example.org> delivered"),
    ]
    assert os.listdir(broken / "new") == []
    assert stored(site, "bob@example.org") == [stored_form(SENDER, "bob@example.org")]


def test_message_over_the_size_limit(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    limit = len(MESSAGE)  # the wire size, without transparency dots

    def client(server: LmtpServer) -> list[tuple[int, bytes]]:
        with connect(server) as c:
            c.ehlo()
            replies = [c.mail(SENDER), c.rcpt("alice"), c.rcpt("bob@example.org")]
            replies += data_replies(c, MESSAGE + b"!\r\n", accepted=2)
            # The session goes on: the same message at exactly the limit is taken.
            replies += [c.mail(SENDER), c.rcpt("alice")]
            return replies + data_replies(c, MESSAGE, accepted=1)

    assert with_client(site, client, max_message_size=limit) == [
        (250, b"2.1.0 OK"),
        (250, b"2.1.5 <alice> OK"),
        (250, b"2.1.5 <bob@example.org> OK"),
        (552, b"5.3.4 message too big"),
        (552, b"5.3.4 message too big"),
        (250, b"2.1.0 OK"),
        (250, b"2.1.5 <alice> OK"),
        (250, b"2.0.0 <alice> delivered"),
    ]
    assert stored(site, "alice") == [stored_form(SENDER, "alice")]
    assert not site.maildir("bob@example.org").exists()


def test_declared_size_over_the_limit_is_refused_at_mail(tmp_path: Path) -> None:
    """sendmail() declares SIZE (RFC 1870) since LHLO announced it: refused up front."""
    site = make_site(tmp_path)

    def client(server: LmtpServer) -> smtplib.SMTPSenderRefused:
        with connect(server) as c, pytest.raises(smtplib.SMTPSenderRefused) as refused:
            c.sendmail(SENDER, ["alice"], MESSAGE)
        return refused.value

    refused = with_client(site, client, max_message_size=100)
    assert refused.smtp_code == 552
    assert not site.maildir("alice").exists()


def test_unreadable_user_list_is_a_temporary_failure(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    users = tmp_path / "users"
    users.unlink()
    users.mkdir()  # reading it fails, even as root

    def client(server: LmtpServer) -> list[tuple[int, bytes]]:
        with connect(server) as c:
            c.ehlo()
            return [c.mail(SENDER), c.rcpt("alice@example.org")]

    assert with_client(site, client)[1] == (451, b"4.3.0 <alice@example.org> temporary failure")


def test_user_without_a_possible_maildrop(tmp_path: Path) -> None:
    """%d of a user name without a domain: the store refuses the name, for good."""
    site = make_site(tmp_path, template="%d/%n/Maildir")

    def client(server: LmtpServer) -> list[tuple[int, bytes]]:
        with connect(server) as c:
            c.ehlo()
            replies = [c.mail(SENDER), c.rcpt("alice@example.org"), c.rcpt("bob@example.org")]
            return replies + data_replies(c, MESSAGE, accepted=2)

    assert with_client(site, client)[3:] == [
        (550, b"5.1.1 <alice@example.org>: no maildrop for this user"),
        (250, b"2.0.0 <bob@example.org> delivered"),
    ]
    assert (tmp_path / "mail" / "example.org" / "bob" / "Maildir" / "new").is_dir()


def test_too_many_recipients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmtp, "MAX_RECIPIENTS", 2)
    site = make_site(tmp_path)

    def client(server: LmtpServer) -> list[tuple[int, bytes]]:
        with connect(server) as c:
            c.ehlo()
            c.mail(SENDER)
            replies = [c.rcpt(rcpt) for rcpt in ("alice", "bob@example.org", "alice@x.test")]
            return replies + data_replies(c, MESSAGE, accepted=2)

    assert with_client(site, client) == [
        (250, b"2.1.5 <alice> OK"),
        (250, b"2.1.5 <bob@example.org> OK"),
        (452, b"4.5.3 too many recipients"),
        (250, b"2.0.0 <alice> delivered"),
        (250, b"2.0.0 <bob@example.org> delivered"),
    ]


def test_delivery_does_not_wait_for_an_open_pop3_session(tmp_path: Path) -> None:
    """MaildirStore.open holds the RFC 1939 section 8 lock; Maildir delivery takes none.
    The open session keeps its snapshot; the message is in the next one."""
    site = make_site(tmp_path)

    async def main() -> tuple[list[tuple[int, bytes]], int, int]:
        await site.store.deliver("alice", b"Subject: old\n\nold\n")
        drop = await site.store.open("alice")
        try:
            server = await start(site)
            try:

                def client(server: LmtpServer) -> list[tuple[int, bytes]]:
                    with connect(server) as c:
                        c.ehlo()
                        c.mail(SENDER)
                        c.rcpt("alice")
                        return data_replies(c, MESSAGE, accepted=1)

                replies = await asyncio.to_thread(client, server)
            finally:
                await server.close()
            return replies, len(drop.listing), len(os.listdir(site.maildir("alice") / "new"))
        finally:
            await drop.close()

    replies, in_snapshot, on_disk = asyncio.run(main())
    assert replies == [(250, b"2.0.0 <alice> delivered")]
    assert (in_snapshot, on_disk) == (1, 2)
    assert stored(site, "alice") == [b"Subject: old\n\nold\n", stored_form(SENDER, "alice")]


def test_unix_socket(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    path = str(tmp_path / "lmtp.sock")

    def client(server: LmtpServer) -> tuple[int, list[tuple[int, bytes]]]:
        assert server.address is None
        assert server.path == path
        mode = stat.S_IMODE(os.stat(path).st_mode)
        with connect(server) as c:
            c.ehlo()
            c.mail(SENDER)
            c.rcpt("alice")
            return mode, data_replies(c, MESSAGE, accepted=1)

    mode, replies = with_client(site, client, path=path)
    assert mode == 0o660
    assert replies == [(250, b"2.0.0 <alice> delivered")]
    assert not os.path.exists(path)  # removed at close
    assert stored(site, "alice") == [stored_form(SENDER, "alice")]


# --- raw bytes: pipelining (RFC 2033 section 5 requires it) ------------------------------

PIPELINED = (
    b"LHLO client.test\r\n"
    b"MAIL FROM:<sender@example.net>\r\n"
    b"RCPT TO:<alice@example.org>\r\n"
    b"RCPT TO:<nobody@example.org>\r\n"
    b"RCPT TO:<bob@example.org>\r\n"
    b"DATA\r\n"
)
TEXT = b"Subject: pipelined\r\n\r\n..one dot\r\n.\r\n"
AFTER_TEXT = b"MAIL FROM:<>\r\nRCPT TO:<nobody>\r\nDATA\r\nQUIT\r\n"

TRANSCRIPT = (
    b"220 lmtp.test LMTP popbox\r\n"
    b"250-lmtp.test\r\n"
    b"250-SIZE 100000\r\n"
    b"250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n"
    b"250-PIPELINING\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250 HELP\r\n"
    b"250 2.1.0 OK\r\n"
    b"250 2.1.5 <alice@example.org> OK\r\n"
    b"550 5.1.1 <nobody@example.org>: user unknown\r\n"
    b"250 2.1.5 <bob@example.org> OK\r\n"
    b"354 End data with <CR><LF>.<CR><LF>\r\n"
    b"250 2.0.0 <alice@example.org> delivered\r\n"
    b"250 2.0.0 <bob@example.org> delivered\r\n"
    # Commands pipelined right after the final dot are commands, not message text.
    b"250 2.1.0 OK\r\n"
    b"550 5.1.1 <nobody>: user unknown\r\n"
    b"503 5.5.1 Error: need RCPT command\r\n"
    b"221 Bye\r\n"
)


def test_pipelined_transcript(tmp_path: Path) -> None:
    site = make_site(tmp_path)

    async def main() -> bytes:
        server = await start(site)
        try:
            assert server.address is not None
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(PIPELINED)
            head = await reader.readuntil(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            writer.write(TEXT + AFTER_TEXT)
            tail = await reader.read()  # to EOF: QUIT closes
            writer.close()
            await writer.wait_closed()
            return head + tail
        finally:
            await server.close()

    assert asyncio.run(main()) == TRANSCRIPT
    expected = b"Subject: pipelined\n\n.one dot\n"
    assert stored(site, "alice") == [
        b"Return-Path: <sender@example.net>\nDelivered-To: alice@example.org\n" + expected
    ]
    assert stored(site, "bob@example.org") == [
        b"Return-Path: <sender@example.net>\nDelivered-To: bob@example.org\n" + expected
    ]


def test_close_ends_open_connections(tmp_path: Path) -> None:
    site = make_site(tmp_path)

    async def main() -> bytes:
        server = await start(site)
        assert server.address is not None
        reader, writer = await asyncio.open_connection(*server.address)
        greeting = await reader.readline()
        await server.close()
        rest = await reader.read()  # EOF once the server has closed the connection
        writer.close()
        await writer.wait_closed()
        return greeting + rest

    assert asyncio.run(main()) == b"220 lmtp.test LMTP popbox\r\n"


def test_utf8_recipients(tmp_path: Path) -> None:
    """SMTPUTF8 (RFC 6531) addresses reach UTF-8 users, prepared as at login (RFC 8265:
    NFC, so a decomposed o-umlaut names jörg); octets that are not UTF-8 name nobody and
    show as "?" in the reply."""
    site = make_site(tmp_path)
    (tmp_path / "users").write_text("jörg:{PLAIN}secret\n", encoding="utf-8")
    decomposed = "jo\u0308rg@example.org".encode()

    async def main() -> bytes:
        server = await start(site)
        try:
            assert server.address is not None
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(
                b"LHLO client.test\r\nMAIL FROM:<s\xc3\xa9@example.net> SMTPUTF8\r\n"
                b"RCPT TO:<" + decomposed + b">\r\nRCPT TO:<\xff@example.org>\r\nDATA\r\n"
            )
            head = await reader.readuntil(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            writer.write(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            tail = await reader.read()
            writer.close()
            await writer.wait_closed()
            return head + tail
        finally:
            await server.close()

    replies = asyncio.run(main()).split(b"\r\n")
    assert replies[-7:] == [
        b"250 2.1.0 OK",
        b"250 2.1.5 <" + decomposed + b"> OK",
        b"550 5.1.1 <?@example.org>: user unknown",
        b"354 End data with <CR><LF>.<CR><LF>",
        b"250 2.0.0 <" + decomposed + b"> delivered",
        b"221 Bye",
        b"",
    ]
    assert stored(site, "jörg") == [
        b"Return-Path: <s\xc3\xa9@example.net>\nDelivered-To: "
        + decomposed
        + b"\nSubject: x\n\nbody\n"
    ]

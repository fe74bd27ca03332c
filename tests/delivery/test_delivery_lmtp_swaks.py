"""swaks as a real LMTP client (shared/STYLE.md item 8), over TCP and a unix socket.

swaks prints what the server sends as `<-  ` lines (`<** ` for 4xx/5xx replies); each
reply after DATA is one line per accepted recipient (RFC 2033 section 4.2). With --data
naming a file, swaks sends the file with CRLF line ends and transparency dots, and ends it
with CRLF.CRLF (the file here has no final line end, so swaks adds no empty line).
"""

from __future__ import annotations

import asyncio
import shutil
from contextlib import aclosing
from pathlib import Path

import pytest

from popbox.auth.passwdfile import PasswdFileAuthenticator
from popbox.delivery.lmtp import LmtpServer, start_lmtp
from popbox.storage.maildir import MaildirStore

SWAKS = shutil.which("swaks")
pytestmark = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")

HOSTNAME = "lmtp.test"
SENDER = "sender@example.net"
DATA = b"From: <sender@example.net>\nSubject: swaks\n\n.dot\nend"
STORED_DATA = DATA + b"\n"

SERVER_LINES = [
    "<-  220 lmtp.test LMTP popbox",
    "<-  250-lmtp.test",
    "<-  250-SIZE 100000",
    "<-  250-8BITMIME",
    "<-  250-SMTPUTF8",
    "<-  250-PIPELINING",
    "<-  250-ENHANCEDSTATUSCODES",
    "<-  250 HELP",
    "<-  250 2.1.0 OK",
    "<-  250 2.1.5 <alice@example.org> OK",
    "<** 550 5.1.1 <nobody@example.org>: user unknown",
    "<-  354 End data with <CR><LF>.<CR><LF>",
    "<-  250 2.0.0 <alice@example.org> delivered",
    "<-  221 Bye",
]


async def swaks(server: LmtpServer, data_file: Path) -> tuple[int, list[str]]:
    """Run swaks against the listener; its exit status and the server's lines it shows."""
    assert SWAKS is not None
    if server.path is not None:
        where = ["--socket", server.path]
    else:
        assert server.address is not None
        where = ["--server", server.address[0], "--port", str(server.address[1])]
    process = await asyncio.create_subprocess_exec(
        SWAKS,
        "--protocol",
        "LMTP",
        *where,
        "--helo",
        "client.test",
        "--from",
        SENDER,
        "--to",
        "alice@example.org,nobody@example.org",
        "--data",
        str(data_file),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    lines = output.decode("utf-8", "replace").splitlines()
    assert process.returncode is not None
    return process.returncode, [line for line in lines if line.startswith(("<-", "<**"))]


async def read_maildrop(store: MaildirStore, user: str) -> list[bytes]:
    drop = await store.open(user)
    try:
        messages = []
        for info in drop.listing:
            async with aclosing(drop.read(info.key)) as blocks:
                messages.append(b"".join([block async for block in blocks]))
        return messages
    finally:
        await drop.close()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_swaks_two_recipients_one_unknown(tmp_path: Path, transport: str) -> None:
    users = tmp_path / "users"
    users.write_text("alice:{PLAIN}secret\n")
    store = MaildirStore(str(tmp_path / "mail" / "%u" / "Maildir"))
    data_file = tmp_path / "message.eml"
    data_file.write_bytes(DATA)

    async def main() -> tuple[int, list[str], list[bytes]]:
        server = await start_lmtp(
            store=store,
            authenticator=PasswdFileAuthenticator(users),
            address="127.0.0.1",
            port=0 if transport == "tcp" else None,
            path=str(tmp_path / "lmtp.sock") if transport == "unix" else None,
            max_message_size=100_000,
            hostname=HOSTNAME,
        )
        try:
            status, lines = await swaks(server, data_file)
        finally:
            await server.close()
        return status, lines, await read_maildrop(store, "alice")

    status, lines, messages = asyncio.run(main())
    assert lines == SERVER_LINES
    assert status == 0
    assert messages == [
        b"Return-Path: <sender@example.net>\nDelivered-To: alice@example.org\n" + STORED_DATA
    ]
    assert not (tmp_path / "mail" / "nobody").exists()

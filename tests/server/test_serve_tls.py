"""TLS end to end: implicit TLS (RFC 8314), STLS (RFC 2595), the plaintext policy, the
STARTTLS injection case, SIGHUP reloads, and SCRAM-SHA-256-PLUS channel binding."""

from __future__ import annotations

import base64
import hashlib
import os
import poplib
import signal
import ssl

import pytest
import scramp  # type: ignore[import-untyped]
from conftest import Starter, TlsFiles, make_tls_files

from server_helpers import RawClient, crlf

USERS = {"alice": "{PLAIN}secret"}
MESSAGE = b"Subject: over TLS\n\n.dot line\nbody\n"
MAIL = {"alice": [MESSAGE]}
SIZE = len(crlf(MESSAGE))
LOGGED_IN = b"+OK maildrop has 1 messages (%d octets)\r\n" % SIZE
ALL_MODES = ("none", "starttls", "implicit")


def capa(client: RawClient) -> list[bytes]:
    client.send(b"CAPA\r\n")
    return client.read_multiline().split(b"\r\n")[1:-2]


def test_implicit_tls_greets_after_handshake_and_serves_mail(
    popbox: Starter, tls_files: TlsFiles
) -> None:
    server = popbox(USERS, MAIL, extra=tls_files.toml, listeners=ALL_MODES)
    client = RawClient(server, port=server.ports["implicit"], tls=tls_files.client_context())
    assert client.greeting.startswith(b"+OK POP3 server ready <")
    tags = capa(client)
    assert b"USER" in tags
    assert b"STLS" not in tags
    assert any(tag.startswith(b"SASL SCRAM-SHA-256-PLUS ") for tag in tags)
    assert client.login("alice", "secret") == LOGGED_IN
    client.send(b"RETR 1\r\n")
    stuffed = crlf(MESSAGE).replace(b"\r\n.", b"\r\n..")
    assert client.read_multiline() == b"+OK %d octets\r\n" % SIZE + stuffed + b".\r\n"
    server.log.wait_for(r"tls client=127\.0\.0\.1 version=TLSv1\.[23] cipher=")


def test_poplib_stls_and_pop3_ssl(popbox: Starter, tls_files: TlsFiles) -> None:
    server = popbox(USERS, MAIL, extra=tls_files.toml, listeners=ALL_MODES)
    context = tls_files.client_context()
    plain = poplib.POP3(server.host, server.ports["starttls"], timeout=10)
    assert "STLS" in plain.capa()
    assert plain.stls(context) == b"+OK Begin TLS negotiation"
    assert "STLS" not in plain.capa()
    plain.user("alice")
    plain.pass_("secret")
    assert plain.retr(1)[1] == crlf(MESSAGE).split(b"\r\n")[:-1]
    plain.quit()
    implicit = poplib.POP3_SSL(server.host, server.ports["implicit"], context=context, timeout=10)
    implicit.user("alice")
    implicit.pass_("secret")
    assert implicit.stat() == (1, SIZE)
    implicit.quit()


def test_plaintext_never_hides_user_and_plain_until_tls(
    popbox: Starter, tls_files: TlsFiles
) -> None:
    extra = 'plaintext = "never"\n' + tls_files.toml
    server = popbox(USERS, MAIL, extra=extra, listeners=ALL_MODES)
    client = RawClient(server, port=server.ports["starttls"])
    tags = capa(client)
    assert tags[:4] == [b"TOP", b"UIDL", b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5", b"STLS"]
    refused = b"-ERR [AUTH] plaintext authentication disallowed without TLS\r\n"
    assert client.command(b"USER alice") == refused
    assert client.command(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret")) == refused
    assert client.command(b"STLS") == b"+OK Begin TLS negotiation\r\n"
    client.starttls(tls_files.client_context())
    tags = capa(client)
    assert tags[:4] == [
        b"TOP",
        b"UIDL",
        b"USER",
        b"SASL SCRAM-SHA-256-PLUS SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN",
    ]
    assert b"STLS" not in tags
    plain = base64.b64encode(b"\0alice\0secret")
    assert client.command(b"AUTH PLAIN " + plain).startswith(b"+OK maildrop has 1 messages")
    # The cleartext listener under "never": no way to log in with a password at all.
    cleartext = RawClient(server, port=server.ports["none"])
    assert b"STLS" not in capa(cleartext)
    assert cleartext.command(b"STLS") == b"-ERR STLS not available on this port\r\n"


def test_stls_injection_is_discarded(popbox: Starter, tls_files: TlsFiles) -> None:
    """CVE-2011-0411: `STLS\\r\\nUSER x\\r\\n` in one packet must not run USER inside TLS."""
    server = popbox(USERS, MAIL, extra=tls_files.toml, listeners=ALL_MODES)
    client = RawClient(server, port=server.ports["starttls"])
    client.send(b"USER alice\r\nSTLS\r\nUSER alice\r\nCAPA\r\n")
    assert client.read_line() == b"+OK send PASS\r\n"
    assert client.read_line() == b"+OK Begin TLS negotiation\r\n"
    client.starttls(tls_files.client_context())
    # Nothing from before the handshake was answered or remembered.
    assert client.command(b"PASS secret") == b"-ERR give USER first\r\n"
    assert client.command(b"STLS") == b"-ERR command not permitted when TLS active\r\n"
    assert client.login("alice", "secret").startswith(b"+OK maildrop has 1 messages")


def test_minimum_tls_version_is_enforced(popbox: Starter, tls_files: TlsFiles) -> None:
    server = popbox(USERS, extra=tls_files.toml, listeners=("implicit",))
    tls12 = tls_files.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    client = RawClient(server, tls=tls12)
    assert isinstance(client.sock, ssl.SSLSocket)
    assert client.sock.version() == "TLSv1.2"
    strict = popbox(
        USERS,
        extra=tls_files.toml + 'min_version = "TLSv1.3"\n',
        listeners=("implicit",),
    )
    with pytest.raises(ssl.SSLError):
        RawClient(strict, tls=tls12)
    assert RawClient(strict, tls=tls_files.client_context()).greeting.startswith(b"+OK")


def test_sighup_reloads_certificate_without_dropping_sessions(
    popbox: Starter, tls_files: TlsFiles, tmp_path: os.PathLike[str]
) -> None:
    server = popbox(USERS, MAIL, extra=tls_files.toml, listeners=("implicit",))
    old_session = RawClient(server, tls=tls_files.client_context())
    old_session.login("alice", "secret")
    fresh = make_tls_files(tls_files.certificate.parent, name="renewed")
    os.replace(fresh.certificate, tls_files.certificate)
    os.replace(fresh.private_key, tls_files.private_key)
    server.process.send_signal(signal.SIGHUP)
    server.log.wait_for(r"TLS certificate and key reloaded")
    # New connections get the new certificate: only the new CA verifies them.
    with pytest.raises(ssl.SSLCertVerificationError):
        RawClient(server, tls=tls_files.client_context())
    assert RawClient(server, tls=fresh.client_context()).greeting.startswith(b"+OK")
    # The running session was not dropped.
    assert old_session.command(b"STAT") == b"+OK 1 %d\r\n" % SIZE
    # A broken file on reload keeps the current certificate.
    tls_files.private_key.write_text("not a key")
    server.process.send_signal(signal.SIGHUP)
    server.log.wait_for(r"TLS reload failed, keeping the old certificate")
    assert RawClient(server, tls=fresh.client_context()).greeting.startswith(b"+OK")


def test_scram_sha_256_plus_with_tls_server_end_point(popbox: Starter, tls_files: TlsFiles) -> None:
    server = popbox(USERS, MAIL, extra=tls_files.toml, listeners=("implicit",))
    client = RawClient(server, tls=tls_files.client_context())
    assert isinstance(client.sock, ssl.SSLSocket)
    # RFC 5929 section 4.1, computed by the client from the certificate it received
    # (trustme signs with SHA-256, so the hash is SHA-256).
    peer = client.sock.getpeercert(binary_form=True)
    assert peer is not None
    binding = ("tls-server-end-point", hashlib.sha256(peer).digest())
    scram = scramp.ScramClient(["SCRAM-SHA-256-PLUS"], "alice", "secret", channel_binding=binding)
    first = base64.b64encode(scram.get_client_first().encode())
    reply = client.command(b"AUTH SCRAM-SHA-256-PLUS " + first)
    assert reply.startswith(b"+ ")
    scram.set_server_first(base64.b64decode(reply[2:]).decode())
    reply = client.command(base64.b64encode(scram.get_client_final().encode()))
    assert reply.startswith(b"+ ")
    scram.set_server_final(base64.b64decode(reply[2:]).decode())
    assert client.command(b"") == LOGGED_IN
    server.log.wait_for(r"login ok user=alice client=127\.0\.0\.1 mechanism=SCRAM-SHA-256-PLUS")


def test_scram_plus_with_wrong_binding_fails(popbox: Starter, tls_files: TlsFiles) -> None:
    server = popbox(USERS, MAIL, extra=tls_files.toml, listeners=("implicit",))
    client = RawClient(server, tls=tls_files.client_context())
    binding = ("tls-server-end-point", b"\x00" * 32)
    scram = scramp.ScramClient(["SCRAM-SHA-256-PLUS"], "alice", "secret", channel_binding=binding)
    first = base64.b64encode(scram.get_client_first().encode())
    reply = client.command(b"AUTH SCRAM-SHA-256-PLUS " + first)
    scram.set_server_first(base64.b64decode(reply[2:]).decode())
    reply = client.command(base64.b64encode(scram.get_client_final().encode()))
    assert reply.startswith(b"-ERR [AUTH] ")

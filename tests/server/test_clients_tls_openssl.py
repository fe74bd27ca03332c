"""`openssl s_client` as a raw POP3 client over TLS (shared/STYLE.md item 8).

s_client verifies the certificate (`-verify_return_error`, `-verify_ip 127.0.0.1` against
the certificate's IP address, RFC 6125) and then copies stdin to the connection and the
connection to stdout; `-quiet` drops its own chatter and implies `-ign_eof`, so it keeps
reading after stdin ends until the server closes the connection after QUIT. The commands
all go out at once (popbox announces PIPELINING, RFC 2449 section 6.6), so stdout is the
server's replies, byte for byte.

With `-starttls pop3` s_client reads the greeting, sends STLS and reads its +OK itself
(RFC 2595 section 4); stdout starts with the first reply inside TLS. On the implicit-TLS
port (RFC 8314) the greeting is the first thing on stdout.
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest
from conftest import Starter, TlsFiles, make_tls_files, start_tls

from server_helpers import (
    PopboxServer,
    client_corpus,
    log_mark,
    maildir_contents,
    no_login_since,
    tls_login_logged,
    which_or_skip,
    wire_form,
)

OPENSSL, pytestmark = which_or_skip("openssl")

CORPUS = client_corpus()
MAILDROP_OCTETS = sum(len(wire_form(m)) for m in CORPUS)

# RFC 2449 CAPA inside TLS with plaintext = "never": USER and PLAIN/LOGIN are offered now,
# SCRAM-SHA-256-PLUS too (channel binding needs TLS, RFC 5802 section 6), STLS no longer
# (RFC 2595 section 4: not after a TLS layer is active).
CAPA_IN_TLS = (
    b"+OK Capability list follows\r\n"
    b"TOP\r\n"
    b"UIDL\r\n"
    b"USER\r\n"
    b"SASL SCRAM-SHA-256-PLUS SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN\r\n"
    b"RESP-CODES\r\n"
    b"AUTH-RESP-CODE\r\n"
    b"PIPELINING\r\n"
    b"UTF8 USER\r\n"
    b"IMPLEMENTATION popbox\r\n"
    b".\r\n"
)
# RFC 1939 section 4: the greeting's APOP timestamp is a msg-id, <...@hostname>.
GREETING = re.compile(rb"\+OK POP3 server ready <[^<>@\s]+@test\.popbox\.invalid>\r\n")
RETR_ALL = b"".join(b"RETR %d\r\n" % n for n in range(1, len(CORPUS) + 1))


def stuffed(wire: bytes) -> bytes:
    """RFC 1939 section 3: a line starting with "." gets one more "." on the wire."""
    lines = wire.splitlines(keepends=True)
    return b"".join(b"." + line if line.startswith(b".") else line for line in lines)


def retr_replies() -> bytes:
    return b"".join(
        b"+OK %d octets\r\n" % len(wire_form(m)) + stuffed(wire_form(m)) + b".\r\n" for m in CORPUS
    )


def s_client(
    server: PopboxServer, mode: str, ca_file: Path, commands: bytes, *verify: str
) -> subprocess.CompletedProcess[bytes]:
    assert OPENSSL is not None
    starttls = ["-starttls", "pop3"] if mode == "starttls" else []
    return subprocess.run(
        [
            *(OPENSSL, "s_client", "-connect", f"{server.host}:{server.ports[mode]}"),
            *(*starttls, "-CAfile", str(ca_file), "-verify_return_error", "-quiet"),
            *(verify or ("-verify_ip", server.host)),
        ],
        input=commands,
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_stls_then_capa_user_pass_stat_retr_quit(popbox: Starter, tls_files: TlsFiles) -> None:
    server = start_tls(popbox, tls_files)
    mark = log_mark(server)
    commands = b"CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\n" + RETR_ALL + b"QUIT\r\n"
    result = s_client(server, "starttls", tls_files.ca_file, commands)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        CAPA_IN_TLS
        + b"+OK send PASS\r\n"
        + b"+OK maildrop has 8 messages (%d octets)\r\n" % MAILDROP_OCTETS
        + b"+OK 8 %d\r\n" % MAILDROP_OCTETS
        + retr_replies()
        + b"+OK POP3 server signing off (8 messages left)\r\n"
    )
    assert maildir_contents(server.maildir("alice")) == CORPUS
    tls_login_logged(server, "USER", start=mark)
    server.log.wait_for(
        r"logout user=alice client=127\.0\.0\.1 reason=quit top=\d+/\d+ retr=8/\d+ del=0/",
        start=mark,
    )


def test_implicit_tls_greeting_capa_auth_plain_retr_quit(
    popbox: Starter, tls_files: TlsFiles
) -> None:
    server = start_tls(popbox, tls_files)
    mark = log_mark(server)
    # RFC 5034 section 4: AUTH with an initial response; RFC 4616 message \0user\0password.
    plain = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n"
    commands = b"CAPA\r\n" + plain + b"STAT\r\n" + RETR_ALL + b"DELE 1\r\nQUIT\r\n"
    result = s_client(server, "implicit", tls_files.ca_file, commands)
    assert result.returncode == 0, result.stderr
    greeting = GREETING.match(result.stdout)
    assert greeting, result.stdout[:200]
    assert result.stdout[greeting.end() :] == (
        CAPA_IN_TLS
        + b"+OK maildrop has 8 messages (%d octets)\r\n" % MAILDROP_OCTETS
        + b"+OK 8 %d\r\n" % MAILDROP_OCTETS
        + retr_replies()
        + b"+OK message 1 deleted\r\n"
        + b"+OK POP3 server signing off (7 messages left)\r\n"
    )
    assert maildir_contents(server.maildir("alice")) == CORPUS[1:]
    tls_login_logged(server, "PLAIN", start=mark)
    server.log.wait_for(
        r"logout user=alice client=127\.0\.0\.1 reason=quit top=\d+/\d+ retr=8/\d+ del=1/",
        start=mark,
    )


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
@pytest.mark.parametrize(
    ("trust", "verify", "error"),
    [
        # Another CA: the chain has no trust anchor.
        pytest.param(
            "other",
            (),
            b"verify error:num=20:unable to get local issuer certificate\n",
            id="other-ca",
        ),
        # The right CA, a name the certificate does not carry (RFC 6125 section 6).
        pytest.param(
            "ours",
            ("-verify_hostname", "mail.example.org"),
            b"verify error:num=62:",
            id="wrong-name",
        ),
    ],
)
def test_verification_failure_ends_before_any_login(
    popbox: Starter,
    tls_files: TlsFiles,
    tmp_path: Path,
    *,
    mode: str,
    trust: str,
    verify: tuple[str, ...],
    error: bytes,
) -> None:
    server = start_tls(popbox, tls_files)
    ca_file = make_tls_files(tmp_path / "other", "other").ca_file if trust == "other" else None
    mark = log_mark(server)
    commands = b"USER alice\r\nPASS secret\r\nQUIT\r\n"
    result = s_client(server, mode, ca_file or tls_files.ca_file, commands, *verify)
    assert (result.returncode, result.stdout) == (1, b""), result.stderr
    assert error in result.stderr
    assert b"certificate verify failed" in result.stderr
    no_login_since(server, mark, tls_files.client_context())

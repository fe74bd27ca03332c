"""fetchmail as a real POP3 client over TLS (shared/STYLE.md item 8): `ssl` on the
implicit-TLS port (RFC 8314), `sslproto 'TLS1.2+'` (STLS required, RFC 2595) on the
STLS port, both with `sslcertck` against the test CA only (`sslcertfile`).

fetchmail 6.4 checks the server name itself (socket.c, SSL_verify_callback): it looks at
the subjectAltName DNS names only when the subject has a CommonName, and it hands the name
to OpenSSL's X509_VERIFY_PARAM_set1_host, which matches DNS names, never the 127.0.0.1 IP
address entry. So these tests re-issue the server certificate with CN=test.popbox.invalid
and tell fetchmail `sslcommonname test.popbox.invalid` while it connects to 127.0.0.1.

What the MDA receives is as in test_clients_fetchmail.py: the message with LF line ends,
unstuffed, after exactly one Received header fetchmail adds (the same over TLS).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Starter, TlsFiles, make_tls_files, start_tls

from fetchmail_helpers import FETCHMAIL_GOT_MAIL, NEEDS_FETCHMAIL, delivered, run_fetchmail
from server_helpers import (
    HOSTNAME,
    PopboxServer,
    client_corpus,
    lf_form,
    log_mark,
    maildir_contents,
    no_login_since,
    tls_login_logged,
)

pytestmark = NEEDS_FETCHMAIL

CORPUS = client_corpus()

FETCHMAIL_SOCKET_ERROR = 2  # man fetchmail, EXIT CODES: includes a failed TLS handshake

# How fetchmail is told to use TLS on each listener (man fetchmail, --ssl, --sslproto).
TLS_OPTIONS = {"implicit": "ssl", "starttls": "sslproto 'TLS1.2+'"}


def start(popbox: Starter, tls_files: TlsFiles) -> PopboxServer:
    """A server whose certificate also names HOSTNAME as its subject CommonName."""
    issued = tls_files.ca.issue_cert("127.0.0.1", "localhost", HOSTNAME, common_name=HOSTNAME)
    issued.private_key_pem.write_to_path(str(tls_files.private_key))
    issued.cert_chain_pems[0].write_to_path(str(tls_files.certificate))
    return start_tls(popbox, tls_files)


def fetchmail(
    server: PopboxServer, home: Path, outdir: Path, *, mode: str, protocol: str, auth: str, ca: Path
) -> subprocess.CompletedProcess[str]:
    return run_fetchmail(
        server,
        home,
        outdir,
        port=server.ports[mode],
        protocol=protocol,
        auth=auth,
        tls=f"{TLS_OPTIONS[mode]}\n  sslcertfile {ca} sslcertck sslcommonname {HOSTNAME}",
        options=("--keep",),
    )


@pytest.mark.parametrize(
    ("mode", "protocol", "auth", "mechanism"),
    [
        *(
            (mode, "POP3", auth, mechanism)
            for mode in ("implicit", "starttls")
            for auth, mechanism in [
                ("password", "USER"),
                ("cram-md5", "CRAM-MD5"),
                # "any" prefers a method that does not send the password (man fetchmail).
                ("any", "CRAM-MD5"),
            ]
        ),
        # Implicit TLS only: with `protocol APOP` fetchmail 6.4.37 sends no CAPA and no
        # STLS even under `sslproto 'TLS1.2+'`; it logs in with APOP in cleartext (what
        # popbox allows, as APOP does not reveal the password).
        ("implicit", "APOP", "password", "APOP"),
    ],
)
def test_keep_downloads_every_message_over_tls(
    popbox: Starter,
    tls_files: TlsFiles,
    tmp_path: Path,
    *,
    mode: str,
    protocol: str,
    auth: str,
    mechanism: str,
) -> None:
    server = start(popbox, tls_files)
    mark = log_mark(server)
    outdir = tmp_path / "out"
    result = fetchmail(
        server,
        tmp_path / "home",
        outdir,
        mode=mode,
        protocol=protocol,
        auth=auth,
        ca=tls_files.ca_file,
    )
    assert result.returncode == FETCHMAIL_GOT_MAIL, result.stderr + result.stdout
    assert delivered(server, outdir) == [lf_form(m) for m in CORPUS]
    assert maildir_contents(server.maildir("alice")) == CORPUS
    tls_login_logged(server, mechanism, start=mark)
    server.log.wait_for(
        r"logout user=alice client=127\.0\.0\.1 reason=quit top=\d+/\d+ retr=8/\d+ del=0/",
        start=mark,
    )


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_a_client_trusting_another_ca_fails_the_handshake(
    popbox: Starter, tls_files: TlsFiles, tmp_path: Path, mode: str
) -> None:
    server = start(popbox, tls_files)
    other = make_tls_files(tmp_path / "other", name="other")
    mark = log_mark(server)
    outdir = tmp_path / "out"
    result = fetchmail(
        server,
        tmp_path / "home",
        outdir,
        mode=mode,
        protocol="POP3",
        auth="password",
        ca=other.ca_file,
    )
    assert result.returncode == FETCHMAIL_SOCKET_ERROR, result.stderr + result.stdout
    assert "certificate verify failed" in result.stderr
    assert delivered(server, outdir) == []
    no_login_since(server, mark, tls_files.client_context())

"""mpop as a real POP3 client over TLS (shared/STYLE.md item 8): `tls_starttls on` (STLS,
RFC 2595) on the STLS port and `tls_starttls off` (implicit TLS, RFC 8314) on the other,
trusting only the test CA (`tls_trust_file`); GnuTLS checks the certificate against the
IP address entry 127.0.0.1.

This mpop (1.4.18) uses GNU SASL, and `mpop --version` lists user, plain, scram-sha-1,
scram-sha-256, apop, cram-md5, login and more; each is forced with `auth METHOD`. It offers
no SCRAM-*-PLUS method, so channel binding is not exercised here (test_serve_tls.py drives
SCRAM-SHA-256-PLUS with scramp). `auth on` lets mpop choose; under TLS it picks PLAIN.

Delivery and the Received header mpop adds are as in test_clients_mpop.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Starter, TlsFiles, make_tls_files, start_tls

from mpop_helpers import NEEDS_MPOP, delivered, run_mpop
from server_helpers import (
    PopboxServer,
    client_corpus,
    lf_form,
    log_mark,
    maildir_contents,
    no_login_since,
    tls_login_logged,
)

pytestmark = NEEDS_MPOP

CORPUS = client_corpus()

EX_UNAVAILABLE = 69  # sysexits.h; mpop's exit status when the TLS handshake fails

# mpop's `auth` value -> the mechanism popbox logs.
METHODS = {
    "user": "USER",
    "plain": "PLAIN",
    "login": "LOGIN",
    "cram-md5": "CRAM-MD5",
    "apop": "APOP",
    "scram-sha-1": "SCRAM-SHA-1",
    "scram-sha-256": "SCRAM-SHA-256",
    "on": "PLAIN",
}


def mpop(
    server: PopboxServer, home: Path, inbox: Path, *, mode: str, auth: str, trust: Path
) -> subprocess.CompletedProcess[str]:
    tls = f"tls on\ntls_starttls {'on' if mode == 'starttls' else 'off'}\ntls_trust_file {trust}\n"
    port = server.ports[mode]
    return run_mpop(server, home, inbox, port=port, tls=tls, auth=auth, keep=True, only_new=False)


def download_and_check(
    server: PopboxServer, tmp_path: Path, trust: Path, *, mode: str, auth: str, mechanism: str
) -> None:
    mark = log_mark(server)
    inbox = tmp_path / "inbox"
    result = mpop(server, tmp_path / "home", inbox, mode=mode, auth=auth, trust=trust)
    assert result.returncode == 0, result.stderr + result.stdout
    assert delivered(server, inbox) == [lf_form(m) for m in CORPUS]
    assert maildir_contents(server.maildir("alice")) == CORPUS
    tls_login_logged(server, mechanism, start=mark)
    server.log.wait_for(
        r"logout user=alice client=127\.0\.0\.1 reason=quit top=\d+/\d+ retr=8/\d+ del=0/",
        start=mark,
    )


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("auth", list(METHODS))
def test_every_method_downloads_every_message_over_tls(
    popbox: Starter, tls_files: TlsFiles, tmp_path: Path, mode: str, auth: str
) -> None:
    server = start_tls(popbox, tls_files)
    download_and_check(
        server, tmp_path, tls_files.ca_file, mode=mode, auth=auth, mechanism=METHODS[auth]
    )


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("auth", ["scram-sha-256", "user"])
def test_user_stored_as_scram_sha_256_verifier(
    popbox: Starter, tls_files: TlsFiles, tmp_path: Path, mode: str, auth: str
) -> None:
    """A {SCRAM-SHA-256} secret (RFC 5802 StoredKey/ServerKey, no password) serves
    SCRAM-SHA-256 and USER/PASS."""
    made = subprocess.run(
        [sys.executable, "-m", "popbox", "pw", "-s", "SCRAM-SHA-256", "-p", "secret"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    secret = made.stdout.strip()
    assert secret.startswith("{SCRAM-SHA-256}"), secret
    server = start_tls(popbox, tls_files, secret)
    download_and_check(
        server, tmp_path, tls_files.ca_file, mode=mode, auth=auth, mechanism=METHODS[auth]
    )


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_a_client_trusting_another_ca_fails_the_handshake(
    popbox: Starter, tls_files: TlsFiles, tmp_path: Path, mode: str
) -> None:
    server = start_tls(popbox, tls_files)
    other = make_tls_files(tmp_path / "other", name="other")
    mark = log_mark(server)
    inbox = tmp_path / "inbox"
    result = mpop(server, tmp_path / "home", inbox, mode=mode, auth="user", trust=other.ca_file)
    assert result.returncode == EX_UNAVAILABLE, result.stderr + result.stdout
    assert "TLS certificate verification failed" in result.stderr
    assert delivered(server, inbox) == []
    no_login_since(server, mark, tls_files.client_context())

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

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TlsFiles, make_tls_files

from server_helpers import (
    PopboxServer,
    client_corpus,
    lf_form,
    log_mark,
    maildir_contents,
    no_login_since,
    tls_login_logged,
)

MPOP = shutil.which("mpop")
pytestmark = pytest.mark.skipif(MPOP is None, reason="mpop is not installed")

Starter = Callable[..., PopboxServer]
CORPUS = client_corpus()
ALL_MODES = ("none", "starttls", "implicit")
DELIVERY_ORDER = re.compile(r"\.M\d+P\d+Q(\d+)\.")

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


def start(popbox: Starter, tls_files: TlsFiles, secret: str = "{PLAIN}secret") -> PopboxServer:
    extra = 'plaintext = "never"\n' + tls_files.toml
    return popbox({"alice": secret}, {"alice": CORPUS}, extra=extra, listeners=ALL_MODES)


def added_header(server: PopboxServer) -> re.Pattern[bytes]:
    host = re.escape(server.host.encode())
    return re.compile(
        rb"Received: from " + host + rb"(?: \((?:[^\s()]+ )?\[" + host + rb"\]\)| \([^\s()]+\))?\n"
        rb"\tby \S+ \(mpop-[0-9.]+\) with POP3\n"
        rb"\tfor <[^>\n]+>; [^\n]+\n"
    )


def mpop(
    server: PopboxServer, home: Path, inbox: Path, *, mode: str, auth: str, trust: Path
) -> subprocess.CompletedProcess[str]:
    assert MPOP is not None
    home.mkdir(exist_ok=True)
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    conf = home / "mpoprc"
    conf.write_text(
        f"account default\nhost {server.host}\nport {server.ports[mode]}\n"
        f"tls on\ntls_starttls {'on' if mode == 'starttls' else 'off'}\n"
        f"tls_trust_file {trust}\n"
        f"auth {auth}\nuser alice\npassword secret\ndelivery maildir {inbox}\n"
        f"keep on\nonly_new off\nuidls_file {home / 'uidls'}\n"
    )
    conf.chmod(0o600)  # mpop refuses a configuration file holding a password others can read
    return subprocess.run(
        [MPOP, f"--file={conf}", "--quiet", "default"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def delivered(server: PopboxServer, inbox: Path) -> list[bytes]:
    """The files mpop delivered, in delivery order, each without its Received header."""
    files = sorted(
        (inbox / "new").iterdir(), key=lambda path: int(DELIVERY_ORDER.findall(path.name)[0])
    )
    pattern = added_header(server)
    messages = []
    for path in files:
        data = path.read_bytes()
        match = pattern.match(data)
        assert match, f"{path.name} lacks mpop's Received header: {data[:300]!r}"
        messages.append(data[match.end() :])
    return messages


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
        r"logout user=alice client=127\.0\.0\.1 reason=quit retrieved=8 deleted=0 ", start=mark
    )


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("auth", list(METHODS))
def test_every_method_downloads_every_message_over_tls(
    popbox: Starter, tls_files: TlsFiles, tmp_path: Path, mode: str, auth: str
) -> None:
    server = start(popbox, tls_files)
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
    server = start(popbox, tls_files, secret)
    download_and_check(
        server, tmp_path, tls_files.ca_file, mode=mode, auth=auth, mechanism=METHODS[auth]
    )


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_a_client_trusting_another_ca_fails_the_handshake(
    popbox: Starter, tls_files: TlsFiles, tmp_path: Path, mode: str
) -> None:
    server = start(popbox, tls_files)
    other = make_tls_files(tmp_path / "other", name="other")
    mark = log_mark(server)
    inbox = tmp_path / "inbox"
    result = mpop(server, tmp_path / "home", inbox, mode=mode, auth="user", trust=other.ca_file)
    assert result.returncode == EX_UNAVAILABLE, result.stderr + result.stdout
    assert "TLS certificate verification failed" in result.stderr
    assert delivered(server, inbox) == []
    no_login_since(server, mark, tls_files.client_context())

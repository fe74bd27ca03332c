"""curl as a real POP3 client over TLS (shared/STYLE.md item 8): `pop3s://` on the
implicit-TLS port (RFC 8314) and `pop3://` with `--ssl-reqd` on the STLS port (RFC 2595).

The server runs with `plaintext = "never"`, so a login that sends the password (USER,
PLAIN, LOGIN) only succeeds after TLS. curl writes message N as RETR carried it, CRLF line
ends and dot-stuffing removed, i.e. exactly `wire_form(stored)`, like the cleartext tests
in test_clients_curl.py. Several URLs in one curl run share one connection and one login.

Which mechanism curl uses (curl's lib/pop3.c, 7.88): without `--login-options` the
strongest SASL mechanism it knows from the CAPA list; curl has no SCRAM, so CRAM-MD5.
`AUTH=<MECH>` forces that SASL mechanism, `AUTH=+APOP` forces APOP.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Starter, TlsFiles, make_tls_files, start_tls

from curl_helpers import NEEDS_CURL, curl
from server_helpers import (
    PopboxServer,
    client_corpus,
    log_mark,
    maildir_contents,
    no_login_since,
    tls_login_logged,
    wire_form,
)

pytestmark = NEEDS_CURL

CORPUS = client_corpus()

# curl's exit codes (man curl, EXIT CODES).
CURLE_PEER_FAILED_VERIFICATION = 60
CURLE_USE_SSL_FAILED = 64  # "Requested SSL level failed": no STLS in CAPA


def url(server: PopboxServer, mode: str, path: str = "") -> str:
    """pop3s:// for implicit TLS, pop3:// (upgraded with STLS by --ssl-reqd) otherwise."""
    scheme = "pop3s" if mode == "implicit" else "pop3"
    return f"{scheme}://alice:secret@{server.host}:{server.ports[mode]}/{path}"


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
@pytest.mark.parametrize(
    ("login_options", "mechanism"),
    [
        (None, "CRAM-MD5"),
        ("AUTH=PLAIN", "PLAIN"),
        ("AUTH=LOGIN", "LOGIN"),
        ("AUTH=CRAM-MD5", "CRAM-MD5"),
        ("AUTH=+APOP", "APOP"),
    ],
)
def test_retr_every_message_byte_for_byte_over_tls(
    popbox: Starter,
    tls_files: TlsFiles,
    tmp_path: Path,
    *,
    mode: str,
    login_options: str | None,
    mechanism: str,
) -> None:
    server = start_tls(popbox, tls_files)
    mark = log_mark(server)
    outputs = [tmp_path / f"retr{n}" for n in range(1, len(CORPUS) + 1)]
    args = ["--cacert", str(tls_files.ca_file), "--ssl-reqd"]
    if login_options is not None:
        args += ["--login-options", login_options]
    for n, output in enumerate(outputs, 1):
        args += [url(server, mode, str(n)), "--output", str(output)]
    result = curl(*args)
    assert result.returncode == 0, result.stderr
    for n, (output, stored) in enumerate(zip(outputs, CORPUS, strict=True), 1):
        assert output.read_bytes() == wire_form(stored), f"message {n}"
    assert maildir_contents(server.maildir("alice")) == CORPUS
    tls_login_logged(server, mechanism, start=mark)
    server.log.wait_for(
        r"logout user=alice client=127\.0\.0\.1 reason=quit top=\d+/\d+ retr=8/\d+ del=0/",
        start=mark,
    )


def test_ssl_reqd_against_the_cleartext_listener_fails(
    popbox: Starter, tls_files: TlsFiles
) -> None:
    server = start_tls(popbox, tls_files)
    mark = log_mark(server)
    result = curl("--cacert", str(tls_files.ca_file), "--ssl-reqd", url(server, "none", "1"))
    assert (result.returncode, result.stdout) == (CURLE_USE_SSL_FAILED, b""), result.stderr
    # curl read CAPA (no STLS there) and hung up before sending any credentials.
    server.log.wait_for(r"logout user=- client=127\.0\.0\.1 reason=\w+ ", start=mark)
    with server.log.cond:
        lines = server.log.lines[mark:]
    assert not [line for line in lines if "login ok" in line or "tls client=" in line], lines


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_a_client_trusting_another_ca_fails_the_handshake(
    popbox: Starter, tls_files: TlsFiles, tmp_path: Path, mode: str
) -> None:
    server = start_tls(popbox, tls_files)
    other = make_tls_files(tmp_path / "other", name="other")
    mark = log_mark(server)
    result = curl("--cacert", str(other.ca_file), "--ssl-reqd", url(server, mode, "1"))
    assert (result.returncode, result.stdout) == (CURLE_PEER_FAILED_VERIFICATION, b"")
    no_login_since(server, mark, tls_files.client_context())

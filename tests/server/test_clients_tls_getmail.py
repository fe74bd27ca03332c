"""getmail6 (`getmail`, SimplePOP3SSLRetriever) over implicit TLS (RFC 8314) against
`popbox serve` (shared/STYLE.md item 8).

getmail6 6.18 has no STLS: SimplePOP3Retriever speaks cleartext only and no retriever
sends STLS, so only the implicit-TLS port is tested. With `ca_certs` getmail requires a
verified chain (CERT_REQUIRED) and then matches the certificate against `server`, here the
IP address entry 127.0.0.1 (getmailcore/_retrieverbases.py, ssl_match_hostname).

Delivery and the header fields getmail adds are as in test_clients_getmail.py, except that
the Received field says "with POP3-SSL" (the SSL retriever's received_with).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Starter, TlsFiles, make_tls_files, start_tls

import getmail_helpers
from getmail_helpers import NEEDS_GETMAIL, run_getmail
from server_helpers import (
    PopboxServer,
    client_corpus,
    lf_form,
    log_mark,
    maildir_contents,
    no_login_since,
    tls_login_logged,
)

pytestmark = NEEDS_GETMAIL

CORPUS = client_corpus()

GETMAIL_RETRIEVAL_FAILED = 127  # getmail's main(): go() reported a failed retriever


def getmail(
    server: PopboxServer, getmaildir: Path, outdir: Path, *, use_apop: bool, ca: Path
) -> subprocess.CompletedProcess[str]:
    return run_getmail(
        getmaildir,
        outdir,
        retriever="type = SimplePOP3SSLRetriever\n"
        f"server = {server.host}\nport = {server.ports['implicit']}\n"
        f"username = alice\npassword = secret\nuse_apop = {use_apop}\nca_certs = {ca}\n",
        options="read_all = true\ndelete = false\n",
    )


def delivered(server: PopboxServer, outdir: Path, ids: list[str]) -> list[bytes]:
    """The MDA's files in delivery order, each without the three fields getmail adds."""
    port = server.ports["implicit"]
    return getmail_helpers.delivered(server, outdir, ids, port=port, received_with="POP3-SSL")


@pytest.mark.parametrize(("use_apop", "mechanism"), [(False, "USER"), (True, "APOP")])
def test_pop3_ssl_downloads_every_message(
    popbox: Starter, tls_files: TlsFiles, tmp_path: Path, use_apop: bool, mechanism: str
) -> None:
    server = start_tls(popbox, tls_files)
    ids = sorted(path.name for path in (server.maildir("alice") / "new").iterdir())
    mark = log_mark(server)
    outdir = tmp_path / "out"
    result = getmail(server, tmp_path / "getmail", outdir, use_apop=use_apop, ca=tls_files.ca_file)
    assert result.returncode == 0, result.stderr + result.stdout
    assert delivered(server, outdir, ids) == [lf_form(m) for m in CORPUS]
    assert maildir_contents(server.maildir("alice")) == CORPUS
    tls_login_logged(server, mechanism, start=mark)
    server.log.wait_for(
        r"logout user=alice client=127\.0\.0\.1 reason=quit top=\d+/\d+ retr=8/\d+ del=0/",
        start=mark,
    )


def test_a_client_trusting_another_ca_fails_the_handshake(
    popbox: Starter, tls_files: TlsFiles, tmp_path: Path
) -> None:
    server = start_tls(popbox, tls_files)
    other = make_tls_files(tmp_path / "other", name="other")
    mark = log_mark(server)
    outdir = tmp_path / "out"
    result = getmail(server, tmp_path / "getmail", outdir, use_apop=False, ca=other.ca_file)
    assert result.returncode == GETMAIL_RETRIEVAL_FAILED, result.stderr + result.stdout
    assert "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed" in result.stderr
    assert delivered(server, outdir, []) == []
    no_login_since(server, mark, tls_files.client_context())

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

import re
import shutil
import subprocess
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
    numbering_mda,
    tls_login_logged,
)

GETMAIL = shutil.which("getmail")
pytestmark = pytest.mark.skipif(GETMAIL is None, reason="getmail6 is not installed")

Starter = Callable[..., PopboxServer]
CORPUS = client_corpus()
ALL_MODES = ("none", "starttls", "implicit")

GETMAIL_RETRIEVAL_FAILED = 127  # getmail's main(): go() reported a failed retriever

ADDED_FIELDS = re.compile(
    rb"Return-Path: <unknown>\nDelivered-To: unknown\nReceived: ([^\n]*(?:\n  [^\n]*)*)\n"
)


def start(popbox: Starter, tls_files: TlsFiles) -> PopboxServer:
    extra = 'plaintext = "never"\n' + tls_files.toml
    return popbox({"alice": "{PLAIN}secret"}, {"alice": CORPUS}, extra=extra, listeners=ALL_MODES)


def received_value(server: PopboxServer, unique_id: str) -> re.Pattern[bytes]:
    host = re.escape(server.host)
    port = server.ports["implicit"]
    date = r"\d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000"
    return re.compile(
        rf"from {host} \({host}:{port}\) by \S+ with POP3-SSL getmail6"
        rf" msgid:{re.escape(unique_id)}; {date}".encode()
    )


def getmail(
    server: PopboxServer, getmaildir: Path, outdir: Path, *, use_apop: bool, ca: Path
) -> subprocess.CompletedProcess[str]:
    assert GETMAIL is not None
    getmaildir.mkdir(exist_ok=True)
    rcfile = getmaildir / "getmailrc"
    rcfile.write_text(
        "[retriever]\ntype = SimplePOP3SSLRetriever\n"
        f"server = {server.host}\nport = {server.ports['implicit']}\n"
        f"username = alice\npassword = secret\nuse_apop = {use_apop}\nca_certs = {ca}\n"
        "[destination]\ntype = MDA_external\n"
        f"path = {numbering_mda(outdir)}\narguments = ({str(outdir)!r},)\n"
        "allow_root_commands = true\n"
        "[options]\nverbose = 0\nread_all = true\ndelete = false\n"
    )
    return subprocess.run(
        [GETMAIL, "--getmaildir", str(getmaildir), "--rcfile", str(rcfile)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def delivered(server: PopboxServer, outdir: Path, ids: list[str]) -> list[bytes]:
    """The MDA's files in delivery order, each without the three fields getmail adds."""
    files = sorted(outdir.iterdir())
    assert len(files) == len(ids), [path.name for path in files]
    messages = []
    for path, unique_id in zip(files, ids, strict=True):
        data = path.read_bytes()
        match = ADDED_FIELDS.match(data)
        assert match, f"{path.name} lacks getmail's fields: {data[:300]!r}"
        received = match.group(1).replace(b"\n  ", b" ")
        assert received_value(server, unique_id).fullmatch(received), received
        messages.append(data[match.end() :])
    return messages


@pytest.mark.parametrize(("use_apop", "mechanism"), [(False, "USER"), (True, "APOP")])
def test_pop3_ssl_downloads_every_message(
    popbox: Starter, tls_files: TlsFiles, tmp_path: Path, use_apop: bool, mechanism: str
) -> None:
    server = start(popbox, tls_files)
    ids = sorted(path.name for path in (server.maildir("alice") / "new").iterdir())
    mark = log_mark(server)
    outdir = tmp_path / "out"
    result = getmail(server, tmp_path / "getmail", outdir, use_apop=use_apop, ca=tls_files.ca_file)
    assert result.returncode == 0, result.stderr + result.stdout
    assert delivered(server, outdir, ids) == [lf_form(m) for m in CORPUS]
    assert maildir_contents(server.maildir("alice")) == CORPUS
    tls_login_logged(server, mechanism, start=mark)
    server.log.wait_for(
        r"logout user=alice client=127\.0\.0\.1 reason=quit retrieved=8 deleted=0 ", start=mark
    )


def test_a_client_trusting_another_ca_fails_the_handshake(
    popbox: Starter, tls_files: TlsFiles, tmp_path: Path
) -> None:
    server = start(popbox, tls_files)
    other = make_tls_files(tmp_path / "other", name="other")
    mark = log_mark(server)
    outdir = tmp_path / "out"
    result = getmail(server, tmp_path / "getmail", outdir, use_apop=False, ca=other.ca_file)
    assert result.returncode == GETMAIL_RETRIEVAL_FAILED, result.stderr + result.stdout
    assert "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed" in result.stderr
    assert delivered(server, outdir, []) == []
    no_login_since(server, mark, tls_files.client_context())

"""getmail6 as a real POP3 client: shared by test_clients_getmail.py and
test_clients_tls_getmail.py.

Delivery is `MDA_external` running `numbering_mda`; each file is the message after the
Return-Path, Delivered-To and (folded) Received fields getmail adds (see
test_clients_getmail.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from server_helpers import PopboxServer, numbering_mda, which_or_skip

GETMAIL, NEEDS_GETMAIL = which_or_skip("getmail", "getmail6")

ADDED_FIELDS = re.compile(
    rb"Return-Path: <unknown>\nDelivered-To: unknown\nReceived: ([^\n]*(?:\n  [^\n]*)*)\n"
)


def received_value(
    server: PopboxServer, unique_id: str, *, port: int, received_with: str
) -> re.Pattern[bytes]:
    host = re.escape(server.host)
    date = r"\d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000"
    return re.compile(
        rf"from {host} \({host}:{port}\) by \S+ with {received_with} getmail6"
        rf" msgid:{re.escape(unique_id)}; {date}".encode()
    )


def run_getmail(
    getmaildir: Path, outdir: Path, *, retriever: str, options: str
) -> subprocess.CompletedProcess[str]:
    """getmail once with RETRIEVER (the [retriever] section's lines) and OPTIONS (the
    [options] section's lines after `verbose = 0`), delivering to `numbering_mda`."""
    assert GETMAIL is not None
    getmaildir.mkdir(exist_ok=True)
    rcfile = getmaildir / "getmailrc"
    rcfile.write_text(
        f"[retriever]\n{retriever}"
        "[destination]\ntype = MDA_external\n"
        f"path = {numbering_mda(outdir)}\narguments = ({str(outdir)!r},)\n"
        "allow_root_commands = true\n"
        f"[options]\nverbose = 0\n{options}"
    )
    return subprocess.run(
        [GETMAIL, "--getmaildir", str(getmaildir), "--rcfile", str(rcfile)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def delivered(
    server: PopboxServer, outdir: Path, ids: list[str], *, port: int, received_with: str
) -> list[bytes]:
    """The MDA's files in delivery order, each without the three fields getmail adds."""
    files = sorted(outdir.iterdir())
    assert len(files) == len(ids), [path.name for path in files]
    messages = []
    for path, unique_id in zip(files, ids, strict=True):
        data = path.read_bytes()
        match = ADDED_FIELDS.match(data)
        assert match, f"{path.name} lacks getmail's fields: {data[:300]!r}"
        received = match.group(1).replace(b"\n  ", b" ")
        pattern = received_value(server, unique_id, port=port, received_with=received_with)
        assert pattern.fullmatch(received), received
        messages.append(data[match.end() :])
    return messages

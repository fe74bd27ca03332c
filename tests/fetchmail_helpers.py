"""fetchmail as a real POP3 client: shared by test_clients_fetchmail.py and
test_clients_tls_fetchmail.py.

fetchmail hands each message to `numbering_mda`, after exactly one Received header it adds
(the same in cleartext and over TLS; see test_clients_fetchmail.py).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from server_helpers import PopboxServer, numbering_mda, which_or_skip

FETCHMAIL, NEEDS_FETCHMAIL = which_or_skip("fetchmail")

FETCHMAIL_GOT_MAIL = 0


def added_header(server: PopboxServer) -> re.Pattern[bytes]:
    host = re.escape(server.host.encode())
    return re.compile(
        rb"Received: from " + host + rb" \[" + host + rb"\]\n"
        rb"\tby [^\s]+ with POP3 \(fetchmail-[0-9.]+\)\n"
        rb"\tfor <[^>\n]+@localhost> \(single-drop\); [^\n]+\n"
    )


def run_fetchmail(
    server: PopboxServer,
    home: Path,
    outdir: Path,
    *,
    port: int,
    protocol: str,
    auth: str,
    tls: str,
    options: tuple[str, ...],
) -> subprocess.CompletedProcess[str]:
    """fetchmail polling SERVER:PORT once; TLS ends the rc file's user line (TLS options)."""
    assert FETCHMAIL is not None
    home.mkdir(exist_ok=True)
    rcfile = home / "fetchmailrc"
    rcfile.write_text(
        f"poll {server.host} service {port} protocol {protocol} auth {auth}\n"
        f"  user alice password secret {tls}\n"
    )
    rcfile.chmod(0o600)  # fetchmail refuses a run control file others can read
    mda = f"{shlex.quote(str(numbering_mda(outdir)))} {shlex.quote(str(outdir))}"
    return subprocess.run(
        [
            FETCHMAIL,
            *("--fetchmailrc", str(rcfile), "--idfile", str(home / "fetchids")),
            *("--nosyslog", "--norewrite", *options, "--mda", mda),
        ],
        env={**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def delivered(server: PopboxServer, outdir: Path) -> list[bytes]:
    """The MDA's files in delivery order, each without fetchmail's Received header."""
    pattern = added_header(server)
    messages = []
    for path in sorted(outdir.iterdir()):
        data = path.read_bytes()
        match = pattern.match(data)
        assert match, f"{path.name} lacks fetchmail's Received header: {data[:300]!r}"
        messages.append(data[match.end() :])
    return messages

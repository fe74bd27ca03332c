"""mpop as a real POP3 client: shared by test_clients_mpop.py and test_clients_tls_mpop.py.

mpop delivers into a local Maildir, one file per message in new/, named
TIME.MmicrosecondsPpidQcounter.HOST (Q counting the delivery order), each file after
exactly one Received header mpop adds (see test_clients_mpop.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from server_helpers import PopboxServer, which_or_skip

MPOP, NEEDS_MPOP = which_or_skip("mpop")
DELIVERY_ORDER = re.compile(r"\.M\d+P\d+Q(\d+)\.")


def added_header(server: PopboxServer) -> re.Pattern[bytes]:
    host = re.escape(server.host.encode())
    return re.compile(
        rb"Received: from " + host + rb"(?: \((?:[^\s()]+ )?\[" + host + rb"\]\)| \([^\s()]+\))?\n"
        rb"\tby \S+ \(mpop-[0-9.]+\) with POP3\n"
        rb"\tfor <[^>\n]+>; [^\n]+\n"
    )


def run_mpop(
    server: PopboxServer,
    home: Path,
    inbox: Path,
    *,
    port: int,
    tls: str,
    auth: str,
    keep: bool,
    only_new: bool,
) -> subprocess.CompletedProcess[str]:
    """mpop's one account "default" at SERVER:PORT; TLS holds the mpoprc's tls lines."""
    assert MPOP is not None
    home.mkdir(exist_ok=True)
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    conf = home / "mpoprc"
    conf.write_text(
        f"account default\nhost {server.host}\nport {port}\n{tls}"
        f"auth {auth}\nuser alice\npassword secret\ndelivery maildir {inbox}\n"
        f"keep {'on' if keep else 'off'}\nonly_new {'on' if only_new else 'off'}\n"
        f"uidls_file {home / 'uidls'}\n"
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

"""mpop as a real POP3 client against `popbox serve` (shared/STYLE.md item 8).

mpop pipelines (popbox announces PIPELINING): USER and PASS go out together, and RETRs
several at a time. It delivers into a local Maildir (`delivery maildir DIR`), one file per
message in new/, named TIME.MmicrosecondsPpidQcounter.HOST, Q counting the delivery order.
Each file is the message with LF line ends, unstuffed, after exactly one header mpop adds
(`received_header on`, the default; mpop's pop3.c pop3_write_received_header):

    Received: from 127.0.0.1 (CANONICAL-NAME [127.0.0.1])
    <TAB>by LOCALHOST (mpop-VERSION) with POP3
    <TAB>for <LOCALUSER>; DATE

(the parenthesis is "(NAME [ADDR])", "(NAME)", "([ADDR])" or absent, after the resolver).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from server_helpers import (
    PopboxServer,
    client_corpus,
    lf_form,
    maildir_contents,
    write_maildir,
)

MPOP = shutil.which("mpop")
pytestmark = pytest.mark.skipif(MPOP is None, reason="mpop is not installed")

Starter = Callable[..., PopboxServer]
CORPUS = client_corpus()
DELIVERY_ORDER = re.compile(r"\.M\d+P\d+Q(\d+)\.")


def added_header(server: PopboxServer) -> re.Pattern[bytes]:
    host = re.escape(server.host.encode())
    return re.compile(
        rb"Received: from " + host + rb"(?: \((?:[^\s()]+ )?\[" + host + rb"\]\)| \([^\s()]+\))?\n"
        rb"\tby \S+ \(mpop-[0-9.]+\) with POP3\n"
        rb"\tfor <[^>\n]+>; [^\n]+\n"
    )


def mpop(
    server: PopboxServer, home: Path, inbox: Path, *, auth: str, keep: bool, only_new: bool
) -> subprocess.CompletedProcess[str]:
    assert MPOP is not None
    home.mkdir(exist_ok=True)
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    conf = home / "mpoprc"
    conf.write_text(
        f"account default\nhost {server.host}\nport {server.port}\ntls off\n"
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


@pytest.mark.parametrize(("auth", "keep"), [("user", True), ("apop", False)])
def test_downloads_every_message_then_keeps_or_deletes(
    popbox: Starter, tmp_path: Path, auth: str, keep: bool
) -> None:
    server = popbox({"alice": "{PLAIN}secret"}, {"alice": CORPUS})
    inbox = tmp_path / "inbox"
    result = mpop(server, tmp_path / "home", inbox, auth=auth, keep=keep, only_new=False)
    assert result.returncode == 0, result.stderr + result.stdout
    assert delivered(server, inbox) == [lf_form(m) for m in CORPUS]
    assert maildir_contents(server.maildir("alice")) == (CORPUS if keep else [])
    server.log.wait_for(rf"login ok user=alice client=\S+ mechanism={auth.upper()} ")
    deleted = 0 if keep else len(CORPUS)
    server.log.wait_for(rf"logout user=alice client=\S+ reason=quit retrieved=8 deleted={deleted} ")


def test_only_new_uses_the_uidls_file(popbox: Starter, tmp_path: Path) -> None:
    server = popbox({"alice": "{PLAIN}secret"}, {"alice": CORPUS[:3]})
    home = tmp_path / "home"  # holds the uidls file
    runs = [tmp_path / f"run{n}" for n in range(1, 4)]

    first = mpop(server, home, runs[0], auth="user", keep=True, only_new=True)
    assert first.returncode == 0, first.stderr + first.stdout
    assert delivered(server, runs[0]) == [lf_form(m) for m in CORPUS[:3]]

    second = mpop(server, home, runs[1], auth="user", keep=True, only_new=True)
    assert second.returncode == 0, second.stderr + second.stdout
    assert delivered(server, runs[1]) == []

    write_maildir(server.maildir("alice"), [CORPUS[3]], start=3)
    third = mpop(server, home, runs[2], auth="user", keep=True, only_new=True)
    assert third.returncode == 0, third.stderr + third.stdout
    assert delivered(server, runs[2]) == [lf_form(CORPUS[3])]
    assert maildir_contents(server.maildir("alice")) == CORPUS[:4]

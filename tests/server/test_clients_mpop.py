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

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mpop_helpers import NEEDS_MPOP, delivered, run_mpop
from server_helpers import (
    PopboxServer,
    client_corpus,
    lf_form,
    maildir_contents,
    write_maildir,
)

pytestmark = NEEDS_MPOP

Starter = Callable[..., PopboxServer]
CORPUS = client_corpus()


def mpop(
    server: PopboxServer, home: Path, inbox: Path, *, auth: str, keep: bool, only_new: bool
) -> subprocess.CompletedProcess[str]:
    return run_mpop(
        server,
        home,
        inbox,
        port=server.port,
        tls="tls off\n",
        auth=auth,
        keep=keep,
        only_new=only_new,
    )


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
    server.log.wait_for(
        rf"logout user=alice client=\S+ reason=quit top=\d+/\d+ retr=8/\d+ del={deleted}/"
    )


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

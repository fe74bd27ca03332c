"""fetchmail as a real POP3 client against `popbox serve` (shared/STYLE.md item 8).

fetchmail hands each message to an MDA (`numbering_mda`, which stores stdin byte for byte
as a numbered file). What the MDA receives is the message with LF line ends (fetchmail
strips the CR of each CRLF), unstuffed, preceded by exactly one header fetchmail adds,
three lines long:

    Received: from 127.0.0.1 [127.0.0.1]
    <TAB>by HOSTNAME with POP3 (fetchmail-VERSION)
    <TAB>for <LOCALUSER@localhost> (single-drop); DATE

`--norewrite` keeps fetchmail from rewriting addresses in the header, so nothing else
changes. `sslproto ''` stops fetchmail from sending STLS, which it otherwise tries even
when CAPA does not list it. fetchmail exits 0 when it delivered mail and 1 when there was
none (man fetchmail, EXIT CODES).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fetchmail_helpers import FETCHMAIL_GOT_MAIL, NEEDS_FETCHMAIL, delivered, run_fetchmail
from server_helpers import (
    PopboxServer,
    client_corpus,
    lf_form,
    maildir_contents,
    write_maildir,
)

pytestmark = NEEDS_FETCHMAIL

Starter = Callable[..., PopboxServer]
CORPUS = client_corpus()

FETCHMAIL_NO_MAIL = 1


def fetchmail(
    server: PopboxServer, home: Path, outdir: Path, *, protocol: str, options: tuple[str, ...]
) -> subprocess.CompletedProcess[str]:
    return run_fetchmail(
        server,
        home,
        outdir,
        port=server.port,
        protocol=protocol,
        auth="password",
        tls="sslproto ''",
        options=options,
    )


@pytest.mark.parametrize("protocol", ["POP3", "APOP"])
def test_keep_downloads_every_message_and_leaves_them(
    popbox: Starter, tmp_path: Path, protocol: str
) -> None:
    server = popbox({"alice": "{PLAIN}secret"}, {"alice": CORPUS})
    outdir = tmp_path / "out"
    result = fetchmail(server, tmp_path / "home", outdir, protocol=protocol, options=("--keep",))
    assert result.returncode == FETCHMAIL_GOT_MAIL, result.stderr + result.stdout
    assert delivered(server, outdir) == [lf_form(m) for m in CORPUS]
    assert maildir_contents(server.maildir("alice")) == CORPUS
    mechanism = {"POP3": "USER", "APOP": "APOP"}[protocol]
    server.log.wait_for(rf"login ok user=alice client=\S+ mechanism={mechanism} ")
    server.log.wait_for(r"logout user=alice client=\S+ reason=quit top=\d+/\d+ retr=8/\d+ del=0/")


def test_nokeep_deletes_every_message_at_quit(popbox: Starter, tmp_path: Path) -> None:
    server = popbox({"alice": "{PLAIN}secret"}, {"alice": CORPUS})
    outdir = tmp_path / "out"
    result = fetchmail(server, tmp_path / "home", outdir, protocol="APOP", options=("--nokeep",))
    assert result.returncode == FETCHMAIL_GOT_MAIL, result.stderr + result.stdout
    assert delivered(server, outdir) == [lf_form(m) for m in CORPUS]
    assert maildir_contents(server.maildir("alice")) == []
    server.log.wait_for(r"login ok user=alice client=\S+ mechanism=APOP ")
    # Without --keep fetchmail reads with "TOP n 99999999", not RETR: none count as RETR'd.
    server.log.wait_for(r"logout user=alice client=\S+ reason=quit top=\d+/\d+ retr=0/\d+ del=8/")


def test_uidl_fetches_only_new_mail(popbox: Starter, tmp_path: Path) -> None:
    server = popbox({"alice": "{PLAIN}secret"}, {"alice": CORPUS[:3]})
    home = tmp_path / "home"
    options = ("--keep", "--uidl")
    runs = [tmp_path / f"run{n}" for n in range(1, 4)]

    first = fetchmail(server, home, runs[0], protocol="POP3", options=options)
    assert first.returncode == FETCHMAIL_GOT_MAIL, first.stderr + first.stdout
    assert delivered(server, runs[0]) == [lf_form(m) for m in CORPUS[:3]]

    second = fetchmail(server, home, runs[1], protocol="POP3", options=options)
    assert second.returncode == FETCHMAIL_NO_MAIL, second.stderr + second.stdout
    assert delivered(server, runs[1]) == []

    write_maildir(server.maildir("alice"), [CORPUS[3]], start=3)
    third = fetchmail(server, home, runs[2], protocol="POP3", options=options)
    assert third.returncode == FETCHMAIL_GOT_MAIL, third.stderr + third.stdout
    assert delivered(server, runs[2]) == [lf_form(CORPUS[3])]
    assert maildir_contents(server.maildir("alice")) == CORPUS[:4]

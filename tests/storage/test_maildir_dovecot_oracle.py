"""UIDL continuity against the real Dovecot (shared/STYLE.md item 8: real peers as oracles).

A real Dovecot POP3 server lists a Maildir (and so writes its dovecot-uidlist); popbox then
opens the same Maildir with uidl_format="dovecot" and must list the very same unique-ids in
the same order. Messages Dovecot never saw get unique-ids none of Dovecot's can equal, even
after Dovecot runs again and numbers them itself.

Needs the Debian packages dovecot-core and dovecot-pop3d. Dovecot runs with a generated
config in a temporary directory, on a free loopback port; mail processes never run as root
(Dovecot refuses: "Mail access not allowed for root"), so as root the maildrop is handed to
`nobody` for Dovecot's turn.
"""

from __future__ import annotations

import asyncio
import os
import poplib
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from popbox.storage.maildir import MaildirStore

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVECOT_POP3 = Path("/usr/lib/dovecot/pop3")

pytestmark = pytest.mark.skipif(
    not (os.access(DOVECOT, os.X_OK) and DOVECOT_POP3.exists()),
    reason="needs Dovecot with POP3 (Debian: dovecot-core, dovecot-pop3d)",
)

USER, PASSWORD = "alice", "oracle-secret"
STARTUP_DEADLINE = 10.0


@dataclass(frozen=True)
class MailUser:
    """Who Dovecot's processes run as: the mail user never root."""

    name: str
    uid: int
    gid: int
    internal: str


def mail_user() -> MailUser:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return MailUser(me.pw_name, me.pw_uid, me.pw_gid, me.pw_name)
    nobody = pwd.getpwnam("nobody")
    return MailUser(nobody.pw_name, nobody.pw_uid, nobody.pw_gid, "root")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def dovecot_config(root: Path, maildir: Path, port: int, user: MailUser) -> str:
    """A minimal, self-contained Dovecot 2.3 config: POP3 only, plaintext on loopback."""
    return f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {user.internal}
default_login_user = {user.name}
first_valid_uid = {min(user.uid, 500)}
first_valid_gid = {min(user.gid, 1)}
mail_location = maildir:{maildir}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users
}}
userdb {{
  driver = static
  args = uid={user.uid} gid={user.gid} home={root}/home
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""


def give_to(path: Path, user: MailUser) -> None:
    if os.geteuid() != 0:
        return
    for directory, _, files in os.walk(path):
        os.chown(directory, user.uid, user.gid)
        for name in files:
            os.chown(os.path.join(directory, name), user.uid, user.gid)


@dataclass
class DovecotListing:
    uidls: list[str]
    sizes: list[int]


@contextmanager
def running_dovecot(root: Path, maildir: Path) -> Iterator[int]:
    """Start Dovecot on a free loopback port for the maildrop; yield the port."""
    user = mail_user()
    for sub in ("run", "state", "home"):
        (root / sub).mkdir(exist_ok=True)
    (root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
    give_to(maildir, user)
    give_to(root / "home", user)
    port = free_port()
    config = root / "dovecot.conf"
    config.write_text(dovecot_config(root, maildir, port, user))
    process = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(process, port, root)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def dovecot_listing(port: int) -> DovecotListing:
    """One POP3 session: UIDL and LIST as Dovecot answers them (this is also when Dovecot
    syncs the Maildir and writes its dovecot-uidlist)."""
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        client.user(USER)
        client.pass_(PASSWORD)
        _, uidl_lines, _ = client.uidl()
        _, list_lines, _ = client.list()
    finally:
        client.quit()
    numbered = [line.decode().split() for line in uidl_lines]
    assert [int(n) for n, _ in numbered] == list(range(1, len(numbered) + 1))
    return DovecotListing(
        uidls=[uidl for _, uidl in numbered],
        sizes=[int(line.split()[1]) for line in list_lines],
    )


def wait_for_port(process: subprocess.Popen[bytes], port: int, root: Path) -> None:
    """Poll connect() until Dovecot listens, with a deadline (no fixed sleep)."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            pass
        log = root / "dovecot.log"
        if process.poll() is not None or time.monotonic() > deadline:
            text = log.read_text() if log.exists() else "(no log)"
            raise AssertionError(f"Dovecot did not start listening on {port}:\n{text}")
        time.sleep(0.005)  # between connect attempts only


def lf_message(number: int, body_lines: int) -> bytes:
    lines = [f"From: sender{number}@example.org", f"Subject: message {number}", ""]
    lines += [f"line {n} of message {number}" for n in range(body_lines)]
    return ("\n".join(lines) + "\n").encode()


def wire_size(data: bytes) -> int:
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def write_corpus(maildir: Path) -> None:
    """20 messages as delivery agents and IMAP clients leave them: new/ ones with and
    without Postfix/Dovecot size fields, cur/ ones with flags, one CRLF message, one
    without a final line end."""
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for number in range(20):
        data = lf_message(number, number % 7)
        if number == 5:
            data = data.replace(b"\n", b"\r\n")
        if number == 7:
            # Dovecot's size (its W field) leaves out the CRLF a missing final line end
            # gets on the wire; popbox reports Dovecot's W as it reports a name's ,W=.
            data = data.rstrip(b"\n")
        base = f"{1_700_000_000 + number * 60}.M{number}P{4000 + number}.oracle"
        if number % 3 == 0:
            base += f",S={len(data)},W={wire_size(data)}"
        if number % 2:
            flags = ["", "S", "RS", "FS"][number % 4]
            (maildir / "cur" / f"{base}:2,{flags}").write_bytes(data)
        else:
            (maildir / "new" / base).write_bytes(data)


def deliver_more(maildir: Path, count: int) -> None:
    for number in range(100, 100 + count):
        data = lf_message(number, 2)
        (maildir / "new" / f"{1_800_000_000 + number}.M{number}P9.later").write_bytes(data)


def popbox_listing(root: Path) -> list[tuple[str, int]]:
    async def scenario() -> list[tuple[str, int]]:
        store = MaildirStore(str(root / "%u" / "Maildir"), uidl_format="dovecot")
        maildrop = await store.open(USER)
        try:
            return [(m.unique_id, m.octets) for m in maildrop.listing]
        finally:
            await maildrop.close()

    return asyncio.run(scenario())


def served_by_popbox(root: Path) -> tuple[list[str], list[int]]:
    """UIDL and LIST as a client sees them over POP3 from `popbox serve`."""
    from server_helpers import RUNNING, launch  # noqa: PLC0415

    home = root / "popbox"
    home.mkdir(exist_ok=True)
    (home / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    config = home / "popbox.toml"
    config.write_text(
        '[[listen]]\naddress = "127.0.0.1"\nport = 0\n'
        f'[mail]\nlocation = "maildir:{root}/%u/Maildir"\nuidl_format = "dovecot"\n'
        '[auth]\npasswd_file = "users"\n'
    )
    server = launch(home, config)
    try:
        client = poplib.POP3(server.host, server.port, timeout=30)
        client.user(USER)
        client.pass_(PASSWORD)
        uidls = [line.split()[1].decode() for line in client.uidl()[1]]
        sizes = [int(line.split()[1]) for line in client.list()[1]]
        client.quit()
    finally:
        RUNNING.remove(server)
        server.kill()
    return uidls, sizes


@pytest.fixture
def oracle_root() -> Iterator[Path]:
    # Not tmp_path: its parents are private to root, and Dovecot's mail user must reach it.
    root = Path(tempfile.mkdtemp(prefix="popbox-dovecot-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_popbox_serves_the_uidls_dovecot_served(oracle_root: Path) -> None:
    maildir = oracle_root / USER / "Maildir"
    maildir.parent.mkdir()
    maildir.parent.chmod(0o755)
    write_corpus(maildir)

    with running_dovecot(oracle_root, maildir) as port:
        dovecot = dovecot_listing(port)
        assert len(dovecot.uidls) == 20
        assert (maildir / "dovecot-uidlist").is_file()

        ours = popbox_listing(oracle_root)
        assert [uidl for uidl, _ in ours] == dovecot.uidls
        assert [octets for _, octets in ours] == dovecot.sizes
        # And the real `popbox serve` gives clients exactly what Dovecot gave them.
        assert served_by_popbox(oracle_root) == (dovecot.uidls, dovecot.sizes)

        # Three messages Dovecot never saw: fresh unique-ids, the old ones unchanged.
        deliver_more(maildir, 3)
        again = [uidl for uidl, _ in popbox_listing(oracle_root)]
        assert again[:20] == dovecot.uidls
        fresh = again[20:]
        assert len(set(again)) == 23
        assert not set(fresh) & set(dovecot.uidls)

        # Dovecot, asked again, numbers the three itself; none of its UIDLs names another
        # message in popbox's listing.
        give_to(maildir, mail_user())
        later = dovecot_listing(port)
        assert later.uidls[:20] == dovecot.uidls
        assert len(later.uidls) == 23
        assert not set(later.uidls[20:]) & set(again)
        assert [uidl for uidl, _ in popbox_listing(oracle_root)] == again

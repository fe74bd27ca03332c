"""Started as root with `user = "nobody"`: popbox binds, then runs as nobody, and the mail
it writes (LMTP deliveries, caches) belongs to nobody."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import smtplib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Starter, make_tls_files

from daemon_helpers import children, ids
from server_helpers import RawClient, launch, write_config, write_maildir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid)
MESSAGE = b"Subject: old\r\n\r\nalready here\r\n"
DELIVERED = b"Subject: new\r\n\r\ndelivered by LMTP\r\n"


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A directory nobody may enter (pytest's tmp_path lives under a 0700 directory)."""
    root = Path(tempfile.mkdtemp(prefix="popbox-privileges-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def setup_files(root: Path) -> Path:
    (root / "users").write_text("alice:{PLAIN}secret\n")
    (root / "users").chmod(0o644)
    write_maildir(root / "mail" / "alice" / "Maildir", [MESSAGE])
    for directory, dirs, files in os.walk(root / "mail"):
        for name in [directory, *(os.path.join(directory, f) for f in dirs + files)]:
            os.chown(name, NOBODY.pw_uid, NOBODY.pw_gid)
    return write_config(root, {"user": "nobody", "workers": 2}, extra="[lmtp]\nport = 0\n")


def test_root_binds_then_serves_and_delivers_as_user(popbox: Starter, shared_root: Path) -> None:
    server = launch(shared_root, setup_files(shared_root))  # popbox: cleans it up
    server.log.wait_for(
        rf"running as user=nobody \(uid {NOBODY.pw_uid}\) "
        rf"group={NOGROUP.gr_name} \(gid {NOGROUP.gr_gid}\)"
    )
    processes = [server.process.pid, *children(server.process.pid)]
    assert len(processes) == 3
    for pid in processes:
        uids, gids, groups = ids(pid)
        assert uids == [NOBODY.pw_uid] * 4
        assert gids == [NOGROUP.gr_gid] * 4
        # initgroups(3): the user's supplementary groups and the group.
        assert sorted(groups) == sorted(set(os.getgrouplist("nobody", NOGROUP.gr_gid)))
    lmtp_port = int(server.log.wait_for(r"lmtp listening on 127\.0\.0\.1:(\d+)").group(1))
    with smtplib.LMTP("127.0.0.1", lmtp_port) as lmtp:
        assert lmtp.sendmail("sender@example.org", ["alice"], DELIVERED) == {}
    maildir = server.maildir("alice")
    for path in (maildir / "new").iterdir():
        assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY.pw_uid, NOGROUP.gr_gid)
    client = RawClient(server)
    assert client.login("alice", "secret").startswith(b"+OK maildrop has 2 messages")
    client.send(b"RETR 2\r\n")
    assert client.read_multiline().endswith(b"\r\n\r\ndelivered by LMTP\r\n.\r\n")
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"QUIT").startswith(b"+OK")
    client.read_until_closed()
    assert len(os.listdir(maildir / "new")) + len(os.listdir(maildir / "cur")) == 1
    assert (maildir / "popbox-cache").stat().st_uid == NOBODY.pw_uid


def test_deliver_started_as_root_stores_as_user(shared_root: Path) -> None:
    """`popbox deliver` run by root (procmail, an admin, an MTA that runs commands as
    root) becomes `user` before storing: the new mail, and a maildrop it has to create,
    belong to nobody, so that `popbox serve` can read and remove them."""
    config = setup_files(shared_root)
    (shared_root / "users").write_text("alice:{PLAIN}secret\nbob:{PLAIN}pw\n")
    done = subprocess.run(
        [sys.executable, "-m", "popbox", "deliver", "--config", str(config), "alice", "bob"],
        input=DELIVERED,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"running as user=nobody (uid {NOBODY.pw_uid})" in done.stderr.decode()
    owner = (NOBODY.pw_uid, NOGROUP.gr_gid)
    for user in ("alice", "bob"):
        maildir = shared_root / "mail" / user / "Maildir"
        (delivered,) = [p for p in (maildir / "new").iterdir() if p.read_bytes() != MESSAGE]
        assert delivered.read_bytes() == b"Subject: new\n\ndelivered by LMTP\n"
        assert (delivered.stat().st_uid, delivered.stat().st_gid) == owner
    bob = shared_root / "mail" / "bob"
    created = [bob, *(bob / "Maildir" / sub for sub in ("", "new", "cur", "tmp"))]
    assert [(path.stat().st_uid, path.stat().st_gid) for path in created] == [owner] * 5


# Runs in a child Python that imports what it needs as root, then becomes nobody (this
# machine's Python may live where nobody cannot read), and asks popbox to switch users.
SWITCH_AS_NOBODY = """
import dataclasses, os, sys
from pathlib import Path
from popbox.config import ConfigError, load_config
from popbox.server.privileges import drop_privileges
config = load_config(Path(sys.argv[1]))
os.setgid(int(sys.argv[3]))
os.setuid(int(sys.argv[2]))
drop_privileges(config)  # already that user: nothing to do
try:
    drop_privileges(dataclasses.replace(config, user="daemon"))
except ConfigError as error:
    print(error)
"""


def test_without_root_only_the_same_user_is_accepted(shared_root: Path) -> None:
    config = setup_files(shared_root)
    argv = [str(config), str(NOBODY.pw_uid), str(NOGROUP.gr_gid)]
    result = subprocess.run(
        [sys.executable, "-c", SWITCH_AS_NOBODY, *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == (
        f"{config}: user: switching to user 'daemon' needs root (running as uid {NOBODY.pw_uid})\n"
    )


def test_a_tls_key_the_user_cannot_read_stops_the_start(shared_root: Path) -> None:
    config = setup_files(shared_root)
    tls = make_tls_files(shared_root / "tls")
    tls.private_key.chmod(0o600)  # root's alone, as certbot leaves it
    config.write_text(config.read_text().replace('tls = "none"', 'tls = "implicit"') + tls.toml)
    result = subprocess.run(
        [sys.executable, "-m", "popbox", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"popbox: {config}: tls: cannot load the certificate and key as user 'nobody': "
        "[Errno 13] Permission denied\n"
    )

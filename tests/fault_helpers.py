"""Store faults for the end-to-end tests (tests/server/test_store_*.py): real small
file systems and read-only mounts made with mount(8) (the tests run as root), a real
`popbox serve` over them, and LMTP / `popbox deliver` as the MTA would use them.

No mocks: a full disk is a 512 KiB tmpfs filled to the last page, a read-only store is a
read-only bind mount of the directory the test itself keeps writing through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from server_helpers import (
    PopboxServer,
    close_everything_started,
    launch,
    write_config,
)

USERS = {"alice": "{PLAIN}secret"}
SMALL_FS = "512k"
PAGE = os.sysconf("SC_PAGE_SIZE")
TEMP_FAILURE = (451, b"4.3.0 <alice> temporary failure")


def mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True, timeout=30)


@dataclass
class Mounts:
    """Mount points made by one test, unmounted (lazily, so a straggler cannot keep them)
    at its end, after its servers are gone."""

    made: list[Path] = field(default_factory=list)

    def tmpfs(self, directory: Path, size: str = SMALL_FS) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory))
        self.made.append(directory)
        return directory

    def bind(self, source: Path, view: Path) -> Path:
        """`view` shows `source` (make it read-only with remount(view, "ro"): `source`
        stays writable, as for another program that still writes there)."""
        view.mkdir(parents=True, exist_ok=True)
        mount("--bind", str(source), str(view))
        self.made.append(view)
        return view

    def remount(self, view: Path, mode: str) -> None:
        """Make a bind mount read-only ("ro") or writable again ("rw")."""
        mount("-o", f"remount,bind,{mode}", str(view))

    def unmount_all(self) -> None:
        while self.made:
            subprocess.run(["umount", "-l", str(self.made.pop())], check=False, timeout=30)


@contextlib.contextmanager
def mounts_for_test() -> Iterator[Mounts]:
    """A test's mounts; at its end, its servers and clients go first, then the mounts."""
    made = Mounts()
    try:
        yield made
    finally:
        close_everything_started()
        made.unmount_all()


def fill(directory: Path, leave: int = 0, name: str = "filler") -> Path:
    """Fill the file system of `directory` to the last page, then give `leave` octets
    back; the filler file, whose removal frees the space."""
    filler = directory / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"\0" * (64 * 1024)
    try:
        while True:
            try:
                os.write(fd, block if len(block) > 1 else b"\0")
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) <= PAGE:
                    break
                block = block[: len(block) // 2]
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


def free_octets(directory: Path) -> int:
    status = os.statvfs(directory)
    return status.f_bavail * status.f_frsize


def serve(root: Path, location: str, *, mail_extra: str = "") -> PopboxServer:
    """`popbox serve` with alice in a passwd-file, `[mail] location = location` and an
    LMTP listener."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "users").write_text("".join(f"{u}:{s}\n" for u, s in USERS.items()))
    config = write_config(root, {}, "[lmtp]\nport = 0\n", mail_extra=mail_extra)
    text = config.read_text().replace('"maildir:mail/%u/Maildir"', f'"{location}"')
    config.write_text(text)
    return launch(root, config)


def lmtp_port(server: PopboxServer) -> int:
    return int(server.log.wait_for(r"lmtp listening on 127\.0\.0\.1:(\d+)").group(1))


def lmtp_deliver(server: PopboxServer, message: bytes) -> tuple[int, bytes]:
    """One LMTP transaction for alice; her reply (code, text)."""
    with smtplib.LMTP("127.0.0.1", lmtp_port(server)) as lmtp:
        try:
            refused = lmtp.sendmail("sender@example.org", ["alice"], message)
        except smtplib.SMTPRecipientsRefused as exc:
            return exc.recipients["alice"]
        except smtplib.SMTPDataError as exc:
            error = exc.smtp_error
            return exc.smtp_code, error if isinstance(error, bytes) else error.encode()
        return refused.get("alice", (250, b""))


def popbox_deliver(server: PopboxServer, message: bytes) -> int:
    """`popbox deliver` for alice with the server's config; its exit status."""
    command = [
        *(sys.executable, "-m", "popbox", "deliver"),
        *("--config", str(server.root / "popbox.toml"), "alice"),
    ]
    done = subprocess.run(command, input=message, capture_output=True, timeout=30, check=False)
    return done.returncode


def retr(body: bytes) -> bytes:
    """The RETR reply body of a multi-line reply, unstuffed, without status and terminator."""
    return body.split(b"\r\n", 1)[1][: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative name: content)."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }

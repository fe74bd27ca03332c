"""How fast a big mbox opens, with and without its index (storage/mbox_index.py), against
Dovecot's mbox on the same file.

    python benchmarks/mbox_index.py [--messages 40000] [--no-dovecot]

Writes one mbox of N few-KB messages (40,000: about 100 MB) for popbox and a copy for
Dovecot, in a temporary directory (deleted afterwards). Then, for each server, one POP3
session (login, STAT, UIDL, LIST, QUIT; the client reads replies in bulk) in each state:
- first:    no index: the whole file is parsed;
- warm:     the index the first session wrote, its stamps settled (popbox: used as it is);
- appended: 10 messages delivered since (popbox: each indexed record's first octets
            checked, then only the new ones parsed).
A benchmark, not a test: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import servers  # noqa: E402
from maildir_100k import _Endpoint, message  # noqa: E402

from popbox.storage.mbox_index import FileStamp  # noqa: E402

USER = "big"
PASSWORD = "bench"
SEPARATOR = b"From sender@example.org  Thu Nov 26 12:00:00 2026\n"


def write_mbox(path: Path, count: int, start: int = 0) -> None:
    with path.open("ab") as file:
        for number in range(start, start + count):
            file.write(SEPARATOR + message(number) + b"\n")


def settle() -> None:
    """Let the file's last change be older than the index's settling time."""
    time.sleep(FileStamp.SETTLE_NS / 1e9 + 0.5)


def session(port: int) -> dict[str, float]:
    """Seconds to log in and for the whole session (STAT, UIDL, LIST, QUIT), read in bulk."""
    from server_helpers import RawClient  # noqa: PLC0415

    start = time.perf_counter()
    client = RawClient(_Endpoint("127.0.0.1", port), timeout=300)  # type: ignore[arg-type]
    assert client.command(b"USER " + USER.encode()).startswith(b"+OK")
    assert client.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK")
    login = time.perf_counter() - start
    assert client.command(b"STAT").startswith(b"+OK")
    for name in (b"UIDL", b"LIST"):
        client.send(name + b"\r\n")
        assert client.read_multiline().startswith(b"+OK")
    assert client.command(b"QUIT").startswith(b"+OK")
    client.close()
    return {"login": login, "total": time.perf_counter() - start}


def sessions(name: str, port: int, mbox: Path, count: int) -> list[tuple[str, str, float]]:
    rows = []
    for state in ("first", "warm", "appended"):
        if state == "appended":
            write_mbox(mbox, 10, start=count)
        steps = session(port)
        rows.append((name, state, steps["login"]))
        rows.append((name, f"{state}: whole session", steps["total"]))
        settle()
    return rows


def tls_files(root: Path) -> servers.TlsFiles:
    import trustme  # noqa: PLC0415

    issued = trustme.CA().issue_cert("127.0.0.1")
    tls = servers.TlsFiles(root / "cert.pem", root / "key.pem", root / "ca.pem")
    issued.private_key_pem.write_to_path(str(tls.key))
    issued.cert_chain_pems[0].write_to_path(str(tls.cert))
    return tls


def run(root: Path, count: int, *, dovecot: bool) -> int:
    (root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    popbox_mail = root / "popbox-mail"
    popbox_mail.mkdir()
    write_mbox(popbox_mail / USER, count)
    size = (popbox_mail / USER).stat().st_size
    rows: list[tuple[str, str, float]] = []
    if dovecot:
        servers.ensure_dovecot()
        dovecot_mail = root / "dovecot-mail" / USER
        dovecot_mail.mkdir(parents=True)
        shutil.copyfile(popbox_mail / USER, dovecot_mail / "inbox")
        user = servers.dovecot_mail_user()
        for path in (root / "dovecot-mail", dovecot_mail, dovecot_mail / "inbox"):
            os.chown(path, user.uid, user.gid)
    os.sync()
    settle()
    tls = tls_files(root)
    location = f"mbox:{popbox_mail}/%u"
    server = servers.start_popbox(
        root, popbox_mail, tls, workers=1, src=ROOT / "src", location=location
    )
    try:
        rows += sessions("popbox", server.port, popbox_mail / USER, count)
    finally:
        server.stop()
    if dovecot:
        location = f"mbox:{root}/dovecot-mail/%u:INBOX={root}/dovecot-mail/%u/inbox"
        server = servers.start_dovecot(root, root / "dovecot-mail", tls, 10, location)
        try:
            rows += sessions("Dovecot", server.port, dovecot_mail / "inbox", count)
        finally:
            server.stop()
    print(f"\none mbox of {count} messages, {size / 1e6:.0f} MB\n")
    print(f"{'server':<8}  {'session':<26}  {'seconds':>8}")
    print(f"{'-' * 8}  {'-' * 26}  {'-' * 8}")
    for name, what, seconds in rows:
        label = what if ":" in what else f"{what}: login"
        print(f"{name:<8}  {label:<26}  {seconds:8.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--no-dovecot", action="store_true", help="popbox only")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="popbox-bench-"))
    root.chmod(0o755)  # Dovecot's mail processes run as nobody
    try:
        return run(root, args.messages, dovecot=not args.no_dovecot)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

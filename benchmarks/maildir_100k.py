"""How fast a big Maildir opens: MaildirStore.open and a real `popbox serve` session.

    python benchmarks/maildir_100k.py [--messages 100000] [--no-server]

Creates two maildrops of N messages in a temporary directory (deleted afterwards):
- "named": Postfix/Dovecot-style names with ,S=<size>,W=<wire size>: no file is read;
- "plain": names without size fields: the first open counts every file's octets.
Then times MaildirStore.open without the popbox-cache (cold) and with it (warm), and a POP3
session over a real `popbox serve` (login, STAT, UIDL, LIST, read in bulk) for both cases.
"Cold" means "no popbox-cache": the files may still sit in the OS page cache.

A benchmark, not a test: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from popbox.storage.maildir import MaildirStore  # noqa: E402
from popbox.storage.maildir_cache import CACHE_FILE_NAME  # noqa: E402
from popbox.storage.maildir_listing import DirStamps  # noqa: E402

PASSWORD = "bench"
USERS = ("named", "plain")


def message(number: int) -> bytes:
    """A few-KB message with LF line ends, like an MDA stores it."""
    body = "".join(f"line {line} of message {number}: lorem ipsum dolor\n" for line in range(40))
    return (
        f"From: sender{number % 97}@example.org\nTo: user@example.org\n"
        f"Subject: benchmark message {number}\nMessage-ID: <{number}@bench.invalid>\n\n{body}"
    ).encode()


def fill(maildir: Path, count: int, *, size_fields: bool) -> None:
    """Messages as a delivery agent leaves them; every other one in cur/ with flags."""
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    fill_more(maildir, count, start=0, size_fields=size_fields)


def fill_more(maildir: Path, count: int, *, start: int, size_fields: bool) -> None:
    for number in range(start, start + count):
        data = message(number)
        base = f"{1_600_000_000 + number}.M{number % 1_000_000}P{os.getpid()}.bench"
        if size_fields:
            wire = len(data) + data.count(b"\n")
            base += f",S={len(data)},W={wire}"
        name = f"cur/{base}:2,S" if number % 2 else f"new/{base}"
        (maildir / name).write_bytes(data)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def open_once(store: MaildirStore, user: str) -> int:
    async def scenario() -> int:
        maildrop = await store.open(user)
        try:
            return len(maildrop.listing)
        finally:
            await maildrop.close()

    return asyncio.run(scenario())


def pop3_session(host: str, port: int, user: str) -> dict[str, float]:
    """Seconds for each step of one session, with a client that reads multi-line replies
    in bulk (poplib's line-by-line reading would measure poplib, not the server)."""
    from server_helpers import RawClient  # noqa: PLC0415

    steps: dict[str, float] = {}
    start = time.perf_counter()
    client = RawClient(_Endpoint(host, port), timeout=300)  # type: ignore[arg-type]
    assert client.login(user, PASSWORD).startswith(b"+OK")
    steps["login"] = time.perf_counter() - start
    for name in ("STAT", "UIDL", "LIST"):
        begin = time.perf_counter()
        client.send(name.encode() + b"\r\n")
        reply = client.read_line() if name == "STAT" else client.read_multiline()
        assert reply.startswith(b"+OK"), reply[:100]
        steps[name] = time.perf_counter() - begin
    client.command(b"QUIT")
    client.close()
    steps["total"] = time.perf_counter() - start
    return steps


class _Endpoint:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--no-server", action="store_true", help="skip the popbox serve runs")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="popbox-bench-"))
    try:
        return run(root, args.messages, server=not args.no_server)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, count: int, *, server: bool) -> int:
    mail = root / "mail"
    rows: list[tuple[str, str, float]] = []
    for user in USERS:
        maildir = mail / user / "Maildir"
        seconds = timed(partial(fill, maildir, count, size_fields=user == "named"))
        print(f"created {count} messages for {user!r} in {seconds:.1f} s", file=sys.stderr)
    # Measure a maildrop at rest: the kernel's write-back of 200,000 new files would
    # otherwise compete with the runs below.
    os.sync()
    store = MaildirStore(str(mail / "%u" / "Maildir"))
    for user in USERS:
        rows.append((user, "open, no cache (cold)", timed(partial(open_once, store, user))))
        rows.append((user, "open, cached (warm)", timed(partial(open_once, store, user))))
        fill_more(mail / user / "Maildir", 10, start=count, size_fields=user == "named")
        rows.append((user, "open, cached + 10 new", timed(partial(open_once, store, user))))
    if server:
        # Imported here: the test helpers need pytest, which compare.py (importing fill()
        # from this module) does not.
        from server_helpers import launch, write_config  # noqa: PLC0415

        # A maildrop at rest: new/ and cur/ last changed longer ago than DirStamps.SETTLE_NS,
        # so the cache written by the cold session may stand in for listing them.
        time.sleep(DirStamps.SETTLE_NS / 1e9 + 0.5)
        (root / "users").write_text("".join(f"{user}:{{PLAIN}}{PASSWORD}\n" for user in USERS))
        popbox = launch(root, write_config(root, {}))
        try:
            for user in USERS:
                (mail / user / "Maildir" / CACHE_FILE_NAME).unlink()
                for state in ("cold", "warm"):
                    steps = pop3_session(popbox.host, popbox.port, user)
                    for step, seconds in steps.items():
                        rows.append((user, f"serve {state}: {step}", seconds))
        finally:
            popbox.stop()
    print(f"\n{count} messages per maildrop (named: ,S=/,W= names; plain: no size fields)\n")
    print(f"{'maildrop':<8}  {'measurement':<28}  {'seconds':>8}")
    print(f"{'-' * 8}  {'-' * 28}  {'-' * 8}")
    for user, what, seconds in rows:
        print(f"{user:<8}  {what:<28}  {seconds:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

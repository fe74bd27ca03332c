"""SIGKILL at random moments, per store: nothing acknowledged is ever lost, no partial
message is ever visible, UIDLs never change, the maildrop lock is free after each kill
(tests/crash_harness.py).

The suite runs a few kills per store; `POPBOX_CRASH_KILLS=200 pytest
tests/server/test_crash_kill.py` is the full run (README, "Testing").
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from crash_harness import PASSWORD, USERS, Ledger, check_store, kill_rounds, make_message
from popbox.config import load_config
from popbox.db.startup import close_backends
from popbox.server.assembly import make_store
from popbox.storage.base import Maildrop, MaildropLocked, MaildropStore
from server_helpers import write_config

KILLS = int(os.environ.get("POPBOX_CRASH_KILLS", "5"))
_T = TypeVar("_T")
SEED = int(os.environ.get("POPBOX_CRASH_SEED", str(random.randrange(1 << 30))))

STORES = {
    "maildir": ("maildir:mail/%u/Maildir", ""),
    "mbox": ("mbox:mail/%u", 'mbox_format = "mboxrd"\n'),
    "postgresql": ("", ""),  # the test's own database (tests/pg_helpers.py)
}


def setup_server(root: Path, store: str, request: pytest.FixtureRequest) -> Path:
    location, mail_extra = STORES[store]
    if store == "postgresql":
        location = request.getfixturevalue("pg_url")
    (root / "users").write_text("".join(f"{user}:{{PLAIN}}{PASSWORD}\n" for user in USERS))
    (root / "mail").mkdir()
    config = write_config(root, {}, extra="[lmtp]\nport = 0\n")
    text = config.read_text().replace('"maildir:mail/%u/Maildir"\n', f'"{location}"\n' + mail_extra)
    config.write_text(text)
    return config


def with_store(config: Path, work: Callable[[MaildropStore], Awaitable[_T]]) -> _T:
    """Run `work` on a store made from the server's own config (a fresh one each time:
    a database pool belongs to one event loop), then close it."""

    async def run() -> _T:
        store = make_store(load_config(config))
        try:
            return await work(store)
        finally:
            await close_backends(store)

    return asyncio.run(run())


# How long a killed server's maildrop lock may outlive it. Files: not at all (the kernel
# drops the locks with the process). PostgreSQL: the advisory lock goes when the server
# ends the dead connection's backend, which it does when it sees the connection close;
# a backend busy with a statement sees it only when the statement ends.
LOCK_GRACE = {"maildir": 0.0, "mbox": 0.0, "postgresql": 5.0}


async def open_when_free(store: MaildropStore, user: str, grace: float) -> Maildrop:
    deadline = time.monotonic() + grace
    while True:
        try:
            return await store.open(user)
        except MaildropLocked:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)


async def read_all(store: MaildropStore, grace: float = 0.0) -> dict[str, dict[str, bytes]]:
    """Every user's messages by UIDL, read through the store (opening it proves the lock
    is free, after `grace` seconds at most: a held lock raises MaildropLocked)."""
    found: dict[str, dict[str, bytes]] = {}
    for user in USERS:
        maildrop = await open_when_free(store, user, grace)
        try:
            found[user] = {
                message.unique_id: b"".join([b async for b in maildrop.read(message.key)])
                for message in maildrop.listing
            }
        finally:
            await maildrop.close()
    return found


@pytest.mark.timeout(120 + KILLS * 15)
@pytest.mark.parametrize("store", list(STORES))
def test_sigkill_at_random_moments_loses_nothing(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    config = setup_server(tmp_path, store, request)
    ledger = Ledger()
    ledger.reset_round()
    rng = random.Random(SEED)
    initial = []
    for user in USERS:
        for _ in range(6):
            token = ledger.new_token()
            ledger.contents[token] = make_message(token, rng)
            initial.append((user, ledger.contents[token]))
            ledger.delivered[user].add(token)

    async def deliver_all(mail_store: MaildropStore) -> None:
        for user, data in initial:
            await mail_store.deliver(user, data)

    with_store(config, deliver_all)
    assert check_store(ledger, with_store(config, read_all)) == []
    grace = LOCK_GRACE[store]
    problems = kill_rounds(
        tmp_path,
        config,
        ledger,
        lambda: with_store(config, lambda mail_store: read_all(mail_store, grace)),
        kills=KILLS,
        seed=SEED,
    )
    assert problems == [], f"seed {SEED}: " + "\n".join(problems[:30])
    # The workload really ran: messages came and went.
    assert ledger.next_token > 18

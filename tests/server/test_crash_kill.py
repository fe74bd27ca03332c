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
from pathlib import Path

import pytest

from crash_harness import PASSWORD, USERS, Ledger, check_store, kill_rounds, make_message
from popbox.config import load_config
from popbox.server.app import make_store
from popbox.storage.base import MaildropStore
from server_helpers import write_config

KILLS = int(os.environ.get("POPBOX_CRASH_KILLS", "5"))
SEED = int(os.environ.get("POPBOX_CRASH_SEED", str(random.randrange(1 << 30))))

STORES = {
    "maildir": ("maildir:mail/%u/Maildir", ""),
    "mbox": ("mbox:mail/%u", 'mbox_format = "mboxrd"\n'),
}


def setup_server(root: Path, store: str) -> tuple[Path, MaildropStore]:
    location, mail_extra = STORES[store]
    (root / "users").write_text("".join(f"{user}:{{PLAIN}}{PASSWORD}\n" for user in USERS))
    (root / "mail").mkdir()
    config = write_config(root, {}, extra="[lmtp]\nport = 0\n")
    text = config.read_text().replace('"maildir:mail/%u/Maildir"\n', f'"{location}"\n' + mail_extra)
    config.write_text(text)
    return config, make_store(load_config(config))


def read_all(store: MaildropStore) -> dict[str, dict[str, bytes]]:
    """Every user's messages by UIDL, read through the store (opening it proves the lock
    is free: a held lock raises MaildropLocked)."""

    async def read() -> dict[str, dict[str, bytes]]:
        found: dict[str, dict[str, bytes]] = {}
        for user in USERS:
            maildrop = await store.open(user)
            try:
                found[user] = {
                    message.unique_id: b"".join([b async for b in maildrop.read(message.key)])
                    for message in maildrop.listing
                }
            finally:
                await maildrop.close()
        return found

    return asyncio.run(read())


@pytest.mark.timeout(120 + KILLS * 15)
@pytest.mark.parametrize("store", list(STORES))
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, store: str) -> None:
    config, mail_store = setup_server(tmp_path, store)
    ledger = Ledger()
    ledger.reset_round()
    rng = random.Random(SEED)
    for user in USERS:
        for _ in range(6):
            token = ledger.new_token()
            ledger.contents[token] = make_message(token, rng)
            asyncio.run(mail_store.deliver(user, ledger.contents[token]))
            ledger.delivered[user].add(token)
    assert check_store(ledger, read_all(mail_store)) == []
    problems = kill_rounds(
        tmp_path, config, ledger, lambda: read_all(mail_store), kills=KILLS, seed=SEED
    )
    assert problems == [], f"seed {SEED}: " + "\n".join(problems[:30])
    # The workload really ran: messages came and went.
    assert ledger.next_token > 18

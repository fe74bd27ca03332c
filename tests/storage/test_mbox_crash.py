"""Crash safety of UPDATE: a session killed with SIGKILL at random moments while it deletes
leaves the mbox exactly as it was before or after one of its rewrites, never a mix, and
never a lock that blocks the next session."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from test_mbox_support import child_env, record, run, store_at

from popbox.storage.mbox import MboxMaildrop

ROUNDS = 50
RECORDS = [
    record(b"Subject: m%d\nMessage-ID: <%d@x>\n\n" % (n, n) + (b"%d" % n) * 60_000 + b"\n")
    for n in range(5)
]

# One process forks ROUNDS sessions in turn. Each deletes the first message, again and
# again, recording a retrieval time before each UPDATE (so the sidecar is rewritten too);
# the parent kills it with SIGKILL after a random delay within the time a full run takes
# and reports what the file holds and whether a new session can open it.
_DRIVER = """
import asyncio, hashlib, json, os, random, signal, sys, time
from popbox.storage.mbox import MboxStore

root, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = MboxStore(root + "/%u")
path = root + "/alice"
with open(root + "/original", "rb") as file:
    original = file.read()

async def churn():
    while True:
        drop = await store.open("alice")
        keys = [info.key for info in drop.listing]
        if keys:
            await drop.record_retrievals(keys[:1], time.time())
            await drop.delete(keys[:1])
        await drop.close()
        if not keys:
            return

def reset():
    with open(path, "wb") as file:
        file.write(original)

async def listed():
    drop = await store.open("alice")
    await drop.close()
    return len(drop.listing)

def session():
    pid = os.fork()
    if pid == 0:
        try:
            asyncio.run(churn())
        finally:
            os._exit(0)
    return pid

reset()
started = time.monotonic()
os.waitpid(session(), 0)
full_run = time.monotonic() - started
rng = random.Random(seed)
for _ in range(rounds):
    reset()
    pid = session()
    time.sleep(rng.uniform(0, min(full_run, 0.15)))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with open(path, "rb") as file:
        content = file.read()
    temps = [n for n in os.listdir(root) if n.startswith(".alice.popbox-tmp.")]
    try:
        with open(path + ".popbox", "rb") as file:
            sidecar_ok = file.read().startswith(b"popbox-mbox-retrievals 1\\n")
    except FileNotFoundError:
        sidecar_ok = True
    print(json.dumps({
        "digest": hashlib.sha256(content).hexdigest(),
        "temps": len(temps),
        "listed": asyncio.run(listed()),
        "sidecar_ok": sidecar_ok,
    }), flush=True)
"""


def test_sigkill_during_update_leaves_old_or_new_content(tmp_path: Path) -> None:
    original = b"".join(RECORDS)
    (tmp_path / "original").write_bytes(original)
    states = {
        hashlib.sha256(b"".join(RECORDS[deleted:])).hexdigest(): deleted
        for deleted in range(len(RECORDS) + 1)
    }
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(tmp_path), str(ROUNDS), "1939"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rounds = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rounds) == ROUNDS
    for found in rounds:
        assert found["digest"] in states, found  # exactly one of the states, whole
        assert found["listed"] == len(RECORDS) - states[found["digest"]]  # lock was free
        assert found["sidecar_ok"]
    deleted = [states[found["digest"]] for found in rounds]
    assert any(0 < count < len(RECORDS) for count in deleted)
    # Some kills hit a rewrite in flight (its temporary file is all that is left of it).
    assert any(found["temps"] for found in rounds)

    # The next UPDATE cleans up what the killed ones left.
    async def delete_first(drop: MboxMaildrop) -> None:
        await drop.delete([drop.listing[0].key])

    (tmp_path / "alice").write_bytes(original)

    async def main() -> None:
        drop = await store_at(tmp_path).open("alice")
        try:
            await delete_first(drop)
        finally:
            await drop.close()

    run(main())
    assert not [name for name in os.listdir(tmp_path) if ".popbox-tmp." in name]
    assert (tmp_path / "alice").read_bytes() == b"".join(RECORDS[1:])

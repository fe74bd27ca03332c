"""Helpers shared by the mbox store tests (no tests here): stores, reads, and mbox files
written by the rules of the real writers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import TypeVar

import popbox
from popbox.protocol.encoder import MessageEncoder
from popbox.storage.mbox import MboxMaildrop, MboxStore
from popbox.storage.mbox_format import MboxFormat

_T = TypeVar("_T")

SRC_DIR = str(Path(popbox.__file__).resolve().parents[1])

# A separator line as Postfix local(8) writes it (two spaces before the date) and one as
# RFC 4155 and mutt write it.
POSTFIX_FROM = b"From alice@example.org  Sat Jan  3 01:05:34 1996\n"
MUTT_FROM = b"From bob@example.net Sun Jan  4 02:06:35 1996\n"


def run(coro: Awaitable[_T]) -> _T:
    async def main() -> _T:
        return await coro

    return asyncio.run(main())


def store_at(tmp_path: Path, mbox_format: MboxFormat = "mboxo", **options: float) -> MboxStore:
    return MboxStore(str(tmp_path / "%u"), mbox_format=mbox_format, **options)


def mbox_path(tmp_path: Path, user: str = "alice") -> Path:
    return tmp_path / user


def record(message: bytes, separator: bytes = POSTFIX_FROM) -> bytes:
    """One record as the writers append it: separator, message (ending in LF), empty line."""
    if message and not message.endswith(b"\n"):
        message += b"\n"
    return separator + message + b"\n"


async def read_all(drop: MboxMaildrop, key: str) -> list[bytes]:
    async with aclosing(drop.read(key)) as blocks:
        return [block async for block in blocks]


def with_drop(
    tmp_path: Path,
    body: Callable[[MboxMaildrop], Awaitable[_T]],
    mbox_format: MboxFormat = "mboxo",
    user: str = "alice",
) -> _T:
    async def main() -> _T:
        drop = await store_at(tmp_path, mbox_format).open(user)
        try:
            return await body(drop)
        finally:
            await drop.close()

    return asyncio.run(main())


def messages_of(tmp_path: Path, mbox_format: MboxFormat = "mboxo") -> list[bytes]:
    """Every listed message, read back whole."""

    async def body(drop: MboxMaildrop) -> list[bytes]:
        return [b"".join(await read_all(drop, info.key)) for info in drop.listing]

    return with_drop(tmp_path, body, mbox_format)


def wire_size(blocks: list[bytes]) -> int:
    """Octets the encoder sends for these blocks, without the final ".\\r\\n" and the
    byte-stuffing dots (RFC 1939 section 11 does not count them)."""
    encoder = MessageEncoder()
    wire = b"".join(encoder.feed(block) for block in blocks) + encoder.finish()
    body = wire.removesuffix(b".\r\n")
    stuffed = body.count(b"\r\n..") + (1 if body.startswith(b"..") else 0)
    return len(body) - stuffed


# Holds the mbox open in another process until its stdin closes.
_HOLDER = """
import asyncio, sys
from popbox.storage.mbox import MboxStore

async def main():
    drop = await MboxStore(sys.argv[1]).open(sys.argv[2])
    print("locked", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await drop.close()

asyncio.run(main())
"""


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC_DIR)


@contextmanager
def holder(tmp_path: Path, user: str = "alice") -> Iterator[subprocess.Popen[str]]:
    """Another process with the user's mbox open (both locks held)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "%u"), user],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "locked\n"
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()

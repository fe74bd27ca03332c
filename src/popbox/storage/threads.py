"""Blocking store work off the event loop without leaking what it acquires."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

_T = TypeVar("_T")


async def in_thread_owned(func: Callable[[], _T], dispose: Callable[[_T], None]) -> _T:
    """Run `func` in a worker thread; if we are cancelled meanwhile, `dispose` of what it
    returns (a lock, a file descriptor) once it finishes, instead of leaking it."""
    future = asyncio.get_running_loop().run_in_executor(None, func)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(partial(_dispose_result, dispose))
        raise


def _dispose_result(dispose: Callable[[_T], None], future: asyncio.Future[_T]) -> None:
    if not future.cancelled() and future.exception() is None:
        dispose(future.result())


async def in_thread_reading(fd: int, func: Callable[[], _T]) -> _T:
    """Run `func`, which reads the open `fd`, in a worker thread. If we are cancelled
    meanwhile, `fd` is closed once the worker is done (its number must not be reused
    under the worker's feet) and CancelledError raised: the caller must not close it."""
    future = asyncio.get_running_loop().run_in_executor(None, func)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(partial(_close_when_done, fd))
        raise


def _close_when_done(fd: int, future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a read error after cancellation is not news
    os.close(fd)

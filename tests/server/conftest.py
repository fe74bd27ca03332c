from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server_helpers import OPEN_CLIENTS, RUNNING, PopboxServer, start_popbox

Starter = Callable[..., PopboxServer]


@pytest.fixture
def popbox(tmp_path: Path) -> Iterator[Starter]:
    """start(users, mail, **top_level_config) -> a running `popbox serve`."""
    started: list[PopboxServer] = []

    def start(
        users: dict[str, str],
        mail: dict[str, list[bytes]] | None = None,
        *,
        extra: str = "",
        **top: object,
    ) -> PopboxServer:
        root = tmp_path / f"server{len(started)}"
        server = start_popbox(root, users, mail, top, extra)
        started.append(server)
        return server

    yield start
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()
    while RUNNING:
        RUNNING.pop().kill()

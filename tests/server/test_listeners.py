"""Listeners whose accepted sockets send small replies at once (TCP_NODELAY)."""

from __future__ import annotations

import socket
from pathlib import Path

from popbox.config import load_config
from popbox.server.listeners import bind_listeners


def test_accepted_pop3_sockets_have_tcp_nodelay(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("alice:{PLAIN}secret\n")
    config_file = tmp_path / "popbox.toml"
    config_file.write_text(
        '[[listen]]\naddress = "127.0.0.1"\nport = 0\n'
        '[[listen]]\naddress = "::1"\nport = 0\n'
        f'[auth]\npasswd_file = "{tmp_path}/passwd"\n'
        f'[mail]\nlocation = "maildir:{tmp_path}/%u"\n'
    )
    bound = bind_listeners(load_config(config_file))
    try:
        assert len(bound.pop3) == 2
        for entry in bound.pop3:
            listening = entry.sock
            with socket.create_connection(listening.getsockname()[:2]) as client:
                listening.setblocking(True)
                accepted, _ = listening.accept()
                with accepted:
                    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    finally:
        bound.close()

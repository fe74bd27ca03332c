"""A log reader that does not keep up (a full pipe to journald or a container runtime)
never stalls sessions: `popbox serve` writes its log from a thread (popbox/logsetup.py)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from server_helpers import LISTENING, READY, write_config

SESSIONS = 600  # two log lines each, about 150 KB: more than a 64 KiB pipe holds


def test_sessions_go_on_while_nobody_reads_the_log(tmp_path: Path) -> None:
    (tmp_path / "users").write_text("alice:{PLAIN}secret\n")
    config = write_config(tmp_path, {})
    process = subprocess.Popen(
        [sys.executable, "-m", "popbox", "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = 0
        for line in process.stdout:  # up to "ready"; then the pipe is left unread
            if found := LISTENING.search(line):
                port = int(found.group(2))
            if READY.search(line):
                break
        assert port
        began = time.monotonic()
        for _ in range(SESSIONS):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                assert client.recv(200).startswith(b"+OK POP3 server ready")
                client.sendall(b"QUIT\r\n")
                assert client.recv(200) == b"+OK POP3 server signing off\r\n"
        served = time.monotonic() - began
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    # Nothing was lost either: every session's lines were written once the pipe was read.
    assert rest.count(" logout user=") == SESSIONS, rest[-2000:]
    assert rest.count(" connect client=127.0.0.1") == SESSIONS
    assert "log records dropped" not in rest
    assert served < 60

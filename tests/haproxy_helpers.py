"""Start a real HAProxy (Debian's haproxy) in front of `popbox serve`, on loopback ports.

HAProxy cannot report a port it chose, so the tests pick free ports first (bind port 0,
read it, release it); the config is checked with `haproxy -c`, then haproxy runs in the
foreground (`-db`) with its log on stderr, and the test waits until every frontend port
is listening in the kernel's table (no probe connection that would reach popbox).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from server_helpers import LogWatcher

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

# Settings every test config shares: TCP mode, short connect timeout, and a log on stderr
# that the tests read (server state changes such as "Server popbox/a is DOWN").
GLOBAL = """\
global
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port (or any address), per /proc/net/tcp?"""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] in wanted and fields[3] == "0A":  # 0A: TCP_LISTEN
            return True
    return False


@dataclass
class HAProxy:
    process: subprocess.Popen[str]
    log: LogWatcher
    config: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


RUNNING: list[HAProxy] = []


def start_haproxy(directory: Path, text: str, ports: list[int]) -> HAProxy:
    """Run haproxy with config `text` and wait until `ports` listen."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "haproxy.cfg"
    config.write_text(text)
    check = subprocess.run(
        [HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen(
        [HAPROXY, "-f", str(config), "-db"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watcher = LogWatcher()
    threading.Thread(target=watcher.follow, args=(process.stdout,), daemon=True).start()
    haproxy = HAProxy(process, watcher, config)
    RUNNING.append(haproxy)
    deadline = time.monotonic() + 15
    while not all(listening(port) for port in ports):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("haproxy did not start:\n" + "\n".join(watcher.lines))
        time.sleep(0.02)  # polling the kernel's table: the port listening is the event
    return haproxy


@pytest.fixture
def haproxy_runs() -> object:
    """Stops every haproxy a test started."""
    yield start_haproxy
    while RUNNING:
        RUNNING.pop().stop()

"""Start the real `popbox serve` as a subprocess on a free port and watch its log.

No fixed ports and no sleeps (shared/STYLE.md item 8): the server binds port 0 and the
test reads the port from its "listening on" log line; waits are on log lines or sockets.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOSTNAME = "test.popbox.invalid"
LISTENING = re.compile(r"listening on (\S+):(\d+) \(tls=(\w+)(, proxy_protocol)?\)")
# The "ready" line in the text and in the JSON log format.
READY = re.compile(r'popbox\.server(?:: |", "message": ")ready\b')


@dataclass
class LogWatcher:
    lines: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False

    def follow(self, stream: io.TextIOWrapper) -> None:
        """Collect the lines of a process's output (a text pipe) until it ends. Read in
        chunks of up to 64 KiB, one lock and one wake-up per chunk: a server under a
        connect flood writes thousands of lines a second, and a reader taking the GIL
        once per line would slow this process's own clients (the hostile-clients test
        times an honest client here)."""
        pending = b""
        fd = stream.fileno()  # nothing else reads the stream
        while chunk := os.read(fd, 65536):
            *complete, pending = (pending + chunk).split(b"\n")
            if complete:
                lines = [line.decode(errors="replace") for line in complete]
                with self.cond:
                    self.lines.extend(lines)
                    self.cond.notify_all()
        with self.cond:
            if pending:
                self.lines.append(pending.decode(errors="replace"))
            self.closed = True
            self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    text = "\n".join(self.lines)
                    raise AssertionError(f"no log line matching {pattern!r}:\n{text}")
                self.cond.wait(remaining)

    def wait_count(self, pattern: str, count: int, timeout: float = 15.0) -> None:
        """Wait until `count` lines match `pattern`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.count(pattern) < count:
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    text = "\n".join(self.lines)
                    raise AssertionError(f"fewer than {count} lines match {pattern!r}:\n{text}")
                self.cond.wait(remaining)

    def count(self, pattern: str) -> int:
        with self.cond:
            return sum(1 for line in self.lines if re.search(pattern, line))


@dataclass
class PopboxServer:
    root: Path
    process: subprocess.Popen[str]
    log: LogWatcher
    port: int
    host: str = "127.0.0.1"
    # Every listener's port by its tls mode ("none", "starttls", "implicit").
    ports: dict[str, int] = field(default_factory=dict)
    # The same for listeners with proxy_protocol = true.
    proxy_ports: dict[str, int] = field(default_factory=dict)

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user / "Maildir"

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL to the process group: the server and any worker processes."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def write_maildir(maildir: Path, messages: list[bytes], *, start: int = 0) -> list[str]:
    """Deliver like a Maildir MDA: write to tmp/, rename into new/. Returns the names."""
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for number, data in enumerate(messages, start):
        name = f"{1_700_000_000 + number}.M{number}P{os.getpid()}.testhost"
        (maildir / "tmp" / name).write_bytes(data)
        os.rename(maildir / "tmp" / name, maildir / "new" / name)
        names.append(name)
    return names


def write_config(
    root: Path,
    top: dict[str, object],
    extra: str = "",
    listeners: tuple[str, ...] = ("none",),
    mail_extra: str = "",
) -> Path:
    """A config on free ports: one [[listen]] per tls mode in `listeners`; `extra` is TOML
    that follows the [auth] keys (more [auth] keys, then other tables); `mail_extra` is
    more [mail] keys. Short test failure delays unless `extra` sets its own.

    One process (`workers = 1`) unless `top` says otherwise: this is what most tests are
    about, and it keeps [limits] and throttling (per process) exact; and no drain on
    SIGTERM (`shutdown_timeout = 0`) unless a test gives one."""
    settings: dict[str, object] = {
        "hostname": HOSTNAME,
        "idle_timeout": 600,
        "workers": 1,
        "shutdown_timeout": 0,
    } | top
    lines = [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in settings.items()]
    lines = [line.replace("'", '"') for line in lines]
    listen = "".join(
        f'[[listen]]\naddress = "127.0.0.1"\nport = 0\ntls = "{mode}"\n' for mode in listeners
    )
    defaults = "".join(
        f"{key} = 0.3\n"
        for key in ("failure_delay", "failure_delay_max")
        if not re.search(rf"^{key}\s*=", extra, re.MULTILINE)
    )
    config = root / "popbox.toml"
    config.write_text(
        "\n".join(lines)
        + "\n"
        + listen
        + '[mail]\nlocation = "maildir:mail/%u/Maildir"\n'
        + mail_extra
        + '[auth]\npasswd_file = "users"\n'
        + defaults
        + extra
    )
    return config


def start_popbox(
    root: Path,
    users: dict[str, str],
    mail: dict[str, list[bytes]] | None = None,
    *,
    top: dict[str, object] | None = None,
    extra: str = "",
    listeners: tuple[str, ...] = ("none",),
    mail_extra: str = "",
    env: dict[str, str] | None = None,
) -> PopboxServer:
    """Write users, Maildirs and a config (top-level keys, extra TOML tables), then launch
    (with `env` added to the environment)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "users").write_text("".join(f"{u}:{s}\n" for u, s in users.items()))
    for user, messages in (mail or {}).items():
        write_maildir(root / "mail" / user / "Maildir", messages)
    config = write_config(root, top or {}, extra, listeners, mail_extra)
    return launch(root, config, env)


def launch(root: Path, config: Path, env: dict[str, str] | None = None) -> PopboxServer:
    """`popbox serve` in its own process group (kill() takes its workers too); `env` is
    added to the environment."""
    process = subprocess.Popen(
        [sys.executable, "-m", "popbox", "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=None if env is None else os.environ | env,
        start_new_session=True,
    )
    watcher = LogWatcher()
    threading.Thread(target=watcher.follow, args=(process.stdout,), daemon=True).start()
    server = PopboxServer(root, process, watcher, 0)
    RUNNING.append(server)
    watcher.wait_for(LISTENING.pattern)
    watcher.wait_for(READY.pattern)
    for line in watcher.lines:
        if found := LISTENING.search(line):
            server.host = found.group(1)
            ports = server.proxy_ports if found.group(4) else server.ports
            ports[found.group(3)] = int(found.group(2))
    server.port = next(iter([*server.ports.values(), *server.proxy_ports.values()]))
    return server


# Everything started by a test, for the fixture to clean up whatever the test did.
RUNNING: list[PopboxServer] = []


OPEN_CLIENTS: list[RawClient] = []


def close_everything_started() -> None:
    """What a test left open: its RawClients, then its popbox processes (killed)."""
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()
    while RUNNING:
        RUNNING.pop().kill()


class RawClient:
    """A bare POP3 client over a socket, for exact bytes on the wire."""

    def __init__(
        self,
        server: PopboxServer,
        timeout: float = 10.0,
        port: int | None = None,
        tls: ssl.SSLContext | None = None,
        source: str | None = None,
        *,
        preamble: bytes = b"",
    ) -> None:
        import socket  # noqa: PLC0415

        address = (server.host, port or server.port)
        bind = None if source is None else (source, 0)  # e.g. 127.0.0.2: another client
        self.sock = socket.create_connection(address, timeout=timeout, source_address=bind)
        if preamble:  # what a proxy sends first: a PROXY protocol header
            self.sock.sendall(preamble)
        if tls is not None:  # implicit TLS (RFC 8314): the handshake comes first
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        OPEN_CLIENTS.append(self)
        self.buffer = b""
        self.greeting = self.read_line()

    def starttls(self, context: ssl.SSLContext) -> None:
        """After +OK to STLS: the handshake on the same socket (RFC 2595 section 4)."""
        assert not self.buffer, self.buffer
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(self.buffer)
        self.buffer += chunk

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def read_multiline(self) -> bytes:
        """A status line; if +OK, everything up to and including CRLF.CRLF."""
        status = self.read_line()
        if not status.startswith(b"+OK"):
            return status
        buf = bytearray(self.buffer)
        if buf.startswith(b".\r\n"):  # an empty body: the terminator comes first
            self.buffer = bytes(buf[3:])
            return status + b".\r\n"
        scanned = 0
        while (end := buf.find(b"\r\n.\r\n", max(0, scanned - 4))) < 0:
            scanned = len(buf)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError(bytes(buf))
            buf += chunk
        self.buffer = bytes(buf[end + 5 :])
        return status + bytes(buf[: end + 5])

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.read_line()

    def login(self, user: str, password: str) -> bytes:
        assert self.command(b"USER " + user.encode()) == b"+OK send PASS\r\n"
        return self.command(b"PASS " + password.encode())

    def read_until_closed(self) -> bytes:
        while True:
            try:
                self._fill()
            except EOFError:
                data, self.buffer = self.buffer, b""
                return data

    def close(self) -> None:
        self.sock.close()


def crlf(data: bytes) -> bytes:
    """The wire form of a stored message (RFC 1939 section 11), before stuffing."""
    wire = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return wire + b"\r\n" if wire and not wire.endswith(b"\r\n") else wire


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --- Real POP3 clients (tests/server/test_clients_*.py) ---------------------------------


def which_or_skip(
    program: str, package: str | None = None
) -> tuple[str | None, pytest.MarkDecorator]:
    """PROGRAM's path (None if absent) and a `pytestmark` that skips the module without it."""
    path = shutil.which(program)
    reason = f"{package or program} is not installed"
    return path, pytest.mark.skipif(path is None, reason=reason)


# The ~2 MiB message spans many of the server's 64 KiB storage blocks; every 7th line
# starts with "." so byte-stuffing happens on both sides of block boundaries.
BIG_MESSAGE_OCTETS = 2 * 1024 * 1024


def client_corpus() -> list[bytes]:
    """Stored messages, oldest first, covering the wire edges (shared/STYLE.md item 7)."""
    big_lines = []
    size = 0
    number = 0
    while size < BIG_MESSAGE_OCTETS:
        dot = b"." if number % 7 == 0 else b""
        line = dot + b"%06d " % number + b"abcdefghijklmnopqrstuvwxyz" * (number % 5 + 1) + b"\n"
        big_lines.append(line)
        size += len(line)
        number += 1
    header = b"From: alice@example.org\nSubject: "
    return [
        b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: CRLF message\r\n"
        b"\r\nLine one.\r\nLine two.\r\n",
        header + b"LF-only message\n\nLine one.\nLine two.\n",
        header + b"dots\n\n.leading dot\n..two dots\n.\n..\nafter the lone dot\n.",
        header + b"no final newline\n\nlast line has no newline",
        header + b"empty body\n\n",
        header + b"big\n\n" + b"".join(big_lines),
        header + b"8-bit\nContent-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: 8bit\n\n"
        + "Grüße, naïve café, 日本語\n".encode()
        + b"latin-1: caf\xe9 \xfc\xdf\n",
        header + b"998-octet line\n\n" + b"x" * 998 + b"\nshort line\n",
    ]


def wire_form(stored: bytes) -> bytes:
    """A message as RETR carries it, unstuffed (RFC 1939 section 3): every line end CRLF
    (a bare LF gains a CR) and a CRLF added after a last line that lacks one."""
    data = re.sub(rb"\r?\n", b"\r\n", stored)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def lf_form(stored: bytes) -> bytes:
    """The wire form with LF line ends, as MDAs and Maildir deliveries store it."""
    return wire_form(stored).replace(b"\r\n", b"\n")


def maildir_contents(maildir: Path) -> list[bytes]:
    """The messages in new/ and cur/, ordered by base name (the delivery order here)."""
    files = [*(maildir / "new").iterdir(), *(maildir / "cur").iterdir()]
    files.sort(key=lambda path: path.name.split(":")[0])
    return [path.read_bytes() for path in files]


def numbering_mda(directory: Path) -> Path:
    """An MDA script: `SCRIPT DIR` stores stdin byte for byte as DIR/0001, DIR/0002, ..."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory.parent / f"{directory.name}-mda.sh"
    script.write_text(
        '#!/bin/sh\nset -e\nn=$(($(ls "$1" | wc -l) + 1))\ncat > "$1/$(printf %04d "$n")"\n'
    )
    script.chmod(0o700)
    return script


# --- Real POP3 clients over TLS (tests/server/test_clients_tls_*.py) ----------------------

TLS_LOGGED = re.compile(r"tls client=127\.0\.0\.1 version=(TLSv1\.[23]) cipher=\S+")


def log_mark(server: PopboxServer) -> int:
    """Where the log stands now: a `start` for looking only at what a client does next."""
    with server.log.cond:
        return len(server.log.lines)


def tls_login_logged(
    server: PopboxServer, mechanism: str, *, start: int, user: str = "alice"
) -> str:
    """Wait for a login with exactly `mechanism` logged after line `start`, check that a
    TLS handshake was logged between `start` and it, and return that TLS version."""
    login = rf"login ok user={user} client=127\.0\.0\.1 mechanism={re.escape(mechanism)} "
    server.log.wait_for(login, start=start)
    with server.log.cond:
        lines = server.log.lines[start:]
    at = next(n for n, line in enumerate(lines) if re.search(login, line))
    versions = [found.group(1) for line in lines[:at] if (found := TLS_LOGGED.search(line))]
    assert versions, "no TLS handshake logged before the login:\n" + "\n".join(lines)
    return versions[-1]


def no_login_since(server: PopboxServer, start: int, context: ssl.SSLContext) -> None:
    """After a client gave up during the TLS handshake: one more session over implicit TLS
    that only QUITs shows the server still serving, and nobody logged in since `start`."""
    barrier = RawClient(server, port=server.ports["implicit"], tls=context)
    assert barrier.command(b"QUIT") == b"+OK POP3 server signing off\r\n"
    server.log.wait_for(r"logout user=- client=127\.0\.0\.1 reason=quit ", start=start)
    with server.log.cond:
        lines = server.log.lines[start:]
    assert not [line for line in lines if "login ok" in line], "\n".join(lines)


def fail2ban_matches(lines: list[str], filter_file: Path, directory: Path) -> tuple[int, list[str]]:
    """Run the real `fail2ban-regex -v` with `filter_file` over these log lines: the
    number of failregex matches and the hosts it found, sorted."""
    log = directory / "popbox-for-fail2ban.log"
    log.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        ["fail2ban-regex", "-v", str(log), str(filter_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    matched = re.search(r"Failregex: (\d+) total", result.stdout)
    assert matched, result.stdout
    # fail2ban-regex lists each match as "|      <HOST>  <date>" under the regex.
    hosts = re.findall(r"^\|\s+(127\.0\.0\.\d+)\s+\w{3} \w{3}", result.stdout, re.MULTILINE)
    return int(matched.group(1)), sorted(hosts)

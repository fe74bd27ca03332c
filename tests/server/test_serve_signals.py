"""Daemon behaviour of the real `popbox serve`: SIGTERM drains, SIGHUP reloads, and
systemd's readiness protocol (sd_notify) is spoken, in one process and with workers."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Starter

from daemon_helpers import (
    connection_refused,
    served_by,
    stopped,
    wait_for_count,
    worker_pids,
)
from server_helpers import PopboxServer, RawClient, crlf, log_mark

USERS = {"alice": "{PLAIN}secret", "bob": "{PLAIN}bobpw"}
MESSAGES = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"]
DRAINING = r"popbox\.server: shutting down pid=\d+: not accepting"


def maildrop(server: PopboxServer, user: str = "alice") -> list[str]:
    maildir = server.maildir(user)
    return sorted(os.listdir(maildir / "new")) + sorted(os.listdir(maildir / "cur"))


def edit_config(server: PopboxServer, old: str, new: str) -> None:
    path = server.root / "popbox.toml"
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new, 1))


# ---- SIGTERM ---------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_a_running_session_finish_and_refuses_new_ones(
    popbox: Starter, workers: int
) -> None:
    server = popbox(USERS, {"alice": MESSAGES}, workers=workers, shutdown_timeout=30)
    first = maildrop(server)[0]
    client = RawClient(server)
    client.login("alice", "secret")
    server.process.send_signal(signal.SIGTERM)
    wait_for_count(server, DRAINING, workers)
    assert connection_refused(server)
    # The session goes on to the end, and its UPDATE is applied.
    client.send(b"RETR 1\r\n")
    assert (
        client.read_multiline()
        == b"+OK %d octets\r\n" % len(crlf(MESSAGES[0])) + crlf(MESSAGES[0]) + b".\r\n"
    )
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert client.command(b"QUIT").startswith(b"+OK")
    # It was the last session: the server is done long before shutdown_timeout.
    started = time.monotonic()
    assert server.process.wait(15) == 0
    assert time.monotonic() - started < 15
    assert first not in maildrop(server)
    assert len(maildrop(server)) == 1
    server.log.wait_for(r"logout user=alice .*reason=quit top=0/0 retr=1/\d+ del=1/2 ")
    server.log.wait_for(r"popbox\.server: stopped")


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_past_shutdown_timeout_closes_idle_sessions_without_update(
    popbox: Starter, workers: int
) -> None:
    server = popbox(USERS, {"alice": MESSAGES}, workers=workers, shutdown_timeout=1)
    before = maildrop(server)
    client = RawClient(server)
    client.login("alice", "secret")
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    # RFC 2449 / RFC 3206 section 4: a temporary condition, in-band, then the close.
    assert client.read_until_closed() == b"-ERR [SYS/TEMP] server shutting down\r\n"
    assert time.monotonic() - started >= 0.9
    assert server.process.wait(15) == 0
    assert maildrop(server) == before
    assert server.log.count(r"cutting off") == 0
    server.log.wait_for(r"shutdown_timeout reached: closing 1 sessions without UPDATE")
    server.log.wait_for(r"logout user=alice .*reason=shutdown top=0/0 retr=0/0 del=0/")


def test_sigterm_past_shutdown_timeout_ends_the_wait_of_a_bad_command(popbox: Starter) -> None:
    """A session whose -ERR waits bad_command_delay is idle, not busy: closed in-band."""
    extra = "[limits]\nmax_bad_commands = 4\nbad_command_delay = 60\n"
    server = popbox(USERS, extra=extra, shutdown_timeout=1)
    client = RawClient(server)
    client.send(b"BAD1\r\nBAD2\r\nBAD3\r\n")  # the third waits a minute for its -ERR
    unknown = b"-ERR unknown command\r\n"
    assert client.read_line() + client.read_line() == unknown * 2
    client.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        client.read_line()
    client.sock.settimeout(30)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    closing = b"-ERR [SYS/TEMP] server shutting down\r\n"
    assert client.read_until_closed() == unknown + closing
    assert 0.9 <= time.monotonic() - started < 10
    assert server.process.wait(15) == 0
    server.log.wait_for(r"shutdown_timeout reached: closing 1 sessions without UPDATE")
    assert server.log.count(r"cutting off") == 0


def test_sigterm_cuts_off_a_session_still_busy_after_the_grace(popbox: Starter) -> None:
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 8000  # 8 MB
    server = popbox(USERS, {"alice": [big]}, shutdown_timeout=0.5)
    client = RawClient(server)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.login("alice", "secret")
    client.send(b"RETR 1\r\n")  # and never read the message
    assert client.read_line() == b"+OK %d octets\r\n" % len(big)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(15) == 0
    server.log.wait_for(r"shutdown_timeout reached: closing 1 sessions without UPDATE")
    server.log.wait_for(r"cutting off 1 sessions in the middle of a command")
    server.log.wait_for(r"logout user=alice .*reason=shutdown top=0/0 retr=0/0 del=0/")
    assert len(maildrop(server)) == 1


# ---- SIGHUP ----------------------------------------------------------------------------


def test_sighup_applies_limits_and_users_without_dropping_sessions(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": MESSAGES}, extra="[limits]\nmax_connections_per_ip = 2\n")
    live = RawClient(server)
    live.login("alice", "secret")
    (server.root / "users2").write_text("carol:{PLAIN}carolpw\n")
    edit_config(server, "max_connections_per_ip = 2", "max_connections_per_ip = 1")
    edit_config(server, 'passwd_file = "users"', 'passwd_file = "users2"')
    edit_config(server, "workers = 1", "workers = 3")
    # Before the reload: the old limit and the old users file.
    assert RawClient(server).command(b"QUIT").startswith(b"+OK")
    mark = log_mark(server)
    server.process.send_signal(signal.SIGHUP)
    server.log.wait_for(
        r"popbox\.server: reload: applied auth\.passwd_file, limits\.max_connections_per_ip$",
        start=mark,
    )
    server.log.wait_for(r"reload: changed but not applied until a restart: workers$", start=mark)
    assert RawClient(server).greeting == (
        b"-ERR [SYS/TEMP] too many connections from your address\r\n"
    )
    other = RawClient(server, source="127.0.0.2")
    assert other.login("carol", "carolpw").startswith(b"+OK maildrop has 0 messages")
    assert RawClient(server, source="127.0.0.3").login("bob", "bobpw") == (
        b"-ERR [AUTH] invalid user name or password\r\n"
    )
    # The session that was running all along finishes normally, UPDATE included.
    assert live.command(b"STAT") == b"+OK 2 %d\r\n" % sum(len(crlf(m)) for m in MESSAGES)
    assert live.command(b"DELE 2") == b"+OK message 2 deleted\r\n"
    assert live.command(b"QUIT").startswith(b"+OK")
    live.read_until_closed()
    assert len(maildrop(server)) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_with_a_broken_config_keeps_the_server_up(popbox: Starter, workers: int) -> None:
    server = popbox(USERS, {"alice": MESSAGES}, workers=workers)
    live = RawClient(server)
    live.login("alice", "secret")
    config = server.root / "popbox.toml"
    good = config.read_text()
    config.write_text(good + "[limits]\nmax_connections = 0\n")
    mark = log_mark(server)
    server.process.send_signal(signal.SIGHUP)
    server.log.wait_for(
        r"ERROR popbox\.server: reload failed, keeping the running configuration: "
        rf"{re.escape(str(config))}: limits\.max_connections: expected an integer >= 1, got 0",
        start=mark,
    )
    config.write_text("not [ toml")
    server.process.send_signal(signal.SIGHUP)
    server.log.wait_for(r"reload failed, .*: TOML syntax error", start=mark)
    assert live.command(b"STAT").startswith(b"+OK 2 ")
    assert RawClient(server).login("bob", "bobpw").startswith(b"+OK")
    assert live.command(b"QUIT").startswith(b"+OK")
    assert server.process.poll() is None


# ---- sd_notify -------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's, and its NOTIFY_SOCKET value."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(15)
        yield sock, str(path)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def expect_reload_notifications(sock: socket.socket, server: PopboxServer) -> None:
    before = monotonic_usec()
    server.process.send_signal(signal.SIGHUP)
    reloading, clock = sock.recv(4096).decode("ascii").split("\n")
    assert reloading == "RELOADING=1"
    # sd_notify(3): MONOTONIC_USEC is CLOCK_MONOTONIC when the reload started.
    assert clock.startswith("MONOTONIC_USEC=")
    assert before <= int(clock.removeprefix("MONOTONIC_USEC=")) <= monotonic_usec()
    assert sock.recv(4096) == b"READY=1"


def test_sd_notify_with_workers(popbox: Starter, notify_socket: tuple[socket.socket, str]) -> None:
    sock, address = notify_socket
    server = popbox(USERS, {"alice": MESSAGES}, workers=2, env={"NOTIFY_SOCKET": address})
    assert sock.recv(4096) == b"READY=1"
    (server.root / "users2").write_text("carol:{PLAIN}carolpw\n")
    edit_config(server, 'passwd_file = "users"', 'passwd_file = "users2"')
    expect_reload_notifications(sock, server)
    # READY=1 came once both workers had applied the new configuration.
    pids = worker_pids(server)
    for running, paused in ((pids[0], pids[1]), (pids[1], pids[0])):
        with stopped(paused):
            client = RawClient(server)
            assert served_by(client) == running
            assert client.login("carol", "carolpw").startswith(b"+OK")
            assert client.command(b"QUIT").startswith(b"+OK")
            client.read_until_closed()
    server.process.send_signal(signal.SIGTERM)
    assert sock.recv(4096) == b"STOPPING=1"
    assert server.process.wait(15) == 0
    sock.settimeout(0)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_sd_notify_to_an_abstract_socket_in_one_process(popbox: Starter) -> None:
    name = f"popbox-test-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)  # unix(7): an abstract name, "@name" in NOTIFY_SOCKET
        sock.settimeout(15)
        server = popbox(USERS, env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"
        expect_reload_notifications(sock, server)
        server.process.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert server.process.wait(15) == 0

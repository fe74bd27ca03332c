"""Connection handling: limits, half-close, many sessions in one process, UPDATE failures."""

from __future__ import annotations

import os
import shutil
import socket

from conftest import Starter

from server_helpers import RawClient, launch

USERS = {"alice": "{PLAIN}secret"}
MAIL = {"alice": [b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in range(3)]}


def test_per_ip_connection_limit(popbox: Starter) -> None:
    limited = popbox(USERS, extra="[limits]\nmax_connections_per_ip = 2\n")
    first, second = RawClient(limited), RawClient(limited)
    third = RawClient(limited)
    assert third.greeting == b"-ERR [SYS/TEMP] too many connections from your address\r\n"
    assert third.read_until_closed() == b""
    first.command(b"QUIT")
    first.read_until_closed()
    limited.log.wait_for(r"logout user=- client=127\.0\.0\.1 reason=quit")
    assert RawClient(limited).greeting.startswith(b"+OK POP3 server ready <")
    assert second.command(b"NOOP").startswith(b"-ERR NOOP not allowed")


def test_half_closed_client_still_gets_every_reply(popbox: Starter) -> None:
    server = popbox(USERS, MAIL)
    client = RawClient(server)
    client.send(b"USER alice\r\nPASS secret\r\nDELE 1\r\nQUIT\r\n")
    client.sock.shutdown(socket.SHUT_WR)
    assert client.read_until_closed() == (
        b"+OK send PASS\r\n+OK maildrop has 3 messages (66 octets)\r\n"
        b"+OK message 1 deleted\r\n+OK POP3 server signing off (2 messages left)\r\n"
    )
    assert len(os.listdir(server.maildir("alice") / "new")) == 2


def test_half_close_without_quit_deletes_nothing(popbox: Starter) -> None:
    server = popbox(USERS, MAIL)
    client = RawClient(server)
    client.send(b"USER alice\r\nPASS secret\r\nDELE 1\r\n")
    client.sock.shutdown(socket.SHUT_WR)
    assert client.read_until_closed().endswith(b"+OK message 1 deleted\r\n")
    server.log.wait_for(r"logout user=alice .*reason=disconnected")
    assert len(os.listdir(server.maildir("alice") / "new")) == 3


def test_message_that_cannot_be_removed(popbox: Starter) -> None:
    server = popbox(USERS, MAIL)
    client = RawClient(server)
    client.login("alice", "secret")
    new = server.maildir("alice") / "new"
    names = sorted(os.listdir(new))
    # Message 2's file becomes a non-empty directory: unlink fails, as on a broken store.
    os.unlink(new / names[1])
    (new / names[1]).mkdir()
    (new / names[1] / "keep").write_text("x")
    for n in (1, 2, 3):
        client.command(b"DELE %d" % n)
    assert client.command(b"QUIT") == b"-ERR some deleted messages not removed\r\n"
    assert client.read_until_closed() == b""
    assert sorted(os.listdir(new)) == [names[1]]
    shutil.rmtree(new / names[1])


def test_one_process_serves_a_thousand_sessions(popbox: Starter) -> None:
    users = {f"user{i}": "{PLAIN}pw" for i in range(100)}
    mail = {f"user{i}": [b"Subject: x\r\n\r\nx\r\n"] for i in range(100)}
    server = popbox(users, mail, extra="[limits]\nmax_connections_per_ip = 2000\n")
    clients = [RawClient(server) for _ in range(1000)]
    for i, client in enumerate(clients[:100]):
        client.send(b"USER user%d\r\nPASS pw\r\n" % i)
    for client in clients[100:]:
        client.send(b"CAPA\r\n")
    for client in clients[:100]:
        assert client.read_line() == b"+OK send PASS\r\n"
        assert client.read_line() == b"+OK maildrop has 1 messages (17 octets)\r\n"
    for client in clients[100:]:
        assert client.read_multiline().endswith(b"IMPLEMENTATION popbox\r\n.\r\n")
    for client in clients:
        client.send(b"QUIT\r\n")
    for client in clients:
        assert client.read_line().startswith(b"+OK POP3 server signing off")
    assert server.process.poll() is None


def test_user_without_a_possible_maildrop_gets_sys_perm(popbox: Starter) -> None:
    server = popbox({"alice": "{PLAIN}secret", "bob@example.org": "{PLAIN}pw"})
    config = server.root / "popbox.toml"
    server.stop()
    config.write_text(config.read_text().replace("mail/%u/Maildir", "mail/%d/%n/Maildir"))
    server = launch(server.root, config)
    # %d needs a domain: "alice" has none, so no maildrop can ever be opened for her.
    assert RawClient(server).login("alice", "secret") == (
        b"-ERR [SYS/PERM] maildrop cannot be opened for this user\r\n"
    )
    assert RawClient(server).login("bob@example.org", "pw").startswith(b"+OK maildrop has 0")
    assert (server.root / "mail" / "example.org" / "bob" / "Maildir" / "new").is_dir()


def descriptor_table_size(pid: int) -> int:
    """The kernel's FDSize: the slots of the process's descriptor table."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("FDSize:"):
                return int(line.split()[1])
    raise AssertionError("no FDSize in /proc/<pid>/status")


def test_the_descriptor_table_is_grown_before_the_first_connection(popbox: Starter) -> None:
    """Growing it later, with threads running, makes accept(2) wait about 10 ms for an
    RCU grace period, once per doubling (server/descriptors.py)."""
    server = popbox(USERS, MAIL)
    with open(f"/proc/{server.process.pid}/limits") as limits:
        soft = next(line.split()[3] for line in limits if line.startswith("Max open files"))
    expected = 65536 if soft == "unlimited" else min(int(soft), 65536)
    assert descriptor_table_size(server.process.pid) >= expected
    # Only a table grown on purpose is that big: a few hundred slots hold this process.
    assert len(os.listdir(f"/proc/{server.process.pid}/fd")) < 256 < expected

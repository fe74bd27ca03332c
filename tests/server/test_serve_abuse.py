"""Abuse resistance end to end: failure delays doubling per address, blocking by address
and by user, LOGIN-DELAY (RFC 2449), and the fail2ban filter in contrib/ run by the real
fail2ban-regex against popbox's own log."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import Starter

from server_helpers import RawClient, fail2ban_matches

USERS = {"alice": "{PLAIN}secret", "bob": "{PLAIN}bobpw"}
FILTER = Path(__file__).parents[2] / "contrib" / "fail2ban" / "filter.d" / "popbox.conf"
REJECTED = b"-ERR [AUTH] invalid user name or password\r\n"
THROTTLE = """failure_delay = 0.2
failure_delay_max = 0.5
max_failures = 3
failure_window = 60
block_time = 60
"""


def timed_login(client: RawClient, user: str, password: str) -> tuple[bytes, float]:
    client.command(b"USER " + user.encode())
    started = time.monotonic()
    reply = client.command(b"PASS " + password.encode())
    return reply, time.monotonic() - started


def test_failure_delay_doubles_per_address_and_blocks(popbox: Starter) -> None:
    server = popbox(
        USERS, extra=THROTTLE.replace("failure_delay_max = 0.5", "failure_delay_max = 0.7")
    )
    client = RawClient(server)
    delays = []
    for _ in range(4):
        reply, elapsed = timed_login(client, "alice", "wrong")
        assert reply == REJECTED
        delays.append(elapsed)
    # 0.2, 0.4, then capped at failure_delay_max = 0.7 (Dovecot-style doubling).
    for got, want in zip(delays, (0.2, 0.4, 0.7, 0.7), strict=True):
        assert want - 0.02 <= got < want + 0.25, delays
    # More than max_failures failures: the address is refused at once, politely.
    refused = RawClient(server)
    assert refused.greeting == (
        b"-ERR [SYS/TEMP] too many failed logins from your address, try again later\r\n"
    )
    # Another address is not affected for other users; alice herself failed more than
    # max_failures times, so she is blocked as a user from every address.
    other = RawClient(server, source="127.0.0.2")
    assert other.login("bob", "bobpw").startswith(b"+OK maildrop has 0 messages")
    elsewhere = RawClient(server, source="127.0.0.3")
    assert elsewhere.login("alice", "secret") == (
        b"-ERR [AUTH] too many failed logins, try again later\r\n"
    )


def test_failure_delay_does_not_block_other_sessions(popbox: Starter) -> None:
    server = popbox(USERS, extra=THROTTLE.replace("0.2", "1.0").replace("0.5", "1.0"))
    slow = RawClient(server)
    slow.command(b"USER alice")
    slow.send(b"PASS wrong\r\n")
    started = time.monotonic()
    fast = RawClient(server, source="127.0.0.2")
    assert fast.login("bob", "bobpw").startswith(b"+OK")
    assert fast.command(b"NOOP") == b"+OK\r\n"
    assert time.monotonic() - started < 0.5
    assert slow.read_line() == REJECTED
    assert time.monotonic() - started >= 0.95


def test_user_blocked_after_failures_from_many_addresses(popbox: Starter) -> None:
    server = popbox(USERS, extra=THROTTLE.replace("0.2", "0").replace("0.5", "0"))
    for n in range(2, 6):  # four addresses, one failure each: no address is blocked
        reply, _ = timed_login(RawClient(server, source=f"127.0.0.{n}"), "bob", "guess")
        assert reply == REJECTED
    blocked = RawClient(server, source="127.0.0.9")
    assert blocked.login("bob", "bobpw") == (
        b"-ERR [AUTH] too many failed logins, try again later\r\n"
    )
    assert blocked.login("alice", "secret").startswith(b"+OK")
    server.log.wait_for(r"login failed user=bob client=127\.0\.0\.9 mechanism=USER reason=blocked")


def test_login_delay_and_expire_announced_and_enforced(popbox: Starter) -> None:
    server = popbox(USERS, extra="login_delay = 30\n", mail_extra='expire_days = "never"\n')
    client = RawClient(server)
    client.send(b"CAPA\r\n")
    tags = client.read_multiline().split(b"\r\n")[1:-2]
    assert tags[-3:] == [b"LOGIN-DELAY 30", b"EXPIRE NEVER", b"IMPLEMENTATION popbox"]
    assert client.login("alice", "secret").startswith(b"+OK")
    assert client.command(b"QUIT").startswith(b"+OK")
    again = RawClient(server)
    assert again.login("alice", "secret") == (
        b"-ERR [LOGIN-DELAY] wait 30 seconds between logins\r\n"
    )
    assert RawClient(server).login("bob", "bobpw").startswith(b"+OK")
    server.log.wait_for(
        r"login failed user=alice client=127\.0\.0\.1 mechanism=USER reason=login-delay"
    )


def test_fail2ban_filter_matches_popbox_log(popbox: Starter, tmp_path: Path) -> None:
    server = popbox(USERS, extra=THROTTLE.replace("0.2", "0").replace("0.5", "0"))
    timed_login(RawClient(server), "alice", "wrong")
    timed_login(RawClient(server, source="127.0.0.3"), "nobody", "x")
    RawClient(server, source="127.0.0.3").send(b"AUTH PLAIN *\r\n")
    assert RawClient(server, source="127.0.0.4").login("bob", "bobpw").startswith(b"+OK")
    server.log.wait_for(r"login failed user=nobody client=127\.0\.0\.3")
    server.log.wait_for(r"login ok user=bob")
    server.stop()
    assert fail2ban_matches(server.log.lines, FILTER, tmp_path) == (2, ["127.0.0.1", "127.0.0.3"])

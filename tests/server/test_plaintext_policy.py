"""The plaintext policy (`[auth] plaintext`) for every value and kind of client address.

Only loopback addresses may be used here, so the decision itself is checked as a table
over addresses, and each value is checked end to end from loopback."""

from __future__ import annotations

import pytest
from conftest import Starter

from popbox.auth.throttle import LoginThrottle
from popbox.server.context import ServerContext, SessionPolicy, is_loopback
from server_helpers import RawClient

USERS = {"alice": "{PLAIN}secret"}
REFUSED = b"-ERR [AUTH] plaintext authentication disallowed without TLS\r\n"


def context(policy: str) -> ServerContext:
    return ServerContext(
        policy=SessionPolicy(
            hostname="h",
            idle_timeout=600,
            plaintext=policy,
            max_bad_commands=10,
            max_connections=10,
            max_connections_per_ip=10,
        ),
        authenticator=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        throttle=LoginThrottle(),
    )


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("203.0.113.7", False),
        ("10.0.0.1", False),
        ("2001:db8::1", False),
        ("::ffff:203.0.113.7", False),
        ("fe80::1%eth0", False),
        ("not an address", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


@pytest.mark.parametrize(
    ("policy", "address", "tls", "allowed"),
    [
        ("loopback", "127.0.0.1", False, True),
        ("loopback", "203.0.113.7", False, False),
        ("loopback", "203.0.113.7", True, True),
        ("never", "127.0.0.1", False, False),
        ("never", "203.0.113.7", True, True),
        ("always", "203.0.113.7", False, True),
    ],
)
def test_policy_table(policy: str, address: str, tls: bool, allowed: bool) -> None:
    ctx = context(policy)
    assert ctx.plaintext_allowed(address, tls=tls) is allowed
    mechanisms = ctx.mechanisms(plaintext_allowed=allowed, channel_binding=tls)
    assert ("PLAIN" in mechanisms) is allowed
    assert "SCRAM-SHA-256" in mechanisms
    assert ("SCRAM-SHA-256-PLUS" in mechanisms) is tls


def test_always_warns_at_start_and_allows_plaintext(popbox: Starter) -> None:
    server = popbox(USERS, extra='plaintext = "always"\n')
    server.log.wait_for(r'auth\.plaintext = "always": passwords may cross the network')
    assert RawClient(server).login("alice", "secret").startswith(b"+OK")


def test_loopback_allows_plaintext_from_loopback(popbox: Starter) -> None:
    server = popbox(USERS)
    assert RawClient(server, source="127.0.0.7").login("alice", "secret").startswith(b"+OK")
    assert server.log.count("passwords may cross the network") == 0


def test_never_refuses_plaintext_even_from_loopback(popbox: Starter) -> None:
    server = popbox(USERS, extra='plaintext = "never"\n')
    client = RawClient(server)
    assert client.command(b"USER alice") == REFUSED
    assert client.command(b"AUTH LOGIN") == REFUSED
    assert client.command(b"AUTH CRAM-MD5").startswith(b"+ ")

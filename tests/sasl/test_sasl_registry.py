"""The mechanism registry: names, CAPA order, and the plaintext / binding classes."""

from __future__ import annotations

import pytest

from popbox.sasl.base import Challenge, Mechanism, MechanismContext
from popbox.sasl.registry import (
    CAPA_ORDER,
    CHANNEL_BINDING_MECHANISMS,
    MECHANISMS,
    PLAINTEXT_MECHANISMS,
    create,
    offered,
)

CTX = MechanismContext(hostname="mail.example.org", nonce="n0nce", channel_binding=None)


def test_names_and_order() -> None:
    assert CAPA_ORDER == (
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "CRAM-MD5",
        "OAUTHBEARER",
        "XOAUTH2",
        "PLAIN",
        "LOGIN",
    )
    assert list(MECHANISMS) == list(CAPA_ORDER)
    plaintext, binding = PLAINTEXT_MECHANISMS, CHANNEL_BINDING_MECHANISMS
    assert plaintext == frozenset({"PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"})
    assert binding == frozenset({"SCRAM-SHA-256-PLUS"})
    assert set(MECHANISMS) >= plaintext | binding


@pytest.mark.parametrize("name", CAPA_ORDER)
def test_create_gives_a_fresh_mechanism_of_that_name(name: str) -> None:
    first: Mechanism = create(name, CTX)
    second = create(name, CTX)
    assert first.name == name
    assert type(first) is MECHANISMS[name]
    assert first is not second


def test_create_unknown_raises_key_error() -> None:
    with pytest.raises(KeyError):
        create("SCRAM-SHA-512", CTX)
    with pytest.raises(KeyError):
        create("plain", CTX)  # the core upper-cases names (RFC 5034: case-insensitive)


def test_instances_are_independent() -> None:
    a, b = create("LOGIN", CTX), create("LOGIN", CTX)
    assert a.start(None) == Challenge(b"Username:")
    assert b.start(None) == Challenge(b"Username:")


@pytest.mark.parametrize(
    ("plaintext_allowed", "channel_binding", "expected"),
    [
        (True, True, CAPA_ORDER),
        (True, False, CAPA_ORDER[1:]),
        (False, True, ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5")),
        (False, False, ("SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5")),
    ],
)
def test_offered(plaintext_allowed: bool, channel_binding: bool, expected: tuple[str, ...]) -> None:
    enabled = frozenset(MECHANISMS)
    got = offered(enabled, plaintext_allowed=plaintext_allowed, channel_binding=channel_binding)
    assert got == expected


def test_offered_keeps_capa_order_whatever_the_configured_order() -> None:
    enabled = ("LOGIN", "PLAIN", "SCRAM-SHA-1", "NOT-A-MECHANISM")
    assert offered(enabled, plaintext_allowed=True, channel_binding=False) == (
        "SCRAM-SHA-1",
        "PLAIN",
        "LOGIN",
    )

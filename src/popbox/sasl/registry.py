"""Which SASL mechanisms exist, by name, and in what order CAPA lists them."""

from __future__ import annotations

from popbox.sasl.base import Mechanism, MechanismContext
from popbox.sasl.common import SaslMechanism
from popbox.sasl.crammd5 import CramMd5
from popbox.sasl.login import Login
from popbox.sasl.oauth import OAuthBearer, XOAuth2
from popbox.sasl.plain import Plain
from popbox.sasl.scram import ScramSha1, ScramSha256, ScramSha256Plus

__all__ = [
    "CAPA_ORDER",
    "CHANNEL_BINDING_MECHANISMS",
    "MECHANISMS",
    "PLAINTEXT_MECHANISMS",
    "create",
    "offered",
]

# Strongest first: clients that take the first mechanism they know get the best one.
CAPA_ORDER: tuple[str, ...] = (
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "CRAM-MD5",
    "OAUTHBEARER",
    "XOAUTH2",
    "PLAIN",
    "LOGIN",
)

MECHANISMS: dict[str, type[SaslMechanism]] = {
    mechanism.name: mechanism
    for mechanism in (
        ScramSha256Plus,
        ScramSha256,
        ScramSha1,
        CramMd5,
        OAuthBearer,
        XOAuth2,
        Plain,
        Login,
    )
}

# These hand the server a reusable secret (a password or a bearer token), so they are
# offered only where USER/PASS would be (RFC 4616 section 6, RFC 7628 section 5).
PLAINTEXT_MECHANISMS = frozenset({"PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"})
# These need MechanismContext.channel_binding (RFC 5802 section 6; RFC 5929, RFC 9266).
CHANNEL_BINDING_MECHANISMS = frozenset({"SCRAM-SHA-256-PLUS"})


def create(name: str, ctx: MechanismContext) -> Mechanism:
    """A fresh mechanism for one AUTH exchange; KeyError for a name not in MECHANISMS."""
    return MECHANISMS[name](ctx)


def offered(
    enabled: tuple[str, ...] | frozenset[str], *, plaintext_allowed: bool, channel_binding: bool
) -> tuple[str, ...]:
    """The enabled mechanisms usable on a connection now, in CAPA_ORDER.

    The -PLUS mechanism only with channel binding data: advertising it is what lets the
    non-PLUS SCRAM mechanisms treat a "y" flag as a downgrade (RFC 5802 section 6).
    """
    return tuple(
        name
        for name in CAPA_ORDER
        if name in enabled
        and (plaintext_allowed or name not in PLAINTEXT_MECHANISMS)
        and (channel_binding or name not in CHANNEL_BINDING_MECHANISMS)
    )

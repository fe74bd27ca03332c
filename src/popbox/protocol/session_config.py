"""What the driver tells the core about one connection (all decided outside the core)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from popbox.protocol.limits import DEFAULT_MAX_BAD_COMMANDS


@dataclass(frozen=True, slots=True)
class SessionConfig:
    # The APOP timestamp, "<...@hostname>", unique per connection (RFC 1939 section 7).
    # Made by the driver: the core has no clock and no randomness.
    timestamp: str
    hostname: str = "localhost"
    # Whether USER/PASS and the plaintext SASL mechanisms may be used on this connection
    # (TLS, or the plaintext policy for this client address).
    plaintext_allowed: bool = True
    tls_active: bool = False
    # RFC 2595: STLS is offered on a cleartext connection of a "starttls" listener.
    stls_available: bool = False
    # SASL mechanisms usable on this connection now, in the order CAPA lists them.
    mechanisms: tuple[str, ...] = ()
    channel_binding: tuple[str, bytes] | None = field(default=None, repr=False)
    # A source of fresh random nonces for SASL (the core has no randomness of its own).
    nonce: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    # RFC 2449 sections 6.5 and 6.7: announced (and LOGIN-DELAY enforced) when configured.
    login_delay: int | None = None
    expire: str | None = None
    # Dovecot's pop3_client_workarounds: "outlook-no-nuls", "oe-ns-eoh".
    workarounds: frozenset[str] = frozenset()
    max_bad_commands: int = DEFAULT_MAX_BAD_COMMANDS
    # Told the keyword of every command line (or "unknown"), for the driver's metrics.
    on_command: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.timestamp.startswith("<") and self.timestamp.endswith(">")):
            raise ValueError("timestamp must look like <...@host>")
        if self.max_bad_commands < 1:
            raise ValueError("max_bad_commands must be at least 1")
        if self.mechanisms and self.nonce is None:
            raise ValueError("SASL mechanisms need a nonce source")

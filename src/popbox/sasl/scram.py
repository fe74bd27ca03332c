"""SCRAM-SHA-1, SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677, RFC 5929).

    C: client-first   gs2-header n=user,r=cnonce
    S: server-first   r=cnonce+snonce,s=salt,i=iterations     (after the verifier lookup)
    C: client-final   c=base64(cbind-input),r=cnonce+snonce,p=proof
    S: server-final   v=server-signature                      (Success.final)

scramp's ScramServer runs the exchange: the GS2 flag rules, SASLprep of the username, the
cbind-input, nonce and proof checks and the server signature. scramp asks for the verifier
synchronously (auth_fn, inside set_client_first) but this module does no I/O, so:

1. client-first: our grammar check (for precise Failure reasons and the user name), then
   scramp's set_client_first on a server holding the decoy verifier, so scramp judges the
   GS2 flags before the lookup; then NeedScramCredentials(user).
2. provide(): a fresh ScramServer whose auth_fn returns the looked-up verifier (or the
   decoy: one path for known and unknown users) is fed the same client-first and gives the
   server-first.
3. client-final: that server's set_client_final, then get_server_final for Success.final.

Checks scramp does not do for us:
- A non-empty authzid ("a=") fails with "authorization identity not supported": scramp
  1.5.0 refuses it, acting as another user is not supported, and POP3 clients do not send
  one in practice.
- "p=" on a non-PLUS mechanism fails: scramp would silently switch to the -PLUS variant,
  but a client that binds after choosing plain SCRAM-SHA-* saw -PLUS stripped.

Channel binding is tls-server-end-point only (RFC 5929 section 4.1): scramp 1.5.0 has no
tls-exporter (RFC 9266), and Python's ssl module exposes no exported keying material, so
the server edge never produces it. A context with any other type counts as no binding:
-PLUS fails at start, and "y" is no downgrade, since -PLUS could not have succeeded.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from scramp import ScramException, ScramMechanism  # type: ignore[import-untyped]

from popbox.protocol.errors import LocalProtocolError
from popbox.sasl.base import (
    Challenge,
    Failure,
    MechanismContext,
    NeedScramCredentials,
    ScramCredentials,
    Step,
    Success,
)
from popbox.sasl.common import MalformedMessage, SaslMechanism, decode_utf8
from popbox.sasl.gs2 import Gs2Header, parse_gs2_header, parse_saslname

__all__ = ["ScramSha1", "ScramSha256", "ScramSha256Plus", "derive_credentials"]

HASHES: dict[str, str] = {
    "SCRAM-SHA-1": "sha1",
    "SCRAM-SHA-256": "sha256",
    "SCRAM-SHA-256-PLUS": "sha256",
}
# The one channel binding type the server edge produces (RFC 5929 section 4.1).
BINDING_TYPE = "tls-server-end-point"
# RFC 5802 section 7: printable = %x21-2B / %x2D-7E (printable ASCII except ",")
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
# RFC 5802 section 7: attr-val = ALPHA "=" value, value = 1*value-char
_EXTENSION = re.compile(r"[A-Za-z]=[^,\x00]+")
# Unknown users get a decoy verifier with the iteration count RFC 7677 section 4 names.
_DECOY_ITERATIONS = 4096
_DECOY_SALT_OCTETS = 16
# scramp's ScramException.server_error is an RFC 5802 section 7 server-error-value; its
# message text can quote client input, so only this code picks the reason sent.
_REASONS: dict[str, str] = {
    "invalid-encoding": "invalid encoding in SCRAM message",
    "extensions-not-supported": "SCRAM mandatory extensions are not supported",
    "invalid-proof": "authentication failed",
    "channel-bindings-dont-match": "channel binding mismatch",
    "channel-binding-not-supported": "channel binding is not available on this connection",
    "unsupported-channel-binding-type": "unsupported channel binding type",
    "unknown-user": "authentication failed",
    "invalid-username-encoding": "malformed username",
}


def derive_credentials(
    mechanism_name: str, password: str, salt: bytes, iterations: int
) -> ScramCredentials:
    """The verifier for `password` (RFC 5802 section 3: SaltedPassword := Hi(Normalize(
    password), salt, i); StoredKey := H(ClientKey); ServerKey := HMAC(SaltedPassword,
    "Server Key")), the password SASLprepped (RFC 4013) by scramp.

    Raises ValueError when scramp refuses the inputs: a password SASLprep prohibits, a
    salt under 12 octets, or fewer than 4096 iterations (RFC 7677 section 4).
    """
    if mechanism_name not in HASHES:
        raise ValueError(f"not a SCRAM mechanism here: {mechanism_name!r}")
    try:
        out_salt, stored_key, server_key, out_iterations = ScramMechanism(
            mechanism_name
        ).make_auth_info(password, iteration_count=iterations, salt=salt)
    except ScramException as error:
        # scramp's messages name the rule broken, never the password.
        raise ValueError(f"cannot derive SCRAM credentials: {error}") from None
    return ScramCredentials(
        salt=bytes(out_salt),
        stored_key=bytes(stored_key),
        server_key=bytes(server_key),
        iterations=int(out_iterations),
    )


def _check_base64(text: str, what: str) -> None:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage(f"{what} is not valid base64") from None


@dataclass(frozen=True, slots=True)
class ClientFirst:
    text: str  # the whole client-first-message, which scramp parses again
    gs2: Gs2Header
    user: str
    nonce: str


def parse_client_first(message: bytes) -> ClientFirst:
    """RFC 5802 section 7: gs2-header [reserved-mext ","] username "," nonce ["," ext].

    The grammar only, for a precise Failure reason and the user name the lookup needs;
    scramp parses the message again (and SASLpreps the name) in set_client_first.
    """
    text = decode_utf8(message, "client-first-message")
    gs2, bare = parse_gs2_header(text)
    if gs2.authzid is not None:
        # scramp refuses any authzid; acting as another user is not supported either.
        raise MalformedMessage("authorization identity not supported")
    attributes = bare.split(",")
    if attributes[0].startswith("m="):
        # RFC 5802 section 5.1: "m" MUST cause authentication failure.
        raise MalformedMessage("SCRAM mandatory extensions are not supported")
    if not attributes[0].startswith("n="):
        raise MalformedMessage("client-first-message must start with n=")
    user = parse_saslname(attributes[0][2:], "username")
    if len(attributes) < 2 or not attributes[1].startswith("r="):
        raise MalformedMessage("client-first-message has no nonce")
    if not _NONCE.fullmatch(attributes[1][2:]):
        raise MalformedMessage("malformed client nonce")
    if not all(_EXTENSION.fullmatch(extension) for extension in attributes[2:]):
        raise MalformedMessage("malformed extension in client-first-message")
    return ClientFirst(text, gs2, user, attributes[1][2:])


@dataclass(frozen=True, slots=True)
class ClientFinal:
    text: str  # the whole client-final-message, for scramp
    nonce: str


def parse_client_final(message: bytes) -> ClientFinal:
    """RFC 5802 section 7: channel-binding "," nonce ["," extensions] "," proof.

    The grammar only, for a precise Failure reason; scramp checks the values.
    """
    text = decode_utf8(message, "client-final-message")
    attributes = text.split(",")
    if len(attributes) < 3:
        raise MalformedMessage("client-final-message needs c=, r= and p=")
    binding, nonce, *extensions, proof = attributes
    if not (binding.startswith("c=") and nonce.startswith("r=") and proof.startswith("p=")):
        raise MalformedMessage("client-final-message needs c=, r= and p=")
    if not all(_EXTENSION.fullmatch(extension) for extension in extensions):
        raise MalformedMessage("malformed extension in client-final-message")
    _check_base64(binding[2:], "channel binding")
    _check_base64(proof[2:], "proof")
    return ClientFinal(text, nonce[2:])


def decoy_credentials(hash_name: str, nonce: str) -> ScramCredentials:
    """A verifier no password matches, derived from the exchange's nonce alone, so an
    unknown user fails at the proof like a wrong password (no user enumeration)."""
    seed = hashlib.new(hash_name, b"popbox SCRAM decoy\x00" + nonce.encode()).digest()
    return ScramCredentials(
        salt=hmac.digest(seed, b"salt", hash_name)[:_DECOY_SALT_OCTETS],
        stored_key=hmac.digest(seed, b"Stored Key", hash_name),
        server_key=hmac.digest(seed, b"Server Key", hash_name),
        iterations=_DECOY_ITERATIONS,
    )


class _Phase(enum.Enum):
    NEW = "new"
    CLIENT_FIRST = "client-first"  # the empty challenge went out
    LOOKUP = "lookup"  # NeedScramCredentials went out; provide() is next
    CLIENT_FINAL = "client-final"  # server-first went out
    DONE = "done"


class _Scram(SaslMechanism):
    plus: ClassVar[bool] = False

    def __init__(self, ctx: MechanismContext) -> None:
        super().__init__(ctx)
        if not _NONCE.fullmatch(ctx.nonce):
            raise LocalProtocolError(f"{self.name}: nonce must be printable ASCII without ','")
        self._hash = HASHES[self.name]
        self._scramp = ScramMechanism(self.name)
        binding = ctx.channel_binding
        self._binding = binding if binding is not None and binding[0] == BINDING_TYPE else None
        self._phase = _Phase.NEW
        self._first: ClientFirst | None = None
        self._server: Any = None  # scramp.core.ScramServer once server-first went out
        self._known_user = False

    def start(self, initial: bytes | None) -> Step:
        if self._phase is not _Phase.NEW:
            raise self._misuse("start()", self._phase)
        if self.plus and self._binding is None:
            self._phase = _Phase.DONE
            return Failure("channel binding is not available on this connection")
        if initial is None:
            # RFC 5802 section 5: the client speaks first; RFC 4422 section 3.3: without an
            # initial response the server sends an empty challenge.
            self._phase = _Phase.CLIENT_FIRST
            return Challenge(b"")
        return self._client_first(initial)

    def step(self, response: bytes) -> Step:
        if self._phase is _Phase.CLIENT_FIRST:
            return self._client_first(response)
        if self._phase is _Phase.CLIENT_FINAL and self._first is not None:
            self._phase = _Phase.DONE
            return self._client_final(self._first, response)
        raise self._misuse("step()", self._phase)

    def provide(self, credentials: ScramCredentials | None) -> Step:
        if self._phase is not _Phase.LOOKUP or self._first is None:
            raise self._misuse("provide()", self._phase)
        digest_size = hashlib.new(self._hash).digest_size
        if credentials is not None and not (
            len(credentials.stored_key) == len(credentials.server_key) == digest_size
        ):
            raise LocalProtocolError(f"{self.name}: credentials are not a {self._hash} verifier")
        self._known_user = credentials is not None
        server = self._make_server(credentials or decoy_credentials(self._hash, self.ctx.nonce))
        try:
            # The client-first passed set_client_first with the decoy, so only the verifier
            # can make scramp refuse it now.
            server.set_client_first(self._first.text)
            server_first: str = server.get_server_first()
        except ScramException:
            raise LocalProtocolError(
                f"{self.name}: scramp refuses the verifier (it needs a salt of at least 12"
                " octets and 4096..10000000 iterations)"
            ) from None
        self._server = server
        self._phase = _Phase.CLIENT_FINAL
        return Challenge(server_first.encode("ascii"))

    def _make_server(self, verifier: ScramCredentials) -> Any:
        # scramp passes auth_fn the SASLprepped name; the lookup was for the name as sent.
        found = (verifier.salt, verifier.stored_key, verifier.server_key, verifier.iterations)
        try:
            return self._scramp.make_server(
                lambda _user: found, channel_binding=self._binding, s_nonce=self.ctx.nonce
            )
        except ScramException as error:
            # Only the context goes in here (nonce, binding data): a driver bug.
            raise LocalProtocolError(f"{self.name}: scramp refuses the context: {error}") from None

    def _client_first(self, message: bytes) -> Step:
        self._phase = _Phase.DONE
        try:
            first = parse_client_first(message)
            if first.gs2.cbind_flag == "p" and not self.plus:
                raise MalformedMessage("channel binding needs the -PLUS mechanism")
        except MalformedMessage as malformed:
            return Failure(malformed.reason)
        try:
            # scramp's GS2 flag rules (RFC 5802 section 6) before the lookup.
            probe = self._make_server(decoy_credentials(self._hash, self.ctx.nonce))
            probe.set_client_first(first.text)
        except ScramException as error:
            return Failure(self._reason(error, "malformed client-first-message"))
        self._first = first
        self._phase = _Phase.LOOKUP
        return NeedScramCredentials(first.user)

    def _client_final(self, first: ClientFirst, message: bytes) -> Step:
        try:
            final = parse_client_final(message)
        except MalformedMessage as malformed:
            return Failure(malformed.reason)
        try:
            self._server.set_client_final(final.text)
            server_final: str = self._server.get_server_final()
        except ScramException as error:
            # scramp reports a wrong nonce as "other-error": name it when it is the cause.
            wrong_nonce = final.nonce != first.nonce + self.ctx.nonce
            otherwise = "nonce mismatch" if wrong_nonce else "malformed client-final-message"
            return Failure(self._reason(error, otherwise))
        if not self._known_user:
            # Belt and braces: the decoy verifier has no password, so this is unreachable.
            return Failure("authentication failed")
        return Success(first.user, final=server_final.encode("ascii"))

    def _reason(self, error: Any, otherwise: str) -> str:
        code = getattr(error.server_error, "value", None)
        if code == "server-does-support-channel-binding":
            # "n" or "y" on -PLUS; or "y" while -PLUS is offered: the -PLUS name was
            # stripped on the way, a downgrade the server MUST fail (RFC 5802 section 6).
            if self.plus:
                return "channel binding is required by this mechanism"
            return "channel binding downgrade detected"
        return _REASONS.get(code, otherwise) if isinstance(code, str) else otherwise


class ScramSha1(_Scram):
    name: ClassVar[str] = "SCRAM-SHA-1"


class ScramSha256(_Scram):
    name: ClassVar[str] = "SCRAM-SHA-256"


class ScramSha256Plus(_Scram):
    name: ClassVar[str] = "SCRAM-SHA-256-PLUS"
    plus: ClassVar[bool] = True

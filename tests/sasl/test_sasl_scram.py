"""SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677): published vectors, scramp as the
real client, and every malformed message class.

The server side is scramp's ScramServer too, so the reasons here are either our grammar
check's or mapped from scramp's RFC 5802 server-error codes.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import scramp  # type: ignore[import-untyped]

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
from popbox.sasl.scram import ScramSha1, ScramSha256, decoy_credentials, derive_credentials

SALT = b"popbox-salt-0123"
SNONCE = "3rfcNHYJY1ZVvWVs7j"
CTX = MechanismContext(hostname="mail.example.org", nonce=SNONCE)
SCRAM: dict[str, type[ScramSha1 | ScramSha256]] = {
    "SCRAM-SHA-1": ScramSha1,
    "SCRAM-SHA-256": ScramSha256,
}


def test_rfc7677_sha256_vector() -> None:
    # RFC 7677 section 3: user "user", password "pencil".
    ctx = MechanismContext(hostname="h", nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    scram = ScramSha256(ctx)
    assert scram.start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") == NeedScramCredentials("user")
    assert scram.provide(derive_credentials("SCRAM-SHA-256", "pencil", salt, 4096)) == Challenge(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    final = scram.step(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert final == Success("user", final=b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_rfc5802_sha1_vector() -> None:
    # RFC 5802 section 5: user "user", password "pencil", without an initial response.
    salt = base64.b64decode("QSXCR+Q6sek8bf92")
    scram = ScramSha1(CTX)
    assert scram.start(None) == Challenge(b"")
    assert scram.step(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL") == NeedScramCredentials("user")
    assert scram.provide(derive_credentials("SCRAM-SHA-1", "pencil", salt, 4096)) == Challenge(
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    )
    final = scram.step(
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    )
    assert final == Success("user", final=b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")


def run_scramp(
    name: str, user: str, password: str, stored_password: str | None, initial: bool = True
) -> tuple[Step, Any]:
    """One exchange against scramp's client; returns (server's last step, client)."""
    client = scramp.ScramClient([name], user, password, c_nonce="clientNONCE")
    scram = SCRAM[name](CTX)
    first = client.get_client_first().encode()
    if initial:
        step = scram.start(first)
    else:
        assert scram.start(None) == Challenge(b"")
        step = scram.step(first)
    assert step == NeedScramCredentials(user)
    found = (
        None if stored_password is None else derive_credentials(name, stored_password, SALT, 4096)
    )
    server_first = scram.provide(found)
    assert isinstance(server_first, Challenge)
    client.set_server_first(server_first.data.decode())
    return scram.step(client.get_client_final().encode()), client


@pytest.mark.parametrize("name", sorted(SCRAM))
@pytest.mark.parametrize("initial", [True, False])
@pytest.mark.parametrize("user", ["alice", "j\u00fcrgen", "a,b=c"])
def test_against_scramp_client(name: str, initial: bool, user: str) -> None:
    step, client = run_scramp(name, user, "correct horse", "correct horse", initial)
    assert isinstance(step, Success)
    assert step.user == user
    assert step.final is not None
    client.set_server_final(step.final.decode())  # scramp checks the server signature


@pytest.mark.parametrize("name", sorted(SCRAM))
def test_wrong_password_fails_at_the_proof(name: str) -> None:
    step, _ = run_scramp(name, "alice", "wrong", "correct horse")
    assert step == Failure("authentication failed")


@pytest.mark.parametrize("name", sorted(SCRAM))
def test_unknown_user_fails_at_the_proof_like_a_wrong_password(name: str) -> None:
    step, _ = run_scramp(name, "mallory", "anything", None)
    assert step == Failure("authentication failed")


def test_unknown_user_gets_a_plausible_deterministic_server_first() -> None:
    challenges = []
    for _ in range(2):
        scram = ScramSha256(CTX)
        assert scram.start(b"n,,n=mallory,r=abc") == NeedScramCredentials("mallory")
        challenges.append(scram.provide(None))
    decoy = decoy_credentials("sha256", SNONCE)
    salt = base64.b64encode(decoy.salt).decode()
    assert challenges == [Challenge(f"r=abc{SNONCE},s={salt},i=4096".encode())] * 2
    assert len(decoy.salt) == 16
    assert decoy_credentials("sha256", "other") != decoy


def test_decoy_verifier_never_authenticates_even_with_its_own_keys() -> None:
    # Belt and braces: even a proof computed from the decoy's keys cannot succeed.
    scram = ScramSha256(CTX)
    assert scram.start(b"n,,n=mallory,r=abc") == NeedScramCredentials("mallory")
    assert isinstance(scram.provide(None), Challenge)
    assert scram.step(b"c=biws,r=abc" + SNONCE.encode() + b",p=" + b"A" * 44) == Failure(
        "authentication failed"
    )


def test_derive_credentials_matches_scramp() -> None:
    for name in ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"):
        salt, stored, server, iterations = scramp.ScramMechanism(name).make_auth_info(
            "pencil", iteration_count=5000, salt=SALT
        )
        assert derive_credentials(name, "pencil", SALT, 5000) == ScramCredentials(
            salt, stored, server, iterations
        )


@pytest.mark.parametrize(
    ("name", "password", "salt", "iterations"),
    [
        ("SCRAM-SHA-512", "pencil", SALT, 4096),
        ("PLAIN", "pencil", SALT, 4096),
        ("SCRAM-SHA-256", "pencil", b"short", 4096),
        ("SCRAM-SHA-256", "pencil", SALT, 1000),
        ("SCRAM-SHA-256", "pen\x07cil", SALT, 4096),
    ],
)
def test_derive_credentials_refuses(name: str, password: str, salt: bytes, iterations: int) -> None:
    with pytest.raises(ValueError):
        derive_credentials(name, password, salt, iterations)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "malformed GS2 header"),
        (b"n,,", "client-first-message must start with n="),
        (b"n,", "malformed GS2 header"),
        (b"x,,n=user,r=abc", "malformed GS2 channel binding flag"),
        (b"F,n,,n=user,r=abc", "malformed GS2 channel binding flag"),
        (b"p=tls@exporter,,n=user,r=abc", "malformed channel binding name"),
        (b"p=,,n=user,r=abc", "malformed channel binding name"),
        (b"n,b=user,n=user,r=abc", "malformed GS2 authzid"),
        (b"n,a=,n=user,r=abc", "malformed authzid"),
        # scramp refuses any authzid, even one equal to the user name.
        (b"n,a=bob,n=user,r=abc", "authorization identity not supported"),
        (b"n,a=user,n=user,r=abc", "authorization identity not supported"),
        (b"n,,m=ext,n=user,r=abc", "SCRAM mandatory extensions are not supported"),
        (b"n,,r=abc,n=user", "client-first-message must start with n="),
        (b"n,,n=,r=abc", "malformed username"),
        (b"n,,n=us=2Xer,r=abc", "malformed username"),
        (b"n,,n=user=,r=abc", "malformed username"),
        (b"n,,n=us\x00er,r=abc", "malformed username"),
        (b"n,,n=user", "client-first-message has no nonce"),
        (b"n,,n=user,abc", "client-first-message has no nonce"),
        (b"n,,n=user,r=", "malformed client nonce"),
        (b"n,,n=user,r=a b", "malformed client nonce"),
        (b"n,,n=user,r=\xc3\xa9", "malformed client nonce"),
        (b"n,,n=user,r=abc,", "malformed extension in client-first-message"),
        (b"n,,n=user,r=abc,x", "malformed extension in client-first-message"),
        (b"n,,n=user,r=abc,xy=1", "malformed extension in client-first-message"),
        (b"n,,n=us\xffer,r=abc", "client-first-message is not valid UTF-8"),
        # From here on the grammar passes and scramp refuses (before the lookup).
        (b"n,,n=us\x07er,r=abc", "malformed username"),  # SASLprep: control character
        (b"n,,n=\xc2\xad,r=abc", "malformed client-first-message"),  # SASLprep: empty
        (b"n,,n=user,r=abc,r=def", "malformed client-first-message"),  # duplicate
        (b"n,,n=user,r=abc,s=salt", "malformed client-first-message"),  # not an extension
        (b"n,,n=user,r=abc,m=ext", "SCRAM mandatory extensions are not supported"),
        (b"p=tls-unique,,n=user,r=abc", "channel binding needs the -PLUS mechanism"),
    ],
)
def test_malformed_client_first_fails(message: bytes, reason: str) -> None:
    assert ScramSha256(CTX).start(message) == Failure(reason)
    scram = ScramSha1(CTX)
    assert scram.start(None) == Challenge(b"")
    assert scram.step(message) == Failure(reason)
    with pytest.raises(LocalProtocolError):
        scram.provide(None)


def test_accepted_client_first_variants() -> None:
    # Unknown extensions are fine (RFC 5802 section 7); the lookup gets the name unescaped.
    for message in (b"n,,n=a=2Cb,r=abc", b"n,,n=a=2Cb,r=abc,x=ext,y=1"):
        assert ScramSha256(CTX).start(message) == NeedScramCredentials("a,b")


def server_first_for(name: str) -> tuple[ScramSha1 | ScramSha256, str]:
    scram = SCRAM[name](CTX)
    assert scram.start(b"n,,n=user,r=abc") == NeedScramCredentials("user")
    assert isinstance(scram.provide(derive_credentials(name, "pencil", SALT, 4096)), Challenge)
    return scram, "abc" + SNONCE


PROOF = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("final", "reason"),
    [
        ("", "client-final-message needs c=, r= and p="),
        ("c=biws,r={n}", "client-final-message needs c=, r= and p="),
        ("r={n},c=biws,p={p}", "client-final-message needs c=, r= and p="),
        ("c=biws,r={n},p={p},x=1", "client-final-message needs c=, r= and p="),
        ("c=biws,r={n},x,p={p}", "malformed extension in client-final-message"),
        ("c=biws,r={n},,p={p}", "malformed extension in client-final-message"),
        ("c=bi!s,r={n},p={p}", "channel binding is not valid base64"),
        ("c=biw,r={n},p={p}", "channel binding is not valid base64"),
        ("c=biws,r={n},p=AA!A", "proof is not valid base64"),
        ("c=eSws,r={n},p={p}", "channel binding mismatch"),
        ("c=cD10bHMtZXhwb3J0ZXIsLA==,r={n},p={p}", "channel binding mismatch"),
        ("c=biws,r=abc,p={p}", "nonce mismatch"),
        ("c=biws,r={n}x,p={p}", "nonce mismatch"),
        ("c=biws,r={n},p=AAAA", "authentication failed"),
        ("c=biws,r={n},p={p}", "authentication failed"),
        ("c=biws,r={n},p={p}{invalid_utf8}", "client-final-message is not valid UTF-8"),
        # The grammar passes; scramp refuses.
        ("c=biws,r={n},c=biws,p={p}", "malformed client-final-message"),  # duplicate c=
        ("c=biws,r={n},s=x,p={p}", "malformed client-final-message"),  # not an extension
        ("c=biws,r={n},m=x,p={p}", "SCRAM mandatory extensions are not supported"),
        ("c=biws,r={n}\x01,p={p}", "nonce mismatch"),
    ],
)
@pytest.mark.parametrize("name", sorted(SCRAM))
def test_malformed_client_final_fails(name: str, final: str, reason: str) -> None:
    scram, nonce = server_first_for(name)
    proof = PROOF if name == "SCRAM-SHA-256" else base64.b64encode(bytes(20)).decode()
    template = final.encode().replace(b"{invalid_utf8}", b"\xff")
    message = template.replace(b"{n}", nonce.encode()).replace(b"{p}", proof.encode())
    assert scram.step(message) == Failure(reason)
    with pytest.raises(LocalProtocolError):
        scram.step(message)


def test_driver_misuse_raises() -> None:
    scram = ScramSha256(CTX)
    with pytest.raises(LocalProtocolError):
        scram.provide(None)  # no lookup pending
    with pytest.raises(LocalProtocolError):
        scram.step(b"n,,n=user,r=abc")  # before start()
    assert scram.start(b"n,,n=user,r=abc") == NeedScramCredentials("user")
    with pytest.raises(LocalProtocolError):
        scram.start(None)
    with pytest.raises(LocalProtocolError):
        scram.step(b"c=biws")  # the lookup is pending, not a response
    short = ScramCredentials(SALT, b"x" * 20, b"y" * 20, 4096)  # a SHA-1 verifier
    with pytest.raises(LocalProtocolError):
        scram.provide(short)
    assert isinstance(
        scram.provide(derive_credentials("SCRAM-SHA-256", "pw", SALT, 4096)), Challenge
    )
    with pytest.raises(LocalProtocolError):
        scram.provide(None)


@pytest.mark.parametrize(
    "verifier",
    [
        ScramCredentials(b"short salt", b"x" * 32, b"y" * 32, 4096),  # under 12 octets
        ScramCredentials(SALT, b"x" * 32, b"y" * 32, 4095),
        ScramCredentials(SALT, b"x" * 32, b"y" * 32, 10_000_001),
    ],
)
def test_verifier_scramp_refuses_is_a_local_error(verifier: ScramCredentials) -> None:
    # Our verifier store handed over something scramp cannot serve: our bug, not the
    # client's, so it must not turn into a Failure the client can see.
    scram = ScramSha256(CTX)
    assert scram.start(b"n,,n=user,r=abc") == NeedScramCredentials("user")
    with pytest.raises(LocalProtocolError):
        scram.provide(verifier)


def test_saslprep_does_not_change_the_name_looked_up() -> None:
    # RFC 5802 section 5.1: the client SASLpreps the name; scramp SASLpreps it again only
    # to validate it, and the lookup gets the name as sent.
    user = "\uff41lice"  # FULLWIDTH LATIN SMALL LETTER A; NFKC would make it "alice"
    message = f"n,,n={user},r=abc".encode()
    assert ScramSha256(CTX).start(message) == NeedScramCredentials(user)


@pytest.mark.parametrize("nonce", ["", "a,b", "a b", "\u00e9"])
def test_context_nonce_must_be_printable_without_comma(nonce: str) -> None:
    with pytest.raises(LocalProtocolError):
        ScramSha256(MechanismContext(hostname="h", nonce=nonce))

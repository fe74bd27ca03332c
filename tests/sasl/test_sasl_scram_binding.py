"""SCRAM channel binding (RFC 5802 section 6, RFC 5929) and the GS2 flag rules.

scramp is the real client for tls-server-end-point. Headers scramp's client never sends
(a changed header, "y" with the client's own choice of data) use `rfc5802_client_final`,
the RFC's formulas, which is itself checked against scramp where both can run.

tls-exporter (RFC 9266) is not offered: scramp 1.5.0, which runs our server side, lacks
it, and Python's ssl module exposes no exported keying material. Nor is an authzid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
import scramp  # type: ignore[import-untyped]

from popbox.protocol.errors import LocalProtocolError
from popbox.sasl.base import (
    Challenge,
    Failure,
    MechanismContext,
    NeedScramCredentials,
    Step,
    Success,
)
from popbox.sasl.scram import ScramSha1, ScramSha256, ScramSha256Plus, derive_credentials

SALT = b"popbox-salt-0123"
SNONCE = "serverNONCE"
CNONCE = "clientNONCE"
END_POINT = ("tls-server-end-point", hashlib.sha256(b"fake certificate").digest())
EXPORTER = ("tls-exporter", hashlib.sha256(b"fake exporter key").digest())
VERIFIER = derive_credentials("SCRAM-SHA-256", "pencil", SALT, 4096)


def ctx(binding: tuple[str, bytes] | None) -> MechanismContext:
    return MechanismContext(hostname="mail.example.org", nonce=SNONCE, channel_binding=binding)


def rfc5802_client_final(
    password: str, gs2_header: bytes, cbind_data: bytes, client_first_bare: str, server_first: str
) -> tuple[bytes, bytes]:
    """(client-final, expected server-final) for SHA-256, straight from RFC 5802 section 3."""
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    cbind = base64.b64encode(gs2_header + cbind_data).decode()
    without_proof = f"c={cbind},r={fields['r']}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    server_final = b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode(), server_final


def exchange(
    mechanism: ScramSha1 | ScramSha256 | ScramSha256Plus, gs2_header: bytes, cbind_data: bytes
) -> tuple[Step, bytes]:
    bare = f"n=user,r={CNONCE}"
    assert mechanism.start(gs2_header + bare.encode()) == NeedScramCredentials("user")
    server_first = mechanism.provide(VERIFIER)
    assert isinstance(server_first, Challenge)
    final, server_final = rfc5802_client_final(
        "pencil", gs2_header, cbind_data, bare, server_first.data.decode()
    )
    return mechanism.step(final), server_final


def test_rfc_formula_client_agrees_with_scramp() -> None:
    client = scramp.ScramClient(
        ["SCRAM-SHA-256-PLUS"], "user", "pencil", channel_binding=END_POINT, c_nonce=CNONCE
    )
    mechanism = ScramSha256Plus(ctx(END_POINT))
    assert mechanism.start(client.get_client_first().encode()) == NeedScramCredentials("user")
    server_first = mechanism.provide(VERIFIER)
    assert isinstance(server_first, Challenge)
    client.set_server_first(server_first.data.decode())
    ours, _ = rfc5802_client_final(
        "pencil",
        b"p=tls-server-end-point,,",
        END_POINT[1],
        f"n=user,r={CNONCE}",
        server_first.data.decode(),
    )
    assert client.get_client_final().encode() == ours


@pytest.mark.parametrize("password", ["pencil", "wrong"])
def test_plus_with_scramp_client_and_tls_server_end_point(password: str) -> None:
    client = scramp.ScramClient(
        ["SCRAM-SHA-256-PLUS"], "user", password, channel_binding=END_POINT, c_nonce=CNONCE
    )
    mechanism = ScramSha256Plus(ctx(END_POINT))
    first = client.get_client_first()
    assert first == f"p=tls-server-end-point,,n=user,r={CNONCE}"
    assert mechanism.start(first.encode()) == NeedScramCredentials("user")
    server_first = mechanism.provide(VERIFIER)
    assert isinstance(server_first, Challenge)
    client.set_server_first(server_first.data.decode())
    step = mechanism.step(client.get_client_final().encode())
    if password == "wrong":
        assert step == Failure("authentication failed")
        return
    assert isinstance(step, Success)
    assert step.user == "user"
    assert step.final is not None
    client.set_server_final(step.final.decode())


def test_plus_with_wrong_binding_data_fails() -> None:
    # A man in the middle terminates TLS itself: the client sees another certificate.
    client_side = ("tls-server-end-point", hashlib.sha256(b"attacker certificate").digest())
    client = scramp.ScramClient(
        ["SCRAM-SHA-256-PLUS"], "user", "pencil", channel_binding=client_side, c_nonce=CNONCE
    )
    mechanism = ScramSha256Plus(ctx(END_POINT))
    assert mechanism.start(client.get_client_first().encode()) == NeedScramCredentials("user")
    server_first = mechanism.provide(VERIFIER)
    assert isinstance(server_first, Challenge)
    client.set_server_first(server_first.data.decode())
    assert mechanism.step(client.get_client_final().encode()) == Failure("channel binding mismatch")


@pytest.mark.parametrize("initial", [None, b"p=tls-exporter,,n=user,r=abc"])
def test_plus_with_only_tls_exporter_data_is_not_available(initial: bytes | None) -> None:
    mechanism = ScramSha256Plus(ctx(EXPORTER))
    assert mechanism.start(initial) == Failure(
        "channel binding is not available on this connection"
    )
    with pytest.raises(LocalProtocolError):
        mechanism.provide(VERIFIER)


@pytest.mark.parametrize("mechanism", [ScramSha256, ScramSha1])
def test_y_flag_is_no_downgrade_when_only_tls_exporter_data_exists(
    mechanism: type[ScramSha1 | ScramSha256],
) -> None:
    # -PLUS cannot succeed on such a connection, so "y" there hides nothing.
    instance = mechanism(ctx(EXPORTER))
    first = f"y,,n=user,r={CNONCE}".encode()
    assert instance.start(first) == NeedScramCredentials("user")


def test_non_plus_with_y_flag_without_binding() -> None:
    step, server_final = exchange(ScramSha256(ctx(None)), b"y,,", b"")
    assert step == Success("user", final=server_final)


@pytest.mark.parametrize(
    ("mechanism", "binding", "header"),
    [
        (ScramSha256Plus, END_POINT, b"p=tls-server-end-point,a=user,"),
        (ScramSha256, None, b"y,a=user,"),
        (ScramSha256, None, b"n,a=someone-else,"),
    ],
)
def test_authzid_is_not_supported(
    mechanism: type[ScramSha256 | ScramSha256Plus], binding: tuple[str, bytes] | None, header: bytes
) -> None:
    # scramp refuses a GS2 authzid; POP3 clients do not send one in practice.
    instance = mechanism(ctx(binding))
    first = header + f"n=user,r={CNONCE}".encode()
    assert instance.start(first) == Failure("authorization identity not supported")
    with pytest.raises(LocalProtocolError):
        instance.provide(VERIFIER)


@pytest.mark.parametrize("sent", [b"n,,", b"y,,"])
def test_cbind_input_must_repeat_the_header_as_sent(sent: bytes) -> None:
    # Client-first said one GS2 header but client-final's c= says another.
    mechanism = ScramSha256(ctx(None))
    first = sent + f"n=user,r={CNONCE}".encode()
    assert mechanism.start(first) == NeedScramCredentials("user")
    server_first = mechanism.provide(VERIFIER)
    assert isinstance(server_first, Challenge)
    other = b"y,," if sent == b"n,," else b"n,,"
    final, _ = rfc5802_client_final(
        "pencil", other, b"", f"n=user,r={CNONCE}", server_first.data.decode()
    )
    assert mechanism.step(final) == Failure("channel binding mismatch")


@pytest.mark.parametrize(
    ("mechanism", "binding", "first", "reason"),
    [
        # The non-PLUS mechanisms never bind: "p" there means the -PLUS name was hidden.
        (
            ScramSha256,
            None,
            b"p=tls-server-end-point,,",
            "channel binding needs the -PLUS mechanism",
        ),
        (
            ScramSha256,
            END_POINT,
            b"p=tls-server-end-point,,",
            "channel binding needs the -PLUS mechanism",
        ),
        (ScramSha1, END_POINT, b"p=tls-exporter,,", "channel binding needs the -PLUS mechanism"),
        # "y" while we offer -PLUS (binding data exists): a downgrade (RFC 5802 section 6).
        (ScramSha256, END_POINT, b"y,,", "channel binding downgrade detected"),
        (ScramSha1, END_POINT, b"y,,", "channel binding downgrade detected"),
        # -PLUS requires "p" with the type this connection has.
        (ScramSha256Plus, END_POINT, b"n,,", "channel binding is required by this mechanism"),
        (ScramSha256Plus, END_POINT, b"y,,", "channel binding is required by this mechanism"),
        (ScramSha256Plus, END_POINT, b"p=tls-exporter,,", "unsupported channel binding type"),
        (ScramSha256Plus, END_POINT, b"p=tls-unique,,", "unsupported channel binding type"),
        (ScramSha256Plus, END_POINT, b"p=x-unknown,,", "unsupported channel binding type"),
    ],
)
def test_gs2_flag_rules(
    mechanism: type[ScramSha1 | ScramSha256 | ScramSha256Plus],
    binding: tuple[str, bytes] | None,
    first: bytes,
    reason: str,
) -> None:
    instance = mechanism(ctx(binding))
    assert instance.start(first + f"n=user,r={CNONCE}".encode()) == Failure(reason)
    with pytest.raises(LocalProtocolError):
        instance.provide(VERIFIER)


@pytest.mark.parametrize("binding", [None, END_POINT])
def test_non_plus_accepts_n_flag_with_or_without_binding(binding: tuple[str, bytes] | None) -> None:
    client = scramp.ScramClient(["SCRAM-SHA-256"], "user", "pencil", c_nonce=CNONCE)
    mechanism = ScramSha256(ctx(binding))
    assert mechanism.start(client.get_client_first().encode()) == NeedScramCredentials("user")
    server_first = mechanism.provide(VERIFIER)
    assert isinstance(server_first, Challenge)
    client.set_server_first(server_first.data.decode())
    step = mechanism.step(client.get_client_final().encode())
    assert isinstance(step, Success)


def test_non_plus_accepts_y_flag_when_no_binding_is_offered() -> None:
    # scramp sends "y" when it has binding data but the mechanism is not -PLUS.
    client = scramp.ScramClient(
        ["SCRAM-SHA-256"], "user", "pencil", channel_binding=END_POINT, c_nonce=CNONCE
    )
    first = client.get_client_first()
    assert first.startswith("y,,")
    mechanism = ScramSha256(ctx(None))
    assert mechanism.start(first.encode()) == NeedScramCredentials("user")
    server_first = mechanism.provide(VERIFIER)
    assert isinstance(server_first, Challenge)
    client.set_server_first(server_first.data.decode())
    step = mechanism.step(client.get_client_final().encode())
    assert isinstance(step, Success)
    assert step.final is not None
    client.set_server_final(step.final.decode())


@pytest.mark.parametrize("initial", [None, b"p=tls-server-end-point,,n=user,r=abc"])
def test_plus_without_channel_binding_data_fails_at_start(initial: bytes | None) -> None:
    mechanism = ScramSha256Plus(ctx(None))
    assert mechanism.start(initial) == Failure(
        "channel binding is not available on this connection"
    )
    with pytest.raises(LocalProtocolError):
        mechanism.step(b"p=tls-server-end-point,,n=user,r=abc")

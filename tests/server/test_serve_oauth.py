"""OAUTHBEARER (RFC 7628) and XOAUTH2 end to end with JWTs signed in the test, checked by
popbox against [auth.oauth]; curl's --oauth2-bearer as a real client."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from conftest import Starter
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server_helpers import PopboxServer, RawClient, crlf

USER = "alice@example.org"
USERS = {USER: "{PLAIN}not-used-here"}
MESSAGE = b"Subject: token\r\n\r\nhello\r\n"
ISSUER, AUDIENCE = "https://id.example.org", "popbox"
ERROR_CHALLENGE = b"+ " + base64.b64encode(b'{"status":"invalid_token"}') + b"\r\n"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return new_key()


def token(key: rsa.RSAPrivateKey, **claims: object) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "email": USER, "iat": now, "exp": now + 300}
    body.update(claims)
    return jwt.encode(body, key, algorithm="RS256")


def start(popbox: Starter, key: rsa.RSAPrivateKey, tmp_path: Path) -> PopboxServer:
    public = tmp_path / "issuer.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    oauth = f'[auth.oauth]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\npublic_key = "{public}"\n'
    return popbox(USERS, {USER: [MESSAGE]}, extra=oauth)


def auth(client: RawClient, mechanism: bytes, response: bytes) -> bytes:
    """RFC 5034 section 4: a response too long for the 255-octet AUTH line goes after an
    empty challenge."""
    assert client.command(b"AUTH " + mechanism) == b"+ \r\n"
    return client.command(response)


def oauthbearer(value: str, user: str | None = USER) -> bytes:
    gs2 = f"n,a={user}," if user else "n,,"
    return base64.b64encode(f"{gs2}\x01auth=Bearer {value}\x01\x01".encode())


def test_capa_offers_bearer_mechanisms(
    popbox: Starter, signing_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    server = start(popbox, signing_key, tmp_path)
    client = RawClient(server)
    client.send(b"CAPA\r\n")
    assert (
        b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 OAUTHBEARER XOAUTH2 PLAIN LOGIN\r\n"
        in client.read_multiline()
    )


def test_valid_token_logs_in(
    popbox: Starter, signing_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    server = start(popbox, signing_key, tmp_path)
    client = RawClient(server)
    reply = auth(client, b"OAUTHBEARER", oauthbearer(token(signing_key)))
    assert reply == b"+OK maildrop has 1 messages (%d octets)\r\n" % len(MESSAGE)
    xoauth2 = f"user={USER}\x01auth=Bearer {token(signing_key)}\x01\x01".encode()
    second = RawClient(server)
    assert auth(second, b"XOAUTH2", base64.b64encode(xoauth2)) == (
        b"-ERR [IN-USE] maildrop is locked by another session\r\n"
    )
    client.command(b"QUIT")
    client.read_until_closed()
    assert auth(second, b"XOAUTH2", base64.b64encode(xoauth2)).startswith(b"+OK")
    server.log.wait_for(rf"login ok user={USER} client=127\.0\.0\.1 mechanism=OAUTHBEARER")
    server.log.wait_for(rf"login ok user={USER} client=127\.0\.0\.1 mechanism=XOAUTH2")
    assert "Bearer" not in "\n".join(server.log.lines)


@pytest.mark.parametrize(
    "case",
    ["expired", "wrong-audience", "wrong-issuer", "bad-signature", "other-user", "no-claim"],
)
def test_bad_tokens_get_the_rfc7628_error_then_err(
    popbox: Starter, signing_key: rsa.RSAPrivateKey, tmp_path: Path, case: str
) -> None:
    server = start(popbox, signing_key, tmp_path)
    now = int(time.time())
    value = {
        "expired": lambda: token(signing_key, iat=now - 600, exp=now - 300),
        "wrong-audience": lambda: token(signing_key, aud="someone-else"),
        "wrong-issuer": lambda: token(signing_key, iss="https://evil.example"),
        "bad-signature": lambda: token(new_key()),
        "other-user": lambda: token(signing_key, email="mallory@example.org"),
        "no-claim": lambda: token(signing_key, email=None),
    }[case]()
    client = RawClient(server)
    assert auth(client, b"OAUTHBEARER", oauthbearer(value)) == ERROR_CHALLENGE
    # RFC 7628 section 3.2.3: the client answers the error with a dummy response.
    assert client.command(base64.b64encode(b"\x01")) == b"-ERR [AUTH] invalid bearer token\r\n"
    server.log.wait_for(rf"login failed user={USER} client=127\.0\.0\.1 mechanism=OAUTHBEARER")


def test_curl_with_oauth2_bearer(
    popbox: Starter, signing_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    server = start(popbox, signing_key, tmp_path)
    url = f"pop3://{USER.replace('@', '%40')}@{server.host}:{server.port}/1"
    fetched = subprocess.run(
        ["curl", "-sS", "--oauth2-bearer", token(signing_key), url],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert fetched.stdout == crlf(MESSAGE)
    server.log.wait_for(rf"login ok user={USER} client=127\.0\.0\.1 mechanism=OAUTHBEARER")
    claims = json.loads(base64.urlsafe_b64decode(token(signing_key).split(".")[1] + "=="))
    assert claims["aud"] == AUDIENCE

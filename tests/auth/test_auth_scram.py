"""SCRAM verifiers: Dovecot's {SCRAM-SHA-1}/{SCRAM-SHA-256} schemes and the lookups behind
SCRAM-SHA-* SASL (RFC 5802, RFC 7677).

The vectors come from `doveadm pw -s SCRAM-SHA-256 -p pencil` (and SCRAM-SHA-1) of Dovecot
2.3.19.1 (Debian 12 dovecot-core 1:2.3.19.1+dfsg1-2.1+deb12u7). Expected keys are computed
here with hashlib/hmac straight from RFC 5802 section 3, independently of the code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from popbox.auth import scramkeys
from popbox.auth.passwdfile import PasswdFileAuthenticator
from popbox.auth.schemes import MalformedSecret, hash_password, verify
from popbox.sasl.base import ScramCredentials

DOVEADM_SHA256 = (
    "{SCRAM-SHA-256}4096,2QIs9YPDNQ2LtNFiguqY3w==,ng+lpPGU+prcl4vOMF9cCOhsjSE3BqBSWkmAjHU2VWs=,"
    "yWT+5T3/1LmMVDrXspuEZSrw0mbOn7wDlCGtbM6Sa30="
)
DOVEADM_SHA1 = (
    "{SCRAM-SHA-1}4096,8AX+vQhGanEeqJEHabdVZw==,H9eg2rocRTgG7D4npgoCKQHIvL0=,"
    "HnWoaGqUe2A3mqGh7+/ZYH9H5ZI="
)
# `doveadm pw -s SCRAM-SHA-256 -p 'pässwörd ☃'` (UTF-8) and `-s SCRAM-SHA-1 -p 'Tr0ub4dor&3'`
DOVEADM_UTF8 = (
    "{SCRAM-SHA-256}4096,5fzcnDvB8abJUemBgFLmTg==,nRruSTKWoxMjmIfE+MrurpFt8mU9U4fH5xAOsBDTh+k=,"
    "2Ag1cEYrldZbTi5L1p2mWjZ19mc1AgpMNnFbznDQrwU="
)
DOVEADM_TROUBADOR = (
    "{SCRAM-SHA-1}4096,Awk6bc/aPlm+8nZI8zh1KQ==,5nhn3BaJmao+58lZpITmtrCK7FA=,"
    "8eHwUEDirShvVnzCm0/lMuZ7cAM="
)


def rfc5802_keys(hash_name: str, password: bytes, salt: bytes, i: int) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey), written out from RFC 5802 section 3."""
    salted = hashlib.pbkdf2_hmac(hash_name, password, salt, i)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    return hashlib.new(hash_name, client_key).digest(), server_key


def fields(stored: str) -> list[str]:
    return stored.split("}", 1)[1].split(",")


# --- the password schemes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "password"),
    [
        (DOVEADM_SHA256, "pencil"),
        (DOVEADM_SHA1, "pencil"),
        (DOVEADM_UTF8, "pässwörd ☃"),
        (DOVEADM_TROUBADOR, "Tr0ub4dor&3"),
        (DOVEADM_SHA256.replace("{SCRAM-SHA-256}", "{scram-sha-256}"), "pencil"),
    ],
)
def test_doveadm_vectors_verify(stored: str, password: str) -> None:
    assert verify(password, stored) is True
    assert verify(password + "x", stored) is False
    assert verify(password.upper(), stored) is False


def test_rfc7677_example_server_signature() -> None:
    # RFC 7677 section 3: user "user", password "pencil"; the server's final message.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    credentials = scramkeys.derive_credentials("sha256", b"pencil", salt, 4096)
    auth_message = (
        b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,"
        b"i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    )
    signature = hmac.new(credentials.server_key, auth_message, "sha256").digest()
    assert base64.b64encode(signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    # The client proof recovers StoredKey (RFC 5802 section 3, server side).
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.new(credentials.stored_key, auth_message, "sha256").digest()
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == credentials.stored_key


@pytest.mark.parametrize(
    ("scheme", "hash_name", "key_octets"),
    [("SCRAM-SHA-256", "sha256", 32), ("SCRAM-SHA-1", "sha1", 20), ("scram-sha-1", "sha1", 20)],
)
def test_hash_password_writes_dovecot_format(scheme: str, hash_name: str, key_octets: int) -> None:
    stored = hash_password("pencil", scheme)
    assert stored.startswith("{" + scheme.upper() + "}4096,")
    count, salt_text, stored_key, server_key = fields(stored)
    salt = base64.b64decode(salt_text)
    assert count == "4096"
    assert len(salt) == 16
    keys = base64.b64decode(stored_key), base64.b64decode(server_key)
    assert keys == rfc5802_keys(hash_name, b"pencil", salt, 4096)
    assert len(keys[0]) == key_octets
    assert verify("pencil", stored) is True
    assert verify("pencil2", stored) is False


def test_hash_password_uses_a_fresh_salt() -> None:
    assert (
        fields(hash_password("pencil", "SCRAM-SHA-256"))[1]
        != fields(hash_password("pencil", "SCRAM-SHA-256"))[1]
    )


@pytest.mark.skipif(shutil.which("doveadm") is None, reason="Dovecot's doveadm not installed")
@pytest.mark.parametrize("scheme", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_doveadm_accepts_our_hashes(scheme: str) -> None:
    stored = hash_password("pässwörd ☃", scheme)
    ok = subprocess.run(
        ["doveadm", "pw", "-t", stored, "-p", "pässwörd ☃"], capture_output=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.decode().endswith("(verified)\n")
    wrong = subprocess.run(
        ["doveadm", "pw", "-t", stored, "-p", "pencil"], capture_output=True, check=False
    )
    assert wrong.returncode != 0


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("4096,c2FsdA==,AAAA", "SCRAM secret is not iterations,salt,StoredKey,ServerKey"),
        ("4095" + DOVEADM_SHA256[19:], "SCRAM iteration count must be 4096..10000000"),
        ("10000001" + DOVEADM_SHA256[19:], "SCRAM iteration count must be 4096..10000000"),
        ("+4096" + DOVEADM_SHA256[19:], "SCRAM iteration count must be 4096..10000000"),
        ("4096,!!,AAAA,AAAA", "SCRAM StoredKey and ServerKey must be 32 octets"),
        (
            "4096,!!," + ",".join(fields(DOVEADM_SHA256)[2:]),
            "SCRAM salt is not valid base64",
        ),
        ("4096,c2FsdA==,%%%%," + fields(DOVEADM_SHA256)[3], "SCRAM StoredKey is not valid base64"),
        (",".join(fields(DOVEADM_SHA1)), "SCRAM StoredKey and ServerKey must be 32 octets"),
    ],
)
def test_malformed_verifier(secret: str, message: str) -> None:
    with pytest.raises(MalformedSecret) as excinfo:
        verify("pencil", "{SCRAM-SHA-256}" + secret)
    assert str(excinfo.value) == message


def test_format_parse_round_trip() -> None:
    credentials = ScramCredentials(b"salt" * 3, b"\1" * 20, b"\2" * 20, 5000)
    text = scramkeys.format_verifier(credentials)
    assert text == (
        b"5000,c2FsdHNhbHRzYWx0,AQEBAQEBAQEBAQEBAQEBAQEBAQE=,AgICAgICAgICAgICAgICAgICAgI="
    )
    assert scramkeys.parse_verifier("sha1", text) == credentials
    short_salt = ScramCredentials(b"salt", b"\1" * 20, b"\2" * 20, 5000)
    with pytest.raises(scramkeys.ScramVerifierError, match="salt must be at least 12 octets"):
        scramkeys.parse_verifier("sha1", scramkeys.format_verifier(short_salt))


@pytest.mark.parametrize(
    ("mechanism", "hash_name"),
    [
        ("SCRAM-SHA-1", "sha1"),
        ("SCRAM-SHA-256", "sha256"),
        ("SCRAM-SHA-256-PLUS", "sha256"),
        ("scram-sha-1-plus", "sha1"),
    ],
)
def test_scram_hash(mechanism: str, hash_name: str) -> None:
    assert scramkeys.scram_hash(mechanism) == hash_name


# --- the authenticator's lookups ----------------------------------------------------

USERS = (
    "# SCRAM users\n"
    f"s256:{DOVEADM_SHA256}\n"
    f"s1:{DOVEADM_SHA1}\n"
    "plain:{PLAIN}pencil\n"
    "clear:{CLEARTEXT}pencil\n"
    "decomposed:{PLAIN}cafe\u0301\n"
    "crypt:$1$ax0OZ6nI$rn4mWa2kyr5CD2rXmQrhZ0\n"
    "broken:{SCRAM-SHA-256}4096,xx\n"
    "nopass\n"
)


@pytest.fixture
def authenticator(tmp_path: Path) -> PasswdFileAuthenticator:
    path = tmp_path / "users"
    path.write_text(USERS, encoding="utf-8")
    return PasswdFileAuthenticator(path)


def lookup(
    authenticator: PasswdFileAuthenticator, user: str, mechanism: str
) -> ScramCredentials | None:
    return asyncio.run(authenticator.scram_credentials(user, mechanism))


@pytest.mark.parametrize(
    ("user", "mechanism", "stored"),
    [
        ("s256", "SCRAM-SHA-256", DOVEADM_SHA256),
        ("s256", "SCRAM-SHA-256-PLUS", DOVEADM_SHA256),
        ("s1", "SCRAM-SHA-1", DOVEADM_SHA1),
        ("s1", "SCRAM-SHA-1-PLUS", DOVEADM_SHA1),
    ],
)
def test_stored_verifier(
    authenticator: PasswdFileAuthenticator, user: str, mechanism: str, stored: str
) -> None:
    iterations, salt, stored_key, server_key = fields(stored)
    hash_name = "sha256" if "256" in mechanism else "sha1"
    assert (base64.b64decode(stored_key), base64.b64decode(server_key)) == rfc5802_keys(
        hash_name, b"pencil", base64.b64decode(salt), 4096
    )
    assert lookup(authenticator, user, mechanism) == ScramCredentials(
        salt=base64.b64decode(salt),
        stored_key=base64.b64decode(stored_key),
        server_key=base64.b64decode(server_key),
        iterations=int(iterations),
    )


@pytest.mark.parametrize(
    ("user", "mechanism"),
    [
        ("plain", "SCRAM-SHA-256"),
        ("plain", "SCRAM-SHA-1"),
        ("clear", "SCRAM-SHA-256-PLUS"),
        (
            "\uff50\uff4c\uff41\uff49\uff4e",
            "SCRAM-SHA-1",
        ),  # fullwidth: the same user after RFC 8265 width mapping
    ],
)
def test_derived_from_plain_secret(
    authenticator: PasswdFileAuthenticator, user: str, mechanism: str
) -> None:
    hash_name = "sha256" if "256" in mechanism else "sha1"
    credentials = lookup(authenticator, user, mechanism)
    assert credentials is not None
    assert len(credentials.salt) == 16
    assert credentials.iterations == 4096
    keys = rfc5802_keys(hash_name, b"pencil", credentials.salt, 4096)
    assert (credentials.stored_key, credentials.server_key) == keys
    # RFC 5802 section 9: the same salt on every login, so clients can cache.
    assert lookup(authenticator, user, mechanism) == credentials


def test_derived_salt_is_per_user(authenticator: PasswdFileAuthenticator) -> None:
    plain = lookup(authenticator, "plain", "SCRAM-SHA-256")
    clear = lookup(authenticator, "clear", "SCRAM-SHA-256")
    assert plain is not None
    assert clear is not None
    assert plain.salt != clear.salt


def test_derived_from_prepared_password(authenticator: PasswdFileAuthenticator) -> None:
    # Clients prepare the password (RFC 8265 OpaqueString: NFC), so e + U+0301 -> U+00E9.
    credentials = lookup(authenticator, "decomposed", "SCRAM-SHA-256")
    assert credentials is not None
    keys = rfc5802_keys("sha256", "caf\u00e9".encode(), credentials.salt, 4096)
    assert (credentials.stored_key, credentials.server_key) == keys


@pytest.mark.parametrize(
    ("user", "mechanism"),
    [
        ("s256", "SCRAM-SHA-1"),  # a SHA-256 verifier cannot serve SCRAM-SHA-1
        ("s1", "SCRAM-SHA-256"),
        ("crypt", "SCRAM-SHA-256"),
        ("nopass", "SCRAM-SHA-256"),
        ("nobody", "SCRAM-SHA-256"),
        ("S256", "SCRAM-SHA-256"),  # names are case-sensitive, as in Dovecot
        ("a b", "SCRAM-SHA-256"),
        ("", "SCRAM-SHA-1"),
    ],
)
def test_no_verifier(authenticator: PasswdFileAuthenticator, user: str, mechanism: str) -> None:
    assert lookup(authenticator, user, mechanism) is None


def test_malformed_verifier_is_logged_and_none(
    authenticator: PasswdFileAuthenticator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="popbox.auth.passwdfile"):
        assert lookup(authenticator, "broken", "SCRAM-SHA-256") is None
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "user broken: unusable password: SCRAM secret is not iterations,salt,StoredKey,ServerKey"
    ]


def test_unknown_mechanism_is_a_caller_bug(authenticator: PasswdFileAuthenticator) -> None:
    with pytest.raises(ValueError, match="not a supported SCRAM mechanism: 'SCRAM-SHA-512'"):
        lookup(authenticator, "plain", "SCRAM-SHA-512")


def test_unreadable_file_gives_none(tmp_path: Path) -> None:
    authenticator = PasswdFileAuthenticator(tmp_path / "missing")
    assert lookup(authenticator, "plain", "SCRAM-SHA-256") is None


def test_password_login_with_scram_secret(authenticator: PasswdFileAuthenticator) -> None:
    ok = asyncio.run(authenticator.verify_password("s256", "pencil"))
    assert (ok.ok, ok.user) == (True, "s256")
    assert not asyncio.run(authenticator.verify_password("s1", "pencil!")).ok

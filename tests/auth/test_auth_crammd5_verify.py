"""CRAM-MD5 (RFC 2195) verification by the passwd-file authenticator.

Expected digests come from Python's hmac module and the RFC 2195 example; the {CRAM-MD5}
secret is `doveadm pw -s CRAM-MD5 -p tanstaaftanstaaf` (Dovecot 2.3.19.1).
"""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path

import pytest

from popbox.auth.base import AuthOutcome, AuthResult
from popbox.auth.passwdfile import PasswdFileAuthenticator

# RFC 2195 section 2.
CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
RFC2195_DIGEST = "b913a602c7eda7a495b4e6e7334d3890"
DOVEADM_CRAM = "{CRAM-MD5}d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b"
INVALID = AuthResult(AuthOutcome.INVALID_CREDENTIALS)

USERS = (
    "tim:{PLAIN}tanstaaftanstaaf\n"
    f"cram:{DOVEADM_CRAM}\n"
    f"hmac:{DOVEADM_CRAM.replace('CRAM-MD5', 'HMAC-MD5')}\n"
    "clear:{CLEAR}tanstaaftanstaaf\n"
    "b64:{PLAIN.B64}dGFuc3RhYWZ0YW5zdGFhZg==\n"
    "ssha:{SSHA256}utz3MT1Pjxv8Afp3oRNFQkatdjWYtOiLp1MwopIk+Xyl6ht0\n"
    "crypt:$1$ax0OZ6nI$rn4mWa2kyr5CD2rXmQrhZ0\n"
    "short:{CRAM-MD5}00\n"
    "nopass\n"
    "utf8:{PLAIN}p\u00e4ss\n"
)


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(USERS, encoding="utf-8")
    return path


def check(path: Path, user: str, digest: str, challenge: bytes = CHALLENGE) -> AuthResult:
    return asyncio.run(PasswdFileAuthenticator(path).verify_cram_md5(user, challenge, digest))


def test_python_hmac_agrees_with_rfc2195() -> None:
    assert hmac.new(b"tanstaaftanstaaf", CHALLENGE, "md5").hexdigest() == RFC2195_DIGEST


@pytest.mark.parametrize("user", ["tim", "cram", "hmac", "clear", "b64"])
def test_rfc2195_example(users: Path, user: str) -> None:
    assert check(users, user, RFC2195_DIGEST) == AuthResult(AuthOutcome.OK, user)


def test_upper_case_hex_is_accepted(users: Path) -> None:
    assert check(users, "cram", RFC2195_DIGEST.upper()) == AuthResult(AuthOutcome.OK, "cram")


@pytest.mark.parametrize("challenge", [b"<1.2@x>", b"", b"\xff" * 200])
def test_other_challenges(users: Path, challenge: bytes) -> None:
    digest = hmac.new(b"tanstaaftanstaaf", challenge, "md5").hexdigest()
    assert check(users, "tim", digest, challenge).ok
    assert check(users, "cram", digest, challenge).ok


def test_utf8_password(users: Path) -> None:
    digest = hmac.new("p\u00e4ss".encode(), CHALLENGE, "md5").hexdigest()
    assert check(users, "utf8", digest) == AuthResult(AuthOutcome.OK, "utf8")


@pytest.mark.parametrize(
    ("user", "digest"),
    [
        ("tim", "0" * 32),
        ("tim", RFC2195_DIGEST[:-1]),
        ("tim", RFC2195_DIGEST + "0"),
        ("tim", "not hex at all \u00e9"),
        ("tim", ""),
        ("Tim", RFC2195_DIGEST),
        ("nobody", RFC2195_DIGEST),
        # Secrets that cannot give HMAC-MD5 answer like a wrong digest.
        ("ssha", hmac.new(b"Tr0ub4dor&3", CHALLENGE, "md5").hexdigest()),
        ("crypt", hmac.new(b"Tr0ub4dor&3", CHALLENGE, "md5").hexdigest()),
        ("short", RFC2195_DIGEST),
        ("nopass", hmac.new(b"", CHALLENGE, "md5").hexdigest()),
        ("a:b", RFC2195_DIGEST),
    ],
)
def test_refused(users: Path, user: str, digest: str) -> None:
    assert check(users, user, digest) == INVALID


def test_unreadable_file_is_a_temporary_failure(tmp_path: Path) -> None:
    result = check(tmp_path / "missing", "tim", RFC2195_DIGEST)
    assert result == AuthResult(AuthOutcome.TEMPORARY_FAILURE)

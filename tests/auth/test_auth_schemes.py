"""Dovecot password schemes, checked against real `doveadm pw` output.

Every vector below was generated with `doveadm pw -s SCHEME -p PASSWORD` from Dovecot
2.3.19.1 (Debian 12 package dovecot-core 1:2.3.19.1+dfsg1-2.1+deb12u7). The suite does not
need Dovecot; the reverse check (our hashes accepted by `doveadm pw -t`) was done by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from popbox.auth import schemes
from popbox.auth.crammd5 import CramContextError, cram_md5_context, hmac_md5_with_context
from popbox.auth.schemes import (
    SUPPORTED_SCHEMES,
    MalformedSecret,
    UnknownScheme,
    hash_password,
    plain_secret,
    verify,
)

PASSWORD = "Tr0ub4dor&3"
# Differs in the first character, so even 8-character DES crypt tells them apart.
WRONG = "tr0ub4dor&3"

# `doveadm pw -s <scheme> -p 'Tr0ub4dor&3'`
DOVEADM = [
    "{PLAIN}Tr0ub4dor&3",
    "{CLEARTEXT}Tr0ub4dor&3",
    "{CLEAR}Tr0ub4dor&3",
    "{PLAIN.B64}VHIwdWI0ZG9yJjM=",
    "{PLAIN.HEX}547230756234646f722633",
    # Dovecot 2.3.19's CRYPT writes bcrypt via crypt_gensalt().
    "{CRYPT}$2y$05$AmsTiS8ijA2E05JFE6r//.Qeqtt0tib1hfen5IGcXLQ.wBl.Htbvy",
    "{DES-CRYPT}RLeow/Q/anEto",
    "{MD5-CRYPT}$1$ax0OZ6nI$rn4mWa2kyr5CD2rXmQrhZ0",
    "{MD5}$1$t.Aqygx6$6ZWg0uF2HUpIPKjGiRU04/",
    "{SHA256-CRYPT}$5$2bU9FrFBoWbqXQKh$TWGhEFgp3BUdOz6P42pE7iM9paW4/UvFwmiC5WUMzpB",
    "{SHA512-CRYPT}$6$ffRRgm2js47enmS.$krrDuXS/uU/FM31b3ZVf2DAp/uk.Ep7z3gv1zTzjQGl3rwsEa"
    "z9ezhnP9.YrYwc78EiCuLFGRZhGhdQUAiFgX.",
    # -r 10000
    "{SHA512-CRYPT}$6$rounds=10000$iPu8PGgdeWeDN0ll$s6yOkGOj.3bq.qa8un5Rlq8dRN4J6n98ta1U4"
    "SxrknwfGd/RcZ1LLSW9NUuuavwa/ODuludjIwnRcStddMSPL0",
    "{BLF-CRYPT}$2y$05$NDZvFSqP1jP7z0R0MnqTBOyQ0xJ1oeIIGGMMU0WPve94Bjmf0RfQG",
    "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$xKJkfIO8unIzB1CeBlIgvw$Owgydv1axjaopS7zNNWnan"
    "C0edkU4nVWOv8dNdg2wek",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$NiAEIQ4LFCjLvnuBWJN9og$MKSdQOT5B9jsfCWRfwJf"
    "eEvSJex0nr8p4d/YZ0Pe0tQ",
    "{SSHA}k5UTOStX8hmTZ4jk/2icFOsXVRspnNEQ",
    "{SSHA.HEX}8363510206c26b6d7d84afb63e374ad9b518920687cd152e",
    "{SSHA256}utz3MT1Pjxv8Afp3oRNFQkatdjWYtOiLp1MwopIk+Xyl6ht0",
    "{SSHA512}XXa6aQG2iRaTREDPB3C5syrZ1rslpr2hyuEmmRyJ3xKZLxzruolTj4zRIKjS21CXt5vk3fspGgMhh"
    "ycvS8TKXaeNnz4=",
    "{SMD5}hFp2Cgt+d0ILR7wP47kkA0cIb7M=",
    "{SHA}h0Vy56WuaklGamrFeLmK26eMaqY=",
    "{SHA1}h0Vy56WuaklGamrFeLmK26eMaqY=",
    "{SHA256}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc=",
    "{SHA256.B64}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc=",
    "{SHA256.HEX}48486e1514e842346ff405b1e45f44059ae82619f2306f99d0940dcb386e91f7",
    "{SHA512}xyu2IccEDPS2R0BjqaeXJpDiUvNa2+fPr/Wx7iMW7+c4LnI9QeATor+8M8MAfFDFhH0hqInM6DhTbqx"
    "yeAjeQA==",
    "{SHA512.HEX}c72bb621c7040cf4b6474063a9a7972690e252f35adbe7cfaff5b1ee2316efe7382e723d41"
    "e013a2bfbc33c3007c50c5847d21a889cce838536eac727808de40",
    "{PLAIN-MD5}4ece57a61323b52ccffdbef021956754",
    "{LDAP-MD5}Ts5XphMjtSzP/b7wIZVnVA==",
    "{CRAM-MD5}c0a49b541c47c13e0fed75e90df0510e8e19d265316dbafce5048e1f92c94232",
]

# `doveadm pw -s <scheme> -p 'pässwörd'` (UTF-8 on the command line)
UNICODE_PASSWORD = "pässwörd"
DOVEADM_UNICODE = [
    "{SSHA256}MCwsKyc6oZW6s2xX1FzUlfPuX3JsZu0D9vZjI1FuXPQbhgvi",
    "{CRAM-MD5}4a60bd37924fc5d45b4c92ce695bac86cb234bc3028aab2a71a225cb0dedfbb9",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$cAeTuCUkksRyZNIUq+kQsw$67VZlHwhswVwg6PzY0LZ/2"
    "i8WZ5Lq+BUjt4jhsSZQAQ",
]

# `doveadm pw -s <scheme> -p "$(python -c "print('L0ng-'*16)")"`: 80 octets, longer than an
# HMAC block (CRAM-MD5 hashes the key first) and than bcrypt's 72.
LONG_PASSWORD = "L0ng-" * 16
DOVEADM_LONG = [
    "{CRAM-MD5}31ac6c6aaa4a862f1d73d662916cf04419b803c01d861e5a8e826e95e8f7947f",
    "{BLF-CRYPT}$2y$05$uw3yD3FzhxrqW/GnpqaIlOJHXuF.MN.srWbErGmAPWk4b5nrrtmPS",
    "{SHA512-CRYPT}$6$63cNEUbsnBsxyO24$1gKeUnzpQbI3.tB9JcLPQyVCfZuMuaZxDup/TnpZBLh1zuk/p0xT/"
    "I7BtUaNePmhu8vJd.MVwWbJ8tqaJ2xFL/",
]

REQUIRED_SCHEMES = [
    "PLAIN",
    "CLEARTEXT",
    "CRYPT",
    "MD5-CRYPT",
    "SHA256-CRYPT",
    "SHA512-CRYPT",
    "BLF-CRYPT",
    "ARGON2I",
    "ARGON2ID",
    "SSHA",
    "SSHA256",
    "SSHA512",
    "SHA256",
    "SHA512",
    "CRAM-MD5",
]


@pytest.mark.parametrize("stored", DOVEADM)
def test_doveadm_hash_accepts_password(stored: str) -> None:
    assert verify(PASSWORD, stored) is True


@pytest.mark.parametrize("stored", DOVEADM)
def test_doveadm_hash_rejects_wrong_password(stored: str) -> None:
    assert verify(WRONG, stored) is False
    assert verify("", stored) is False


@pytest.mark.parametrize("stored", DOVEADM_UNICODE)
def test_doveadm_hash_of_utf8_password(stored: str) -> None:
    assert verify(UNICODE_PASSWORD, stored) is True
    assert verify("passwörd", stored) is False


@pytest.mark.parametrize("stored", DOVEADM_LONG)
def test_doveadm_hash_of_long_password(stored: str) -> None:
    assert verify(LONG_PASSWORD, stored) is True
    assert verify(LONG_PASSWORD[:-1] + "x" if "BLF" not in stored else WRONG, stored) is False


def test_bcrypt_reads_72_octets_like_libxcrypt() -> None:
    blf = DOVEADM_LONG[1]
    assert verify(LONG_PASSWORD[:72], blf) is True
    assert verify(LONG_PASSWORD[:72] + "anything", blf) is True
    assert verify(LONG_PASSWORD[:71], blf) is False


def test_des_crypt_reads_8_characters() -> None:
    assert verify(PASSWORD[:8] + "xyz", "{DES-CRYPT}RLeow/Q/anEto") is True


@pytest.mark.parametrize(
    "stored",
    [
        # No {SCHEME}: CRYPT, dispatched on the crypt(3) `$id$` (or DES when none).
        "$6$ffRRgm2js47enmS.$krrDuXS/uU/FM31b3ZVf2DAp/uk.Ep7z3gv1zTzjQGl3rwsEaz9ezhnP9.YrYwc"
        "78EiCuLFGRZhGhdQUAiFgX.",
        "$5$2bU9FrFBoWbqXQKh$TWGhEFgp3BUdOz6P42pE7iM9paW4/UvFwmiC5WUMzpB",
        "$1$ax0OZ6nI$rn4mWa2kyr5CD2rXmQrhZ0",
        "$2y$05$NDZvFSqP1jP7z0R0MnqTBOyQ0xJ1oeIIGGMMU0WPve94Bjmf0RfQG",
        "RLeow/Q/anEto",
        # Every crypt scheme reads every crypt string (Dovecot's crypt_verify).
        "{SHA512-CRYPT}$1$ax0OZ6nI$rn4mWa2kyr5CD2rXmQrhZ0",
        "{CRYPT}$6$ffRRgm2js47enmS.$krrDuXS/uU/FM31b3ZVf2DAp/uk.Ep7z3gv1zTzjQGl3rwsEaz9ezhnP9."
        "YrYwc78EiCuLFGRZhGhdQUAiFgX.",
        # Scheme names are case-insensitive, like the encoding suffix.
        "{plain}Tr0ub4dor&3",
        "{sha256.hex}48486e1514e842346ff405b1e45f44059ae82619f2306f99d0940dcb386e91f7",
        "{SHA256.base64}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc=",
        # Without a suffix, a digest twice its raw length is hex (password_decode).
        "{SHA256}48486e1514e842346ff405b1e45f44059ae82619f2306f99d0940dcb386e91f7",
        "{CRAM-MD5.B64}wKSbVBxHwT4P7XXpDfBRDo4Z0mUxbbr85QSOH5LJQjI=",
    ],
)
def test_scheme_resolution(stored: str) -> None:
    assert verify(PASSWORD, stored) is True
    assert verify(WRONG, stored) is False


def test_missing_closing_brace_is_a_crypt_string() -> None:
    with pytest.raises(MalformedSecret) as excinfo:
        verify(PASSWORD, "{PLAINTr0ub4dor&3")
    assert str(excinfo.value) == "not a recognised crypt(3) hash"


def test_empty_crypt_never_matches() -> None:
    assert verify("", "") is False
    assert verify("", "{CRYPT}") is False
    assert verify(PASSWORD, "") is False


def test_nul_in_password_never_matches() -> None:
    assert verify("Tr0ub4dor&3\x00", "{PLAIN}Tr0ub4dor&3") is False
    with pytest.raises(ValueError) as excinfo:
        hash_password("a\x00b", "PLAIN")
    assert str(excinfo.value) == "a password cannot contain a NUL character"


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ("{NOPE}x", "unknown password scheme 'NOPE'"),
        ("{SCRAM-SHA-512}x", "unknown password scheme 'SCRAM-SHA-512'"),
        ("{SHA256.ROT13}x", "unknown encoding in password scheme 'SHA256.ROT13'"),
        ("{}x", "unknown password scheme ''"),
        ("$y$j9T$abc$def", "unsupported crypt(3) method $y$"),
        ("{CRYPT}$argon2id$v=19$m=1,t=1,p=1$aa$bb", "unsupported crypt(3) method $argon2id$"),
    ],
)
def test_unknown_scheme(stored: str, message: str) -> None:
    with pytest.raises(UnknownScheme) as excinfo:
        verify(PASSWORD, stored)
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, ValueError)


def test_hash_with_unknown_scheme() -> None:
    with pytest.raises(UnknownScheme) as excinfo:
        hash_password(PASSWORD, "ROT13")
    assert str(excinfo.value) == "unknown password scheme 'ROT13'"


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ("{SHA256}!!!!", "secret is not valid base64"),
        ("{SHA256.HEX}zz", "secret is not valid hex"),
        ("{SHA256}" + base64.b64encode(bytes(31)).decode(), "secret is 31 octets, expected 32"),
        ("{CRAM-MD5.HEX}" + "00" * 31, "secret is 31 octets, expected 32"),
        # Not 64 characters, so not hex: read as base64 (Dovecot's guess).
        ("{CRAM-MD5}" + "00" * 31, "secret is not valid base64"),
        ("{SSHA}" + base64.b64encode(bytes(20)).decode(), "salted sha1 secret is too short"),
        ("{CRYPT}not-a-hash", "not a recognised crypt(3) hash"),
        (
            "{CRYPT}$6$",
            "malformed crypt hash: expected sha512_crypt hash, got sha512_crypt "
            "config string instead",
        ),
        ("{ARGON2ID}$argon2id$garbage", "malformed argon2 hash"),
        ("{BLF-CRYPT}$2y$05$short", "malformed bcrypt hash: Invalid salt"),
        ("{CRYPT}$6$é", "crypt hash is not ASCII"),
    ],
)
def test_malformed_secret(stored: str, message: str) -> None:
    with pytest.raises(MalformedSecret) as excinfo:
        verify(PASSWORD, stored)
    assert str(excinfo.value) == message


def test_supported_schemes_cover_the_required_list() -> None:
    assert set(REQUIRED_SCHEMES) <= set(SUPPORTED_SCHEMES)


@pytest.mark.parametrize("scheme", SUPPORTED_SCHEMES)
def test_hash_round_trip(scheme: str) -> None:
    stored = hash_password(PASSWORD, scheme)
    assert stored.startswith("{" + scheme + "}")
    assert verify(PASSWORD, stored) is True
    assert verify(WRONG, stored) is False


@pytest.mark.parametrize("scheme", ["SHA256.HEX", "SSHA512.HEX", "PLAIN.B64", "cram-md5"])
def test_hash_round_trip_with_encoding_suffix(scheme: str) -> None:
    stored = hash_password(PASSWORD, scheme)
    assert stored.startswith("{" + scheme.upper() + "}")
    assert verify(PASSWORD, stored) is True


def test_default_scheme_is_argon2id_with_libsodium_compatible_costs() -> None:
    stored = hash_password(PASSWORD)
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert verify(PASSWORD, stored) is True


@pytest.mark.parametrize(
    ("scheme", "prefix"),
    [
        ("ARGON2I", "{ARGON2I}$argon2i$v=19$m=65536,t=3,p=1$"),
        ("BLF-CRYPT", "{BLF-CRYPT}$2b$12$"),
        ("MD5-CRYPT", "{MD5-CRYPT}$1$"),
        ("CRYPT", "{CRYPT}$6$"),
    ],
)
def test_hash_formats(scheme: str, prefix: str) -> None:
    assert hash_password(PASSWORD, scheme).startswith(prefix)


@pytest.mark.parametrize(("scheme", "length"), [("SHA256-CRYPT", 43), ("SHA512-CRYPT", 86)])
def test_sha_crypt_uses_default_rounds(scheme: str, length: int) -> None:
    body = hash_password(PASSWORD, scheme).split("}", 1)[1]
    marker, salt, checksum = body[1:].split("$")
    assert marker in {"5", "6"}
    assert len(salt) == 16
    assert len(checksum) == length


@pytest.mark.parametrize(
    ("scheme", "digest_octets"), [("SSHA", 20), ("SSHA256", 32), ("SSHA512", 64)]
)
def test_salted_hash_layout_is_digest_then_4_octet_salt(scheme: str, digest_octets: int) -> None:
    raw = base64.b64decode(hash_password(PASSWORD, scheme).split("}", 1)[1])
    digest, salt = raw[:digest_octets], raw[digest_octets:]
    assert len(salt) == 4
    algorithm = {"SSHA": "sha1", "SSHA256": "sha256", "SSHA512": "sha512"}[scheme]
    assert digest == hashlib.new(algorithm, PASSWORD.encode() + salt).digest()


def test_salted_hashes_differ() -> None:
    assert hash_password(PASSWORD, "SSHA256") != hash_password(PASSWORD, "SSHA256")


@pytest.mark.parametrize(
    "expected",
    [
        "{SHA256}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc=",
        "{SHA256.HEX}48486e1514e842346ff405b1e45f44059ae82619f2306f99d0940dcb386e91f7",
        "{CRAM-MD5}c0a49b541c47c13e0fed75e90df0510e8e19d265316dbafce5048e1f92c94232",
        "{PLAIN.B64}VHIwdWI0ZG9yJjM=",
        "{PLAIN}Tr0ub4dor&3",
        "{LDAP-MD5}Ts5XphMjtSzP/b7wIZVnVA==",
    ],
)
def test_unsalted_hashes_equal_doveadm(expected: str) -> None:
    scheme = expected[1 : expected.index("}")]
    assert hash_password(PASSWORD, scheme) == expected


def test_undecodable_password_octets_round_trip() -> None:
    # A password the protocol layer decoded with surrogateescape keeps its raw octets.
    password = "caf\udcc3"
    stored = hash_password(password, "SSHA256")
    assert verify(password, stored) is True
    assert verify("caf\u00c3", stored) is False


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("{PLAIN}secret", "secret"),
        ("{plain}secret", "secret"),
        ("{CLEARTEXT}se:cr et", "se:cr et"),
        ("{CLEAR}x", "x"),
        ("{PLAIN}", ""),
        ("{PLAIN.B64}VHIwdWI0ZG9yJjM=", PASSWORD),
        ("{PLAIN.HEX}547230756234646f722633", PASSWORD),
        ("{SHA256}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc=", None),
        ("{CRAM-MD5}c0a49b541c47c13e0fed75e90df0510e8e19d265316dbafce5048e1f92c94232", None),
        ("$1$ax0OZ6nI$rn4mWa2kyr5CD2rXmQrhZ0", None),
        ("secret", None),
        ("{NOPE}x", None),
    ],
)
def test_plain_secret(stored: str, expected: str | None) -> None:
    assert plain_secret(stored) == expected


def test_plain_secret_with_malformed_encoding() -> None:
    with pytest.raises(MalformedSecret):
        plain_secret("{PLAIN.B64}!!")


# --- CRAM-MD5 context -----------------------------------------------------------------


@pytest.mark.parametrize("key_octets", [0, 1, 5, 63, 64, 65, 80, 200])
def test_cram_context_reproduces_hmac_md5(key_octets: int) -> None:
    key = bytes(range(256))[:key_octets]
    context = cram_md5_context(key)
    for message_octets in (0, 1, 55, 56, 63, 64, 65, 119, 120, 200):
        message = b"m" * message_octets
        assert hmac_md5_with_context(context, message) == hmac.new(key, message, "md5").digest()


def test_cram_context_rfc2195_example() -> None:
    # RFC 2195 section 2: user "tim", password "tanstaaftanstaaf".
    context = cram_md5_context(b"tanstaaftanstaaf")
    digest = hmac_md5_with_context(context, b"<1896.697170952@postoffice.reston.mci.net>")
    assert digest.hex() == "b913a602c7eda7a495b4e6e7334d3890"


def test_cram_context_stored_by_doveadm() -> None:
    stored = "c0a49b541c47c13e0fed75e90df0510e8e19d265316dbafce5048e1f92c94232"
    assert cram_md5_context(PASSWORD.encode()).hex() == stored
    message = b"<1.2@example>"
    expected = hmac.new(PASSWORD.encode(), message, "md5").digest()
    assert hmac_md5_with_context(bytes.fromhex(stored), message) == expected


def test_cram_context_length_checked() -> None:
    with pytest.raises(CramContextError) as excinfo:
        hmac_md5_with_context(bytes(31), b"x")
    assert str(excinfo.value) == "a CRAM-MD5 context is 32 octets"


def test_scheme_errors_share_a_base() -> None:
    assert issubclass(schemes.UnknownScheme, schemes.SchemeError)
    assert issubclass(schemes.MalformedSecret, schemes.SchemeError)
    assert issubclass(schemes.SchemeError, ValueError)


@pytest.mark.parametrize(
    ("stored", "fast"),
    [
        ("{PLAIN}x", True),
        ("{CLEAR}x", True),
        ("{SSHA256}utz3MT1Pjxv8Afp3oRNFQkatdjWYtOiLp1MwopIk+Xyl6ht0", True),
        ("{SHA256.HEX}00", True),
        ("{cram-md5}00", True),
        ("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$x$y", False),
        ("{BLF-CRYPT}$2y$05$x", False),
        ("{SHA512-CRYPT}$6$x$y", False),
        ("$6$x$y", False),  # no {SCHEME}: the default, CRYPT
        ("{SCRAM-SHA-256}4096,x,y,z", False),
        ("{MD5}$1$x$y", False),
        ("{NO-SUCH}x", False),
    ],
)
def test_is_fast(stored: str, fast: bool) -> None:
    assert schemes.is_fast(stored) is fast

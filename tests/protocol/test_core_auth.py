"""STLS (RFC 2595), SASL AUTH (RFC 5034), UTF8 (RFC 6856) and CAPA per connection, in the
core: exact bytes, with the real mechanisms from sasl/."""

from __future__ import annotations

import base64
import hmac

import pytest
import scramp  # type: ignore[import-untyped]

from core_helpers import PASSWORD, FakeDriver

ALL = ("SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN")
OK_LOGIN = b"+OK maildrop has 0 messages (0 octets)\r\n"
REJECTED = b"-ERR [AUTH] invalid user name or password\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def capa(driver: FakeDriver) -> list[bytes]:
    return driver.feed(b"CAPA\r\n").split(b"\r\n")[1:-2]


def test_capa_lists_sasl_and_stls_before_login_only() -> None:
    driver = FakeDriver(mechanisms=ALL, stls_available=True)
    assert capa(driver) == [
        b"TOP",
        b"UIDL",
        b"USER",
        b"SASL " + " ".join(ALL).encode(),
        b"STLS",
        b"RESP-CODES",
        b"AUTH-RESP-CODE",
        b"PIPELINING",
        b"UTF8 USER",
        b"IMPLEMENTATION popbox",
    ]
    driver.feed(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert capa(driver) == [
        b"TOP",
        b"UIDL",
        b"RESP-CODES",
        b"AUTH-RESP-CODE",
        b"PIPELINING",
        b"UTF8 USER",
        b"IMPLEMENTATION popbox",
    ]


def test_bare_auth_lists_mechanisms() -> None:
    driver = FakeDriver(mechanisms=("CRAM-MD5", "PLAIN"))
    assert driver.feed(b"AUTH\r\n") == b"+OK SASL mechanisms follow\r\nCRAM-MD5\r\nPLAIN\r\n.\r\n"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"AUTH PLAIN " + b64(b"\0alice\0" + PASSWORD.encode()), OK_LOGIN),
        (b"AUTH plain " + b64(b"alice\0alice\0" + PASSWORD.encode()), OK_LOGIN),
        (b"AUTH PLAIN " + b64(b"\0alice\0wrong"), REJECTED),
        (b"AUTH PLAIN " + b64(b"bob\0alice\0" + PASSWORD.encode()), None),
        (b"AUTH PLAIN =", None),
        (b"AUTH PLAIN AAA*", b"-ERR invalid base64 in SASL response\r\n"),
        (b"AUTH KERBEROS_V4", b"-ERR unsupported authentication mechanism\r\n"),
        (b"AUTH GSSAPI", b"-ERR unsupported authentication mechanism\r\n"),
    ],
)
def test_auth_plain_with_initial_response(line: bytes, reply: bytes | None) -> None:
    driver = FakeDriver(mechanisms=ALL)
    out = driver.feed(line + b"\r\n")
    if reply is None:
        assert out.startswith(b"-ERR [AUTH] ")
        assert out != OK_LOGIN
    else:
        assert out == reply


def test_auth_plain_without_initial_response_and_cancel() -> None:
    driver = FakeDriver(mechanisms=ALL)
    assert driver.feed(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert driver.feed(b"*\r\n") == b"-ERR [AUTH] authentication cancelled\r\n"
    assert driver.feed(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert driver.feed(b"not base64!\r\n") == b"-ERR [AUTH] invalid base64 in SASL response\r\n"
    assert driver.feed(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert driver.feed(b64(b"\0alice\0" + PASSWORD.encode()) + b"\r\n") == OK_LOGIN


def test_auth_login_exchange() -> None:
    driver = FakeDriver(mechanisms=ALL)
    assert driver.feed(b"AUTH LOGIN\r\n") == b"+ " + b64(b"Username:") + b"\r\n"
    assert driver.feed(b64(b"alice") + b"\r\n") == b"+ " + b64(b"Password:") + b"\r\n"
    assert driver.feed(b64(PASSWORD.encode()) + b"\r\n") == OK_LOGIN


def test_auth_cram_md5() -> None:
    driver = FakeDriver(mechanisms=ALL)
    challenge = b"<nonce0@test.example>"
    assert driver.feed(b"AUTH CRAM-MD5\r\n") == b"+ " + b64(challenge) + b"\r\n"
    digest = hmac.new(PASSWORD.encode(), challenge, "md5").hexdigest()
    assert driver.feed(b64(b"alice " + digest.encode()) + b"\r\n") == OK_LOGIN


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_auth_scram_with_scramp_client(mechanism: str) -> None:
    driver = FakeDriver(mechanisms=ALL)
    client = scramp.ScramClient([mechanism], "alice", PASSWORD)
    first = client.get_client_first().encode()
    reply = driver.feed(b"AUTH " + mechanism.encode() + b" " + b64(first) + b"\r\n")
    assert reply.startswith(b"+ ")
    client.set_server_first(base64.b64decode(reply[2:]).decode())
    reply = driver.feed(b64(client.get_client_final().encode()) + b"\r\n")
    assert reply.startswith(b"+ ")
    client.set_server_final(base64.b64decode(reply[2:]).decode())  # verifies the server
    # RFC 5034 section 4: the client answers the success data with an empty response.
    assert driver.feed(b"\r\n") == OK_LOGIN


def test_auth_scram_wrong_password_and_unknown_user_fail_alike() -> None:
    results = []
    for user, password in (("alice", "wrong"), ("nobody", PASSWORD)):
        driver = FakeDriver(mechanisms=ALL)
        client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
        first = b64(client.get_client_first().encode())
        reply = driver.feed(b"AUTH SCRAM-SHA-256 " + first + b"\r\n")
        client.set_server_first(base64.b64decode(reply[2:]).decode())
        results.append(driver.feed(b64(client.get_client_final().encode()) + b"\r\n"))
    assert results[0] == results[1]
    assert results[0].startswith(b"-ERR [AUTH] ")


def test_oauthbearer_error_challenge_then_err() -> None:
    driver = FakeDriver(mechanisms=ALL)
    bad = b"n,a=alice,\x01auth=Bearer bad-token\x01\x01"
    assert driver.feed(b"AUTH OAUTHBEARER " + b64(bad) + b"\r\n") == (
        b"+ " + b64(b'{"status":"invalid_token"}') + b"\r\n"
    )
    # RFC 7628 section 3.2.3: the client sends a dummy response (a single ^A).
    assert driver.feed(b64(b"\x01") + b"\r\n") == b"-ERR [AUTH] invalid bearer token\r\n"
    good = b"n,a=alice,\x01auth=Bearer good-token\x01\x01"
    assert driver.feed(b"AUTH OAUTHBEARER " + b64(good) + b"\r\n") == OK_LOGIN


def test_xoauth2() -> None:
    driver = FakeDriver(mechanisms=ALL)
    token = b"user=alice\x01auth=Bearer good-token\x01\x01"
    assert driver.feed(b"AUTH XOAUTH2 " + b64(token) + b"\r\n") == OK_LOGIN


def test_plaintext_mechanisms_refused_without_tls() -> None:
    driver = FakeDriver(mechanisms=("SCRAM-SHA-256", "CRAM-MD5"), plaintext_allowed=False)
    refused = b"-ERR [AUTH] plaintext authentication disallowed without TLS\r\n"
    assert driver.feed(b"AUTH PLAIN =\r\n") == refused
    assert driver.feed(b"AUTH LOGIN\r\n") == refused
    assert driver.feed(b"AUTH XOAUTH2\r\n") == refused
    assert driver.feed(b"AUTH CRAM-MD5\r\n").startswith(b"+ ")


def test_sasl_response_lines_may_be_long_commands_may_not() -> None:
    driver = FakeDriver(mechanisms=ALL)
    token = b"n,,\x01auth=Bearer good-token" + b"x" * 11000 + b"\x01\x01"
    assert driver.feed(b"AUTH OAUTHBEARER\r\n") == b"+ \r\n"
    response = b64(token)
    assert 14_000 < len(response) < 16 * 1024
    assert driver.feed(response + b"\r\n").startswith(b"+ ")  # rejected token: error JSON
    assert driver.feed(b"AQ==\r\n") == b"-ERR [AUTH] invalid bearer token\r\n"
    assert driver.feed(b"AUTH OAUTHBEARER\r\n") == b"+ \r\n"
    assert driver.feed(b"A" * 20_000 + b"\r\n") == b"-ERR [AUTH] SASL response too long\r\n"
    assert driver.feed(b"NOOP " + b"A" * 300 + b"\r\n") == (
        b"-ERR line too long (limit 255 octets)\r\n"
    )


def test_stls_discards_pipelined_plaintext_and_pending_user() -> None:
    """CVE-2011-0411: commands sent in the clear after STLS must not run inside TLS."""
    driver = FakeDriver(stls_available=True, after_handshake=b"CAPA\r\n")
    out = driver.feed(b"USER alice\r\nSTLS\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert out.startswith(b"+OK send PASS\r\n+OK Begin TLS negotiation\r\n+OK Capability")
    assert b"STLS" not in out.split(b"+OK Capability", 1)[1]
    assert driver.tls_started == 1
    assert driver.feed(b"PASS " + PASSWORD.encode() + b"\r\n") == b"-ERR give USER first\r\n"
    assert driver.feed(b"STLS\r\n") == b"-ERR command not permitted when TLS active\r\n"


def test_stls_refused_where_not_offered() -> None:
    assert FakeDriver().feed(b"STLS\r\n") == b"-ERR STLS not available on this port\r\n"
    driver = FakeDriver(stls_available=True)
    driver.feed(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert driver.feed(b"STLS\r\n") == b"-ERR STLS not allowed in TRANSACTION state\r\n"


def test_utf8_command_and_utf8_user_names() -> None:
    driver = FakeDriver()
    assert driver.feed(b"UTF8\r\n") == b"+OK UTF8 enabled\r\n"
    assert driver.session.utf8
    assert driver.feed("USER jörg\r\n".encode()) == b"+OK send PASS\r\n"
    driver.feed(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert driver.feed(b"UTF8\r\n") == b"-ERR UTF8 not allowed in TRANSACTION state\r\n"

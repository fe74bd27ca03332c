"""Line framing: limits, control bytes, pipelining, and chunk-size invariance
(shared/STYLE.md items 6 and 7)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_helpers import PASSWORD, FakeDriver, logged_in
from popbox.protocol.errors import LocalProtocolError, RemoteProtocolError
from popbox.protocol.session import Pop3Session, SessionConfig

M1 = b"Subject: one\r\n\r\n.Hello\r\n"
M2 = b"Subject: two\n\nbody\n" + b"x" * 3000 + b"\n.\n..\nend"
MAILDROP = {"k1": M1, "k2": M2}

SCRIPT = (
    b"CAPA\r\nUSER alice\r\nPASS " + PASSWORD.encode() + b"\r\nSTAT\r\nLIST\r\nUIDL\r\n"
    b"RETR 1\r\nTOP 2 1\r\nRETR 2\r\nBOGUS\r\n" + b"N" * 300 + b"\r\nDELE 1\r\n"
    b"LIST 1\r\nRSET\r\nNOOP\r\nDELE 2\r\nQUIT\r\n"
)


def whole() -> bytes:
    driver = FakeDriver(messages=dict(MAILDROP))
    return bytes(driver.out) + driver.feed(SCRIPT)


def test_script_reference_output() -> None:
    m2_wire = b"Subject: two\r\n\r\nbody\r\n" + b"x" * 3000 + b"\r\n..\r\n...\r\nend\r\n.\r\n"
    assert whole() == (
        b"+OK POP3 server ready <1.2@test.example>\r\n"
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nRESP-CODES\r\n"
        b"AUTH-RESP-CODE\r\nPIPELINING\r\nUTF8 USER\r\nIMPLEMENTATION popbox\r\n.\r\n"
        b"+OK send PASS\r\n+OK maildrop has 2 messages (3060 octets)\r\n"
        b"+OK 2 3060\r\n"
        b"+OK 2 messages (3060 octets)\r\n1 24\r\n2 3036\r\n.\r\n"
        b"+OK unique-id listing follows\r\n1 uid-k1\r\n2 uid-k2\r\n.\r\n"
        b"+OK 24 octets\r\nSubject: one\r\n\r\n..Hello\r\n.\r\n"
        b"+OK top of message follows\r\nSubject: two\r\n\r\nbody\r\n.\r\n"
        b"+OK 3036 octets\r\n" + m2_wire + b"-ERR unknown command\r\n"
        b"-ERR line too long (limit 255 octets)\r\n"
        b"+OK message 1 deleted\r\n-ERR message 1 already deleted\r\n"
        b"+OK maildrop has 2 messages (3060 octets)\r\n+OK\r\n+OK message 2 deleted\r\n"
        b"+OK POP3 server signing off (1 messages left)\r\n"
    )


def test_byte_by_byte_equals_whole() -> None:
    driver = FakeDriver(messages=dict(MAILDROP))
    driver.feed_chunks(SCRIPT[i : i + 1] for i in range(len(SCRIPT)))
    assert driver.out == whole()


@pytest.mark.parametrize("size", [*range(1, 64), 100, 127, 128, 255, 256, 511, 512])
def test_chunk_sizes_equal_whole(size: int) -> None:
    driver = FakeDriver(messages=dict(MAILDROP))
    driver.feed_chunks(SCRIPT[i : i + size] for i in range(0, len(SCRIPT), size))
    assert driver.out == whole()


@pytest.mark.parametrize("block", [1, 2, 3, 5, 64, 4096])
def test_storage_block_size_does_not_change_output(block: int) -> None:
    driver = FakeDriver(messages=dict(MAILDROP), block_size=block)
    driver.feed(SCRIPT)
    assert driver.out == whole()


def test_pipelined_commands_answered_in_order_in_one_go() -> None:
    driver = logged_in(MAILDROP)
    out = driver.feed(b"NOOP\r\nSTAT\r\nLIST 1\r\nUIDL 2\r\n")
    assert out == b"+OK\r\n+OK 2 3060\r\n+OK 1 24\r\n+OK 2 uid-k2\r\n"


def test_line_of_255_octets_is_accepted_256_is_not() -> None:
    user = b"u" * 40
    pass_255 = b"PASS " + b"p" * (255 - 7) + b"\r\n"
    assert len(pass_255) == 255
    driver = FakeDriver()
    assert driver.feed(b"USER " + user + b"\r\n" + pass_255) == (
        b"+OK send PASS\r\n-ERR [AUTH] invalid user name or password\r\n"
    )
    pass_256 = b"PASS " + b"p" * (256 - 7) + b"\r\n"
    assert driver.feed(b"USER " + user + b"\r\n" + pass_256) == (
        b"+OK send PASS\r\n-ERR line too long (limit 255 octets)\r\n"
    )


def test_endless_line_gets_one_err_and_stays_bounded() -> None:
    driver = FakeDriver()
    out = driver.feed(b"X" * 10_000)
    assert out == b"-ERR line too long (limit 255 octets)\r\n"
    for _ in range(100):
        assert driver.feed(b"Y" * 100_000) == b""
        assert driver.session.buffered == 0
    assert driver.feed(b"still the same line\r\nCAPA\r\n").startswith(b"+OK Capability")


def test_bare_lf_line_end_is_accepted() -> None:
    assert FakeDriver().feed(b"USER alice\n") == b"+OK send PASS\r\n"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"US\x00R a\r\n", b"-ERR control characters are not allowed in commands\r\n"),
        (b"USER a\x00\r\n", b"-ERR control characters are not allowed in commands\r\n"),
        (b"USER\ta\r\n", b"-ERR control characters are not allowed in commands\r\n"),
        (b"USER a\rb\r\n", b"-ERR control characters are not allowed in commands\r\n"),
        (b"USER a\x7f\r\n", b"-ERR control characters are not allowed in commands\r\n"),
        (b"LIST \xc3\xa9\r\n", b"-ERR arguments must be printable ASCII\r\n"),
        (b"USER \xff\r\n", b"-ERR argument is not valid UTF-8\r\n"),
        (b"USER " + "é".encode() * 41 + b"\r\n", b"-ERR arguments are at most 40 characters\r\n"),
        (b"\xc3\xa9\xc3\xa9\r\n", b"-ERR unknown command\r\n"),
        (b"USER  a\r\n", b"-ERR arguments are separated by a single space\r\n"),
        (b"USER a \r\n", b"-ERR arguments are separated by a single space\r\n"),
        (b" USER a\r\n", b"-ERR unknown command\r\n"),
        (b"USER " + b"a" * 41 + b"\r\n", b"-ERR arguments are at most 40 characters\r\n"),
        (b"USER " + b"a" * 40 + b"\r\n", b"+OK send PASS\r\n"),
        (b"PASS \xff\r\n", b"-ERR argument is not valid UTF-8\r\n"),
    ],
)
def test_bad_bytes_get_err_and_session_goes_on(line: bytes, reply: bytes) -> None:
    driver = FakeDriver()
    assert driver.feed(line) == reply
    assert driver.feed(b"NOOP\r\n") == b"-ERR NOOP not allowed in AUTHORIZATION state\r\n"
    assert not driver.closed


def test_utf8_password_reaches_the_authenticator() -> None:
    session = Pop3Session(SessionConfig("<1@h>"))
    session.receive_data("USER alice\r\nPASS pässwörd 1\r\n".encode())
    session.next_event()
    event = session.next_event()
    assert event.password == "pässwörd 1"  # type: ignore[union-attr]
    assert "pässwörd" not in repr(event)


def test_requests_block_further_commands_until_answered() -> None:
    session = Pop3Session(SessionConfig("<1@h>"))
    session.receive_data(b"USER a\r\nPASS b\r\nCAPA\r\n")
    session.next_event()
    session.next_event()
    with pytest.raises(LocalProtocolError):
        session.next_event()
    with pytest.raises(LocalProtocolError):
        session.retrieve_done()
    assert session.auth_rejected().data.startswith(b"-ERR [AUTH]")
    assert session.next_event().data.startswith(b"+OK Capability")  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_only_produce_replies(data: bytes, chunk: int) -> None:
    """Whatever arrives, the core answers with status lines; nothing else escapes."""
    whole_driver = logged_in(MAILDROP)
    expected = whole_driver.feed(data)
    driver = logged_in(MAILDROP)
    out = driver.feed_chunks(data[i : i + chunk] for i in range(0, len(data), chunk))
    assert out == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parser_raises_only_client_fault(line: bytes) -> None:
    from popbox.protocol.commands import parse_command  # noqa: PLC0415

    with contextlib.suppress(RemoteProtocolError):
        parse_command(line)

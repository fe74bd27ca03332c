"""Every command in every state, with the exact bytes of every reply (RFC 1939, 2449)."""

from __future__ import annotations

import pytest

from core_helpers import GREETING, PASSWORD, FakeDriver, apop_digest, logged_in

M1 = b"Subject: one\r\n\r\nHello\r\n"  # 23 octets on the wire
M2 = b"Subject: two\n\n.dot line\nlast"  # LF ends, no final newline: 33 octets
M3 = b".starts with dot\r\n\r\nbody\r\n"  # 26 octets
MAILDROP = {"k1": M1, "k2": M2, "k3": M3}

CAPA_AUTH = (
    b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nRESP-CODES\r\n"
    b"AUTH-RESP-CODE\r\nPIPELINING\r\nUTF8 USER\r\nIMPLEMENTATION popbox\r\n.\r\n"
)
CAPA_TRANS = CAPA_AUTH.replace(b"UIDL\r\nUSER\r\n", b"UIDL\r\n")


def test_greeting_carries_apop_timestamp() -> None:
    assert FakeDriver().out == GREETING


AUTHORIZATION_ROWS = [
    (b"CAPA\r\n", CAPA_AUTH),
    (b"capa\r\n", CAPA_AUTH),
    (b"USER alice\r\n", b"+OK send PASS\r\n"),
    (b"PASS secret\r\n", b"-ERR give USER first\r\n"),
    (b"USER\r\n", b"-ERR USER: missing argument\r\n"),
    (b"USER a b\r\n", b"-ERR USER: too many arguments\r\n"),
    (b"QUIT\r\n", b"+OK POP3 server signing off\r\n"),
    (b"QUIT now\r\n", b"-ERR QUIT: too many arguments\r\n"),
    (b"APOP alice 123\r\n", b"-ERR APOP digest must be 32 hexadecimal digits\r\n"),
    (b"APOP alice\r\n", b"-ERR APOP: missing argument\r\n"),
    (b"STAT\r\n", b"-ERR STAT not allowed in AUTHORIZATION state\r\n"),
    (b"LIST\r\n", b"-ERR LIST not allowed in AUTHORIZATION state\r\n"),
    (b"RETR 1\r\n", b"-ERR RETR not allowed in AUTHORIZATION state\r\n"),
    (b"TOP 1 1\r\n", b"-ERR TOP not allowed in AUTHORIZATION state\r\n"),
    (b"DELE 1\r\n", b"-ERR DELE not allowed in AUTHORIZATION state\r\n"),
    (b"NOOP\r\n", b"-ERR NOOP not allowed in AUTHORIZATION state\r\n"),
    (b"RSET\r\n", b"-ERR RSET not allowed in AUTHORIZATION state\r\n"),
    (b"UIDL\r\n", b"-ERR UIDL not allowed in AUTHORIZATION state\r\n"),
    (b"XYZZ\r\n", b"-ERR unknown command\r\n"),
    (b"AB\r\n", b"-ERR unknown command\r\n"),
    (b"ABCDE\r\n", b"-ERR unknown command\r\n"),
    (b"\r\n", b"-ERR unknown command\r\n"),
    (b"ST4T\r\n", b"-ERR unknown command\r\n"),
]


@pytest.mark.parametrize(("command", "reply"), AUTHORIZATION_ROWS)
def test_authorization_state(command: bytes, reply: bytes) -> None:
    assert FakeDriver(messages=dict(MAILDROP)).feed(command) == reply


def test_user_pass_login_reports_maildrop_size() -> None:
    driver = FakeDriver(messages=dict(MAILDROP))
    out = driver.feed(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert out == b"+OK send PASS\r\n+OK maildrop has 3 messages (82 octets)\r\n"


def test_password_with_spaces_and_utf8_is_taken_whole() -> None:
    driver = FakeDriver()
    assert driver.feed(b"USER alice\r\nPASS secret\r\n") == (
        b"+OK send PASS\r\n-ERR [AUTH] invalid user name or password\r\n"
    )
    assert driver.feed(b"USER alice\r\nPASS secret word\r\n").endswith(
        b"+OK maildrop has 0 messages (0 octets)\r\n"
    )


def test_wrong_password_and_unknown_user_get_the_same_reply() -> None:
    wrong = FakeDriver().feed(b"USER alice\r\nPASS nope\r\n")
    unknown = FakeDriver().feed(b"USER mallory\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert wrong == unknown == b"+OK send PASS\r\n-ERR [AUTH] invalid user name or password\r\n"


def test_pass_must_follow_user_immediately() -> None:
    driver = FakeDriver()
    out = driver.feed(b"USER alice\r\nCAPA\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert out == b"+OK send PASS\r\n" + CAPA_AUTH + b"-ERR give USER first\r\n"


def test_pass_without_password() -> None:
    assert FakeDriver().feed(b"USER alice\r\nPASS\r\n") == (
        b"+OK send PASS\r\n-ERR missing password\r\n"
    )


def test_apop_login() -> None:
    driver = FakeDriver(messages={"k1": M1})
    out = driver.feed(b"APOP alice " + apop_digest().upper().encode() + b"\r\n")
    assert out == b"+OK maildrop has 1 messages (23 octets)\r\n"
    bad = FakeDriver().feed(b"APOP alice " + b"0" * 32 + b"\r\n")
    assert bad == b"-ERR [AUTH] invalid user name or password\r\n"


def test_locked_maildrop_is_in_use() -> None:
    driver = FakeDriver(locked=True)
    out = driver.feed(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\nSTAT\r\n")
    assert out == (
        b"+OK send PASS\r\n-ERR [IN-USE] maildrop is locked by another session\r\n"
        b"-ERR STAT not allowed in AUTHORIZATION state\r\n"
    )


def test_plaintext_disallowed() -> None:
    driver = FakeDriver(plaintext_allowed=False)
    assert driver.feed(b"CAPA\r\n") == CAPA_TRANS
    assert driver.feed(b"USER alice\r\nPASS x\r\n") == (
        b"-ERR [AUTH] plaintext authentication disallowed without TLS\r\n"
        b"-ERR [AUTH] plaintext authentication disallowed without TLS\r\n"
    )


TRANSACTION_ROWS = [
    (b"STAT\r\n", b"+OK 3 82\r\n"),
    (b"LIST\r\n", b"+OK 3 messages (82 octets)\r\n1 23\r\n2 33\r\n3 26\r\n.\r\n"),
    (b"LIST 2\r\n", b"+OK 2 33\r\n"),
    (b"LIST 4\r\n", b"-ERR no such message, only 3 in maildrop\r\n"),
    (b"LIST 0\r\n", b"-ERR no such message, only 3 in maildrop\r\n"),
    (b"LIST -1\r\n", b"-ERR invalid number\r\n"),
    (b"LIST +1\r\n", b"-ERR invalid number\r\n"),
    (b"LIST x\r\n", b"-ERR invalid number\r\n"),
    (b"LIST 1 2\r\n", b"-ERR LIST: too many arguments\r\n"),
    (b"LIST 0000000000000000000000000000000000001\r\n", b"+OK 1 23\r\n"),
    (b"UIDL\r\n", b"+OK unique-id listing follows\r\n1 uid-k1\r\n2 uid-k2\r\n3 uid-k3\r\n.\r\n"),
    (b"UIDL 3\r\n", b"+OK 3 uid-k3\r\n"),
    (b"UIDL 9\r\n", b"-ERR no such message, only 3 in maildrop\r\n"),
    (b"RETR 1\r\n", b"+OK 23 octets\r\nSubject: one\r\n\r\nHello\r\n.\r\n"),
    (
        b"RETR 2\r\n",
        b"+OK 33 octets\r\nSubject: two\r\n\r\n..dot line\r\nlast\r\n.\r\n",
    ),
    (b"RETR 3\r\n", b"+OK 26 octets\r\n..starts with dot\r\n\r\nbody\r\n.\r\n"),
    (b"RETR\r\n", b"-ERR RETR: missing argument\r\n"),
    (b"RETR 4\r\n", b"-ERR no such message, only 3 in maildrop\r\n"),
    (b"TOP 1 0\r\n", b"+OK top of message follows\r\nSubject: one\r\n\r\n.\r\n"),
    (b"TOP 2 1\r\n", b"+OK top of message follows\r\nSubject: two\r\n\r\n..dot line\r\n.\r\n"),
    (
        b"TOP 2 2\r\n",
        b"+OK top of message follows\r\nSubject: two\r\n\r\n..dot line\r\nlast\r\n.\r\n",
    ),
    (
        b"TOP 2 99\r\n",
        b"+OK top of message follows\r\nSubject: two\r\n\r\n..dot line\r\nlast\r\n.\r\n",
    ),
    (b"TOP 1\r\n", b"-ERR TOP: missing argument\r\n"),
    (b"TOP 1 -1\r\n", b"-ERR invalid number\r\n"),
    (b"DELE 1\r\n", b"+OK message 1 deleted\r\n"),
    (b"DELE 5\r\n", b"-ERR no such message, only 3 in maildrop\r\n"),
    (b"NOOP\r\n", b"+OK\r\n"),
    (b"NOOP 1\r\n", b"-ERR NOOP: too many arguments\r\n"),
    (b"RSET\r\n", b"+OK maildrop has 3 messages (82 octets)\r\n"),
    (b"CAPA\r\n", CAPA_TRANS),
    (b"USER alice\r\n", b"-ERR USER not allowed in TRANSACTION state\r\n"),
    (b"PASS x\r\n", b"-ERR PASS not allowed in TRANSACTION state\r\n"),
    (b"APOP a " + b"0" * 32 + b"\r\n", b"-ERR APOP not allowed in TRANSACTION state\r\n"),
    (b"QUIT\r\n", b"+OK POP3 server signing off (3 messages left)\r\n"),
]


@pytest.mark.parametrize(("command", "reply"), TRANSACTION_ROWS)
def test_transaction_state(command: bytes, reply: bytes) -> None:
    assert logged_in(MAILDROP).feed(command) == reply


def test_deleted_message_is_counted_by_nothing_and_answers_err() -> None:
    driver = logged_in(MAILDROP)
    out = driver.feed(
        b"DELE 2\r\nSTAT\r\nLIST\r\nUIDL\r\nLIST 2\r\nUIDL 2\r\nRETR 2\r\nTOP 2 0\r\nDELE 2\r\n"
    )
    assert out == (
        b"+OK message 2 deleted\r\n"
        b"+OK 2 49\r\n"
        b"+OK 2 messages (49 octets)\r\n1 23\r\n3 26\r\n.\r\n"
        b"+OK unique-id listing follows\r\n1 uid-k1\r\n3 uid-k3\r\n.\r\n"
        b"-ERR message 2 already deleted\r\n"
        b"-ERR message 2 already deleted\r\n"
        b"-ERR message 2 already deleted\r\n"
        b"-ERR message 2 already deleted\r\n"
        b"-ERR message 2 already deleted\r\n"
    )


def test_rset_unmarks_all() -> None:
    driver = logged_in(MAILDROP)
    out = driver.feed(b"DELE 1\r\nDELE 3\r\nRSET\r\nSTAT\r\nQUIT\r\n")
    assert out == (
        b"+OK message 1 deleted\r\n+OK message 3 deleted\r\n"
        b"+OK maildrop has 3 messages (82 octets)\r\n+OK 3 82\r\n"
        b"+OK POP3 server signing off (3 messages left)\r\n"
    )
    assert driver.committed == [()]


def test_quit_commits_marked_messages_only() -> None:
    driver = logged_in(MAILDROP)
    out = driver.feed(b"DELE 1\r\nDELE 3\r\nQUIT\r\nSTAT\r\n")
    assert out == (
        b"+OK message 1 deleted\r\n+OK message 3 deleted\r\n"
        b"+OK POP3 server signing off (1 messages left)\r\n"
    )
    assert driver.committed == [("k1", "k3")]
    assert driver.closed
    assert list(driver.messages) == ["k2"]


def test_update_failure_reply() -> None:
    driver = logged_in(MAILDROP)
    driver.session.receive_data(b"DELE 1\r\nQUIT\r\n")
    assert driver.session.next_event().data == b"+OK message 1 deleted\r\n"  # type: ignore[union-attr]
    assert driver.session.next_event().keys == ("k1",)  # type: ignore[union-attr]
    reply = driver.session.update_done(failed=1)
    assert reply.data == b"-ERR some deleted messages not removed\r\n"


def test_message_gone_since_login() -> None:
    driver = logged_in(MAILDROP)
    del driver.messages["k2"]
    assert driver.feed(b"RETR 2\r\nLIST 2\r\n") == (
        b"-ERR message 2 no longer exists\r\n+OK 2 33\r\n"
    )


def test_store_failure_before_ok_is_sys_temp() -> None:
    driver = logged_in(MAILDROP)
    driver.session.receive_data(b"RETR 1\r\n")
    driver.session.next_event()
    assert driver.session.retrieve_failed(message_gone=False).data == (
        b"-ERR [SYS/TEMP] message cannot be read now\r\n"
    )


def test_too_many_bad_commands_closes() -> None:
    driver = FakeDriver(max_bad_commands=3)
    out = driver.feed(b"XXXX\r\nNOOP\r\nCAPA\r\n")
    # A good command resets the count: the budget is for consecutive errors.
    assert out == (
        b"-ERR unknown command\r\n-ERR NOOP not allowed in AUTHORIZATION state\r\n" + CAPA_AUTH
    )
    # The driver's count of every client error (a client that sent garbage is background
    # work for the server, popbox/pacing.py) is not reset.
    assert driver.session.client_errors == 2
    out = driver.feed(b"A\r\nB\r\nC\r\nQUIT\r\n")
    assert out == (
        b"-ERR unknown command\r\n-ERR unknown command\r\n"
        b"-ERR too many bad commands, closing connection\r\n"
    )
    assert driver.closed
    assert driver.session.client_errors == 5

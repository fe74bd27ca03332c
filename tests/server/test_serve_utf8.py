"""RFC 6856 UTF8 end to end: UTF-8 user names and passwords, compared after RFC 8265."""

from __future__ import annotations

import unicodedata

from conftest import Starter

from server_helpers import RawClient

NAME = "jörg"  # stored precomposed (NFC) in the users file
PASSWORD = "pässwörd mit leerzeichen"


def test_utf8_user_and_password_normalized(popbox: Starter) -> None:
    server = popbox({NAME: "{PLAIN}" + PASSWORD}, {NAME: [b"Subject: x\r\n\r\nx\r\n"]})
    client = RawClient(server)
    assert client.command(b"UTF8") == b"+OK UTF8 enabled\r\n"
    # The client sends the decomposed form (o + U+0308): the same user after RFC 8265.
    decomposed = unicodedata.normalize("NFD", NAME)
    assert decomposed != NAME
    assert client.command(b"USER " + decomposed.encode()) == b"+OK send PASS\r\n"
    password = unicodedata.normalize("NFD", PASSWORD)
    assert client.command(b"PASS " + password.encode()) == (
        b"+OK maildrop has 1 messages (17 octets)\r\n"
    )
    server.log.wait_for(r"login ok user=jörg client=127\.0\.0\.1 mechanism=USER")


def test_invalid_utf8_and_disallowed_names(popbox: Starter) -> None:
    server = popbox({NAME: "{PLAIN}" + PASSWORD})
    client = RawClient(server)
    assert client.command(b"USER j\xf6rg") == b"-ERR argument is not valid UTF-8\r\n"
    # A fullwidth solidus maps to "/" under RFC 8265 width mapping: refused, no file touched.
    fullwidth = "USER \uff41\uff0f\uff42"  # fullwidth "a/b"
    assert client.command(fullwidth.encode()) == b"+OK send PASS\r\n"
    assert client.command(b"PASS x") == b"-ERR [AUTH] invalid user name or password\r\n"
    assert not (server.root / "mail" / "a").exists()

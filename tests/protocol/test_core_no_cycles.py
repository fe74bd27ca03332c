"""A finished session is freed by reference counting alone: no reference cycle per
connection for the garbage collector to find (a connect burst left 25 objects in cycles per
session, and the collections that found them stalled the event loop for ~100 ms)."""

from __future__ import annotations

import gc
import weakref

from popbox.protocol.events import CloseConnection, NeedData, Reply
from popbox.protocol.session import Pop3Session
from popbox.protocol.session_config import SessionConfig


def new_nonce() -> str:
    return "nonce"


def test_a_session_is_freed_without_the_garbage_collector() -> None:
    gc.disable()
    try:
        session = Pop3Session(
            SessionConfig(
                "<1.2@test.example>",
                hostname="test.example",
                plaintext_allowed=True,
                mechanisms=("PLAIN",),
                nonce=new_nonce,
            )
        )
        session.receive_data(b"CAPA\r\nUSER alice\r\nNOOP\r\nbogus\r\nQUIT\r\n")
        replies = []
        while not isinstance(event := session.next_event(), NeedData | CloseConnection):
            assert isinstance(event, Reply)
            replies.append(event.data.split(b" ", 1)[0])
        assert replies == [b"+OK", b"+OK", b"-ERR", b"-ERR", b"+OK"]
        freed = weakref.ref(session)
        del session
        assert freed() is None
    finally:
        gc.enable()

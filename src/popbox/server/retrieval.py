"""RETR and TOP on the wire (RFC 1939 section 7): the message streamed a block at a time,
exactly the octets LIST announced (section 11), whatever happened to the stored message
since login.

A store failure before +OK is -ERR; after +OK the connection is closed, since the reply
can no longer be ended honestly (shared/DESIGN.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from popbox import pacing
from popbox.metrics import ServerMetrics
from popbox.protocol.encoder import MessageEncoder
from popbox.protocol.events import Retrieve
from popbox.protocol.session import Pop3Session
from popbox.storage.base import Maildrop, MessageGone, StoreError

log = logging.getLogger("popbox.session")


class MessageChanged(StoreError):
    """The stored message is not the size the listing announced."""


class ClientGone(ConnectionError):
    """What `drain` raises when the client left, or read nothing for too long: the
    client's doing, not the store's (no store error counted or logged)."""


def check_octets(event: Retrieve, encoder: MessageEncoder) -> None:
    """Never a reply of another size than announced: the stored message changed."""
    if (problem := encoder.size_problem(event.message.octets)) is not None:
        number = event.message_number
        raise MessageChanged(f"message {number} changed under the session: {problem}")


async def send_message(
    maildrop: Maildrop,
    session: Pop3Session,
    event: Retrieve,
    *,
    write: Callable[[bytes], None],
    drain: Callable[[], Awaitable[None]],
    metrics: ServerMetrics,
) -> bool:
    """Stream the reply to one RETR or TOP through `write`, waiting on `drain` (the
    transport's flow control) between blocks; True when the whole reply was sent, False
    after an -ERR. Raises ConnectionError when the store failed after +OK, and lets
    `drain`'s ClientGone through."""
    stream = maildrop.read(event.message.key)
    encoder = event.encoder
    status_sent = False
    try:
        try:
            first = await anext(stream, b"")
        except MessageGone:
            write(session.retrieve_failed(message_gone=True).data)
            return False
        except (StoreError, OSError) as error:
            metrics.store_error("read")
            log.error("read failed user=%s error=%s", session.user, error)
            write(session.retrieve_failed(message_gone=False).data)
            return False
        pending = event.status_line + encoder.feed(first)
        async for block in stream:
            if encoder.done:
                break
            check_octets(event, encoder)
            write(pending)
            status_sent = True
            await drain()
            await pacing.step()  # a big message: background work (pacing.py)
            pending = encoder.feed(block)
        # The end of the reply leaves with its last block: one write, no small tail.
        pending += encoder.finish()
        check_octets(event, encoder)
    except ClientGone:
        raise
    except (StoreError, OSError) as error:
        metrics.store_error("read")
        if not status_sent:  # nothing sent yet: the reply can still be -ERR
            log.error("read failed user=%s error=%s", session.user, error)
            write(session.retrieve_failed(message_gone=False).data)
        else:
            log.error("read failed after +OK user=%s error=%s", session.user, error)
        if isinstance(error, MessageChanged):  # the next session lists it as it is now
            await maildrop.message_changed(event.message.key)
        if not status_sent:
            return False
        raise ConnectionError("store failed during RETR") from error
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    write(pending)
    session.retrieve_done()
    return True

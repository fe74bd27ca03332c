"""What RETR and TOP promise on the wire: exactly the octets LIST announced (RFC 1939
section 11), whatever happened to the stored message since login."""

from __future__ import annotations

from popbox.protocol.encoder import MessageEncoder
from popbox.protocol.events import Retrieve
from popbox.storage.base import StoreError


class MessageChanged(StoreError):
    """The stored message is not the size the listing announced."""


def check_octets(event: Retrieve, encoder: MessageEncoder) -> None:
    """Never a reply of another size than announced: the stored message changed."""
    if (problem := encoder.size_problem(event.message.octets)) is not None:
        number = event.message_number
        raise MessageChanged(f"message {number} changed under the session: {problem}")

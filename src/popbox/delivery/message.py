"""What LMTP and `popbox deliver` share: finding the recipient, the stored form.

Stored form: messages are stored with LF line ends, as Postfix's local and virtual agents
and Dovecot (mail_save_crlf = no, its default) write Maildir and mbox files. The wire form
(CRLF) is restored when POP3 sends the message; storage/octets.py counts it.
"""

from __future__ import annotations

from popbox.auth.base import Authenticator

__all__ = [
    "delivery_headers",
    "find_recipient",
    "has_control_characters",
    "stored_form",
]

# An mbox envelope line ("From sender date") that an MTA prepends for a delivery agent
# (Postfix pipe(8) flag F, sendmail's prog mailer); dovecot-lda drops it too.
_MBOX_FROM = b"From "


def has_control_characters(address: str) -> bool:
    """True if `address` holds C0 controls or DEL: it could not go into a header line."""
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in address)


async def find_recipient(authenticator: Authenticator, address: str) -> str | None:
    """The user an envelope recipient names, or None if there is none.

    Tried in turn: the address as given, then with its domain lowercased (domains are
    case-insensitive, RFC 5321 section 2.4), then its local part alone. So a passwd-file
    may list full addresses (virtual users) or bare names, and "alice@any.domain" reaches
    "alice": which domains are local is the MTA's decision, made before LMTP. Raises
    OSError when the user database cannot be read now.
    """
    local, at, domain = address.rpartition("@")
    candidates = [address]
    if at:
        candidates += [f"{local}@{domain.lower()}", local]
    for candidate in dict.fromkeys(candidates):
        if not candidate:
            continue
        user = await authenticator.canonical_user(candidate)
        if user is not None:
            return user
    return None


def delivery_headers(sender: str, recipient: str) -> bytes:
    """`Return-Path: <sender>` and `Delivered-To: recipient`, in the stored form.

    As Postfix (local, virtual) and Dovecot LMTP write them: the envelope sender in angle
    brackets (empty for a bounce, RFC 5321 section 4.4), the recipient address as given
    in RCPT TO, bare. Addresses arrive as str with undecodable octets escaped
    (surrogateescape), and go back out as the octets received.
    """
    if has_control_characters(sender) or has_control_characters(recipient):
        raise ValueError("an address with control characters cannot go into a header")
    text = f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n"
    return text.encode("utf-8", "surrogateescape")


def stored_form(message: bytes) -> bytes:
    """A message from a pipe (`popbox deliver`) in the stored form: without a leading
    mbox "From " envelope line, and CRLF line ends turned into LF."""
    if message.startswith(_MBOX_FROM):
        _, _, message = message.partition(b"\n")
    return message.replace(b"\r\n", b"\n")

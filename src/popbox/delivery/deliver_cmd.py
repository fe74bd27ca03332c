"""`popbox deliver [--config FILE] USER... < message`: a local delivery agent for a pipe.

As dovecot-lda or mail.local, for an MTA's pipe transport (Postfix pipe(8), Exim's pipe,
sendmail's prog mailer). The MTA reads the exit status (sysexits.h):

    0   EX_OK        delivered to every user
    64  EX_USAGE     no user named
    65  EX_DATAERR   the message is empty
    67  EX_NOUSER    a user is unknown (or can have no maildrop): the MTA bounces
    75  EX_TEMPFAIL  the user list or a maildrop cannot be used now: the MTA retries
    78  EX_CONFIG    bad configuration (the CLI's part, before we are called)

Several users: the MTA takes one exit status for all of them, so
- every user is looked up first, and if one is unknown nothing is delivered (67): the
  bounce the MTA sends is then true for every recipient;
- then the message goes to each user in turn; a user whose store fails does not stop the
  others. If any failed for now, the status is 75 and the MTA retries all of them, so the
  ones already served get it twice: a duplicate, never a loss. Hence, as with
  dovecot-lda, one recipient per call is best (in Postfix's main.cf:
  `<transport>_destination_recipient_limit = 1`).
A temporary failure outranks a permanent one (75 before 67), so that no recipient's mail
is bounced for another's sake.

The message is stored as given, less a leading mbox "From " envelope line, with CRLF
turned into LF (delivery/message.py, stored_form); no header is added.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from popbox.auth.base import Authenticator
from popbox.db.startup import close_backends
from popbox.delivery.message import stored_form
from popbox.storage.base import InvalidMaildropUser, MaildropStore, StoreError

__all__ = [
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_NOUSER",
    "EX_OK",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "deliver_main",
    "deliver_message",
]

# sysexits.h (BSD, glibc); os.EX_* holds the same numbers, but only on Unix.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_TEMPFAIL = 75
EX_CONFIG = 78


def _say(text: str) -> None:
    # The MTA puts what a delivery agent writes to stderr into its bounce or defer note.
    print(f"popbox deliver: {text}", file=sys.stderr)


async def _look_up(authenticator: Authenticator, users: Sequence[str]) -> list[str] | int:
    """The canonical names, each once, in the order given; or the exit status."""
    found: dict[str, None] = {}
    unknown: list[str] = []
    for user in users:
        try:
            name = await authenticator.canonical_user(user)
        except OSError as exc:
            _say(f"cannot read the user list: {exc.strerror or exc}")
            return EX_TEMPFAIL
        if name is None:
            unknown.append(user)
        else:
            found[name] = None
    if unknown:
        _say(f"user unknown: {', '.join(unknown)}; delivered to nobody")
        return EX_NOUSER
    return list(found)


async def deliver_message(
    store: MaildropStore, authenticator: Authenticator, users: Sequence[str], message: bytes
) -> int:
    """Deliver `message` to each user; return the sysexits status (see the module doc)."""
    if not users:
        _say("no user named")
        return EX_USAGE
    stored = stored_form(message)
    if not stored:
        _say("the message is empty")
        return EX_DATAERR
    names = await _look_up(authenticator, users)
    if isinstance(names, int):
        return names
    status = EX_OK
    for name in names:
        try:
            await store.deliver(name, stored)
        except InvalidMaildropUser as exc:
            _say(f"{name}: no maildrop can exist for this user: {exc}")
            if status == EX_OK:  # a temporary failure elsewhere outranks it
                status = EX_NOUSER
        except StoreError as exc:
            _say(f"{name}: temporary failure: {exc}")
            status = EX_TEMPFAIL
    return status


def deliver_main(
    store: MaildropStore, authenticator: Authenticator, users: list[str], message: bytes
) -> int:
    """`popbox deliver USER...` once the CLI has read the config and stdin."""

    async def main() -> int:
        try:
            return await deliver_message(store, authenticator, users, message)
        finally:
            # A database store or user database: its pool, closed politely.
            await close_backends(store, authenticator)

    return asyncio.run(main())

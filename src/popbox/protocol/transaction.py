"""The TRANSACTION-state commands (RFC 1939 section 5), answered from the listing
snapshot without I/O, except RETR and TOP, which become Retrieve requests."""

from __future__ import annotations

from popbox.protocol import replies
from popbox.protocol.commands import Command, parse_number
from popbox.protocol.encoder import TERMINATOR, MessageEncoder
from popbox.protocol.errors import RemoteProtocolError
from popbox.protocol.events import Event, Reply, Request, Retrieve
from popbox.protocol.listing import Listing
from popbox.protocol.session_config import SessionConfig


class TransactionCommands:
    """Mixed into Pop3Session, which provides these attributes."""

    config: SessionConfig
    listing: Listing

    def _open(self, request: Request) -> Request:
        raise NotImplementedError

    # -- TRANSACTION (RFC 1939 section 5) ---------------------------------------------

    def _stat_cmd(self, command: Command) -> Event:
        arity(command, 0)
        return Reply(replies.ok(f"{self.listing.live_count} {self.listing.live_octets}"))

    def _list_cmd(self, command: Command) -> Event:
        if arity(command, 0, 1):
            number = parse_number(command.args[0])
            return Reply(replies.ok(f"{number} {self.listing.get(number).octets}"))
        n, octets = self.listing.live_count, self.listing.live_octets
        head = replies.ok(f"{n} messages ({octets} octets)")
        return Reply(head + self.listing.list_lines() + TERMINATOR)

    def _uidl_cmd(self, command: Command) -> Event:
        if arity(command, 0, 1):
            number = parse_number(command.args[0])
            return Reply(replies.ok(f"{number} {self.listing.get(number).unique_id}"))
        head = replies.ok("unique-id listing follows")
        return Reply(head + self.listing.uidl_lines() + TERMINATOR)

    def _retr_cmd(self, command: Command) -> Event:
        (arg,) = arity(command, 1)
        number = parse_number(arg)
        message = self.listing.get(number)
        status = replies.ok(f"{message.octets} octets")
        return self._open(Retrieve(number, message, status, self._encoder(None)))

    def _top_cmd(self, command: Command) -> Event:
        arg, lines_arg = arity(command, 2)
        number = parse_number(arg)
        message = self.listing.get(number)
        lines = parse_number(lines_arg)
        status = replies.ok("top of message follows")
        return self._open(Retrieve(number, message, status, self._encoder(lines)))

    def _encoder(self, top_lines: int | None) -> MessageEncoder:
        workarounds = self.config.workarounds
        return MessageEncoder(
            top_lines,
            no_nuls="outlook-no-nuls" in workarounds,
            add_end_of_headers="oe-ns-eoh" in workarounds,
        )

    def _dele_cmd(self, command: Command) -> Event:
        (arg,) = arity(command, 1)
        number = parse_number(arg)
        # RFC 1939 section 5: only marked here; removed in the UPDATE state.
        self.listing.mark_deleted(number)
        return Reply(replies.ok(f"message {number} deleted"))

    def _noop_cmd(self, command: Command) -> Event:
        arity(command, 0)
        return Reply(replies.ok(""))

    def _rset_cmd(self, command: Command) -> Event:
        arity(command, 0)
        self.listing.reset()
        n, octets = self.listing.live_count, self.listing.live_octets
        return Reply(replies.ok(f"maildrop has {n} messages ({octets} octets)"))


def arity(command: Command, *allowed: int) -> tuple[str, ...]:
    """Check the argument count against the command's syntax (RFC 1939 sections 4-7)."""
    if len(command.args) not in allowed:
        if len(command.args) < min(allowed):
            raise RemoteProtocolError(f"{command.keyword}: missing argument")
        raise RemoteProtocolError(f"{command.keyword}: too many arguments")
    return command.args

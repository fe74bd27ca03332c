"""The protocol core against a simple model of RFC 1939, driven by hypothesis: random
commands in random states, pipelined in batches and fed in random chunks; every reply is
checked (exact bytes where the RFC fixes them, the status alone for -ERR texts).

Runs a bounded number of examples in the suite; `pytest --hypothesis-profile=long
tests/protocol/test_core_model.py` runs many more (tests/hypothesis_profiles.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from core_helpers import PASSWORD, FakeDriver, naive_wire, wire_size

# Few, so that the limit is reached in some runs (RFC 1939 leaves it to the server; popbox
# closes after this many client errors).
MAX_BAD = 8

LINE = st.sampled_from([b"", b".", b"..", b"a", b".x", b"\r", b"x\ry", b"From x", b"H: v"])
MESSAGE = st.lists(st.tuples(LINE, st.sampled_from([b"\n", b"\r\n"])), max_size=8).map(
    lambda parts: b"".join(a + b for a, b in parts)
) | st.binary(max_size=40)
NUMBER = st.one_of(st.integers(min_value=0, max_value=9).map(str), st.sampled_from(["x", "1x"]))


@dataclass(frozen=True)
class Exact:
    data: bytes


@dataclass(frozen=True)
class AnyErr:
    pass


@dataclass(frozen=True)
class AnyMultiline:
    pass


Expected = Exact | AnyErr | AnyMultiline


def keyword(name: str, lower: bool) -> bytes:
    return (name.lower() if lower else name).encode()


class Pop3Model(RuleBasedStateMachine):
    """state: "auth", "trans" or "closed"; messages numbered from 1 in `keys` order."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[bytes, Expected]] = []

    @initialize(messages=st.lists(MESSAGE, max_size=5), block=st.integers(1, 64))
    def start(self, messages: list[bytes], block: int) -> None:
        self.stored = {f"m{i}": data for i, data in enumerate(messages)}
        self.keys = list(self.stored)
        self.driver = FakeDriver(
            messages=dict(self.stored), max_bad_commands=MAX_BAD, block_size=block
        )
        self.driver.out.clear()  # the greeting
        self.state = "auth"
        self.user: str | None = None
        self.deleted: set[int] = set()
        self.bad = 0
        self.quit_deleted: list[str] | None = None

    # -- the model ---------------------------------------------------------------------

    def send(self, line: bytes, expected: Expected | None, *, accepted: bool = True) -> None:
        """Queue a command line; `expected` None: the session is closed, no reply. An
        accepted command (not a client error) resets the count of consecutive errors."""
        if accepted:
            self.bad = 0
        self.pending.append((line + b"\r\n", Exact(b"") if expected is None else expected))

    def client_error(self, line: bytes) -> None:
        """A client error; the MAX_BAD-th in a row closes the connection."""
        if self.state == "closed":
            return self.send(line, None)
        self.bad += 1
        if self.bad >= MAX_BAD:
            self.state = "closed"
        return self.send(line, AnyErr(), accepted=False)

    def legal(self, line: bytes, state: str, expected: Expected) -> bool:
        """Queue a command valid only in `state`; False (and an error queued) otherwise."""
        if self.state != state:
            self.client_error(line)
            return False
        self.user = None  # RFC 1939 section 7: PASS only right after USER
        self.send(line, expected)
        return True

    def live(self) -> list[int]:
        return [n for n in range(1, len(self.keys) + 1) if n not in self.deleted]

    def octets(self, number: int) -> int:
        return wire_size(self.stored[self.keys[number - 1]])

    def message(self, arg: str) -> int | None:
        """The message number `arg` names, if it may be acted on (RFC 1939 section 5)."""
        if not arg.isdigit() or not 1 <= int(arg) <= len(self.keys) or int(arg) in self.deleted:
            return None
        return int(arg)

    # -- AUTHORIZATION -----------------------------------------------------------------

    @rule(name=st.sampled_from(["alice", "bob"]), lower=st.booleans())
    def user_cmd(self, name: str, lower: bool) -> None:
        line = keyword("USER", lower) + b" " + name.encode()
        if self.legal(line, "auth", Exact(b"+OK send PASS\r\n")):
            self.user = name

    @rule(good=st.booleans(), lower=st.booleans())
    def pass_cmd(self, good: bool, lower: bool) -> None:
        line = keyword("PASS", lower) + b" " + (PASSWORD if good else "wrong").encode()
        if self.state != "auth":
            return self.client_error(line)
        user, self.user = self.user, None
        if user is None:
            return self.client_error(line)
        if not (good and user == "alice"):
            return self.send(line, AnyErr())  # a failed login is not a protocol error
        total = sum(self.octets(n) for n in self.live())
        self.state = "trans"
        return self.send(
            line, Exact(b"+OK maildrop has %d messages (%d octets)\r\n" % (len(self.keys), total))
        )

    # -- TRANSACTION -------------------------------------------------------------------

    @rule(lower=st.booleans())
    def stat_cmd(self, lower: bool) -> None:
        live = self.live()
        total = sum(self.octets(n) for n in live)
        self.legal(keyword("STAT", lower), "trans", Exact(b"+OK %d %d\r\n" % (len(live), total)))

    @rule(arg=st.none() | NUMBER, lower=st.booleans())
    def list_cmd(self, arg: str | None, lower: bool) -> None:
        line = keyword("LIST", lower)
        if arg is None:
            live = self.live()
            body = b"".join(b"%d %d\r\n" % (n, self.octets(n)) for n in live)
            total = sum(self.octets(n) for n in live)
            head = b"+OK %d messages (%d octets)\r\n" % (len(live), total)
            self.legal(line, "trans", Exact(head + body + b".\r\n"))
        else:
            self.numbered(line + b" " + arg.encode(), arg, lambda n: b"%d %d" % (n, self.octets(n)))

    @rule(arg=st.none() | NUMBER, lower=st.booleans())
    def uidl_cmd(self, arg: str | None, lower: bool) -> None:
        line = keyword("UIDL", lower)
        if arg is None:
            body = b"".join(b"%d uid-%s\r\n" % (n, self.keys[n - 1].encode()) for n in self.live())
            head = b"+OK unique-id listing follows\r\n"
            self.legal(line, "trans", Exact(head + body + b".\r\n"))
        else:
            self.numbered(
                line + b" " + arg.encode(),
                arg,
                lambda n: b"%d uid-%s" % (n, self.keys[n - 1].encode()),
            )

    @rule(arg=NUMBER, lower=st.booleans())
    def retr_cmd(self, arg: str, lower: bool) -> None:
        def reply(n: int) -> bytes:
            data = self.stored[self.keys[n - 1]]
            return b"%d octets\r\n" % self.octets(n) + naive_wire(data, None)[:-2]

        self.numbered(keyword("RETR", lower) + b" " + arg.encode(), arg, reply)

    @rule(arg=NUMBER, lines=st.integers(0, 4), lower=st.booleans())
    def top_cmd(self, arg: str, lines: int, lower: bool) -> None:
        def reply(n: int) -> bytes:
            data = self.stored[self.keys[n - 1]]
            return b"top of message follows\r\n" + naive_wire(data, lines)[:-2]

        self.numbered(keyword("TOP", lower) + b" %s %d" % (arg.encode(), lines), arg, reply)

    @rule(arg=NUMBER, lower=st.booleans())
    def dele_cmd(self, arg: str, lower: bool) -> None:
        line = keyword("DELE", lower) + b" " + arg.encode()
        if self.numbered(line, arg, lambda n: b"message %d deleted" % n):
            self.deleted.add(int(arg))

    def numbered(self, line: bytes, arg: str, text: object) -> bool:
        """A command on one message: `text(number)` is its +OK text."""
        number = self.message(arg)
        if self.state != "trans" or number is None:
            self.client_error(line)
            return False
        assert callable(text)
        self.legal(line, "trans", Exact(b"+OK " + text(number) + b"\r\n"))
        return True

    @rule(lower=st.booleans())
    def rset_cmd(self, lower: bool) -> None:
        if self.state == "trans":
            self.deleted.clear()
        total = sum(self.octets(n) for n in range(1, len(self.keys) + 1))
        reply = b"+OK maildrop has %d messages (%d octets)\r\n" % (len(self.keys), total)
        self.legal(keyword("RSET", lower), "trans", Exact(reply))

    @rule(lower=st.booleans())
    def noop_cmd(self, lower: bool) -> None:
        self.legal(keyword("NOOP", lower), "trans", Exact(b"+OK\r\n"))

    # -- both states -------------------------------------------------------------------

    @rule()
    def capa_cmd(self) -> None:
        if self.state == "closed":
            return self.send(b"CAPA", None)
        self.user = None
        return self.send(b"CAPA", AnyMultiline())

    @rule(lower=st.booleans())
    def quit_cmd(self, lower: bool) -> None:
        line = keyword("QUIT", lower)
        if self.state == "closed":
            return self.send(line, None)
        if self.state == "auth":
            self.send(line, Exact(b"+OK POP3 server signing off\r\n"))
        else:
            left = len(self.live())
            self.quit_deleted = [self.keys[n - 1] for n in sorted(self.deleted)]
            self.send(line, Exact(b"+OK POP3 server signing off (%d messages left)\r\n" % left))
        self.state = "closed"
        return None

    @rule(junk=st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b))
    def garbage(self, junk: bytes) -> None:
        """Not a command: an unknown keyword (never one of RFC 1939's)."""
        self.client_error(b"!" + junk)

    # -- the wire ----------------------------------------------------------------------

    @rule(chunk=st.integers(1, 40))
    def flush(self, chunk: int) -> None:
        """Feed everything queued, pipelined, in chunks of `chunk` octets."""
        data = b"".join(line for line, _ in self.pending)
        out = b"".join(self.driver.feed(data[i : i + chunk]) for i in range(0, len(data), chunk))
        for line, expected in self.pending:
            out = take(out, expected, line)
        assert out == b"", out[:200]
        self.pending.clear()
        if self.state == "closed":
            assert self.driver.closed
        if self.quit_deleted is not None and self.driver.committed:
            assert list(self.driver.committed[-1]) == self.quit_deleted

    @invariant()
    def nothing_deleted_before_update(self) -> None:
        if self.quit_deleted is None:
            assert self.driver.committed == []

    def teardown(self) -> None:
        if self.pending:
            self.flush(7)


def take(out: bytes, expected: Expected, line: bytes) -> bytes:
    """Check the reply at the start of `out`; return what follows it."""
    if isinstance(expected, Exact):
        assert out.startswith(expected.data), (line, out[:300], expected.data[:300])
        return out[len(expected.data) :]
    end = out.find(b"\r\n") + 2
    assert end >= 2, (line, out[:200])
    if isinstance(expected, AnyErr):
        assert out.startswith(b"-ERR "), (line, out[:200])
        return out[end:]
    assert out.startswith(b"+OK"), (line, out[:200])
    stop = out.find(b"\r\n.\r\n", end - 2)
    assert stop >= 0, (line, out[:200])
    return out[stop + 5 :]


TestPop3Model = Pop3Model.TestCase

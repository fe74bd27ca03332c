"""Kill `popbox serve` with SIGKILL at random moments while POP3 sessions DELE and QUIT and
LMTP delivers, then check the store against what the clients were told (issue: "proof
that nothing is lost").

The ledger holds what the clients know: the messages verified present (by unique-id),
which DELEs were committed (QUIT answered +OK: UPDATE completed) or only maybe (QUIT sent,
no answer), which deliveries were acknowledged (250) or only maybe. After each kill the
store is opened directly (which also proves the maildrop lock is free) and every message
read back. Every message carries a token (its Message-ID), so a message is recognised
whatever the store did to its line ends.
"""

from __future__ import annotations

import contextlib
import os
import poplib
import random
import re
import signal
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from server_helpers import PopboxServer, launch

PASSWORD = "crash-pass"
USERS = ("ann", "bob", "cyd")
TOKEN = re.compile(rb"Message-ID: <(t\d+)@crash\.test>")


def make_message(token: str, rng: random.Random) -> bytes:
    """A message whose body is derived from its token; some are big (slow UPDATEs)."""
    size = rng.choice([200, 2_000, 20_000, 300_000])
    line = f"{token} body line with a .dot and From text\n".encode()
    body = (line * (size // len(line) + 1))[:size]
    return (
        (
            f"From: sender@crash.test\nTo: someone@crash.test\nMessage-ID: <{token}@crash.test>\n"
            f"Subject: {token}\n\n"
        ).encode()
        + body.replace(b"\nt", b"\n.t", 3)
        + b"\n"
    )


def normal(data: bytes) -> bytes:
    """Line ends as LF: how the comparison ignores CRLF versus LF storage."""
    return data.replace(b"\r\n", b"\n")


# What LMTP delivery puts on top (delivery/message.py), as Postfix and Dovecot do.
_TRACE = re.compile(rb"Return-Path: <[^>\n]*>\nDelivered-To: [^\n]+\n")


def same_message(stored: bytes, sent: bytes) -> bool:
    """Byte-identical but for line ends and the trace headers delivery adds."""
    stored, sent = normal(stored), normal(sent)
    if stored == sent:
        return True
    trace = _TRACE.match(stored)
    return trace is not None and stored[trace.end() :] == sent


@dataclass
class Ledger:
    contents: dict[str, bytes] = field(default_factory=dict)  # token -> message
    present: dict[str, dict[str, str]] = field(default_factory=dict)  # user -> uidl -> token
    deleted: dict[str, set[str]] = field(default_factory=dict)  # committed DELE, by token
    maybe_deleted: dict[str, set[str]] = field(default_factory=dict)
    delivered: dict[str, set[str]] = field(default_factory=dict)  # acknowledged
    maybe_delivered: dict[str, set[str]] = field(default_factory=dict)
    corrupt: list[str] = field(default_factory=list)  # RETR answers that were wrong
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_token: int = 0

    def new_token(self) -> str:
        with self.lock:
            self.next_token += 1
            return f"t{self.next_token}"

    def reset_round(self) -> None:
        for table in (self.deleted, self.maybe_deleted, self.delivered, self.maybe_delivered):
            for user in USERS:
                table[user] = set()


def check_store(ledger: Ledger, found: dict[str, dict[str, bytes]]) -> list[str]:
    """Compare what the store holds (user -> uidl -> stored bytes) with the ledger;
    returns the problems (empty: all is well). Then the ledger takes the new state."""
    problems: list[str] = list(ledger.corrupt)
    for user in USERS:
        now: dict[str, str] = {}
        for uidl, data in found[user].items():
            match = TOKEN.search(data)
            if match is None:
                problems.append(f"{user}: {uidl} holds no known message: {data[:80]!r}")
                continue
            token = match.group(1).decode()
            if not same_message(data, ledger.contents[token]):
                problems.append(f"{user}: {uidl} ({token}) is not byte-identical")
            if token in now.values():
                problems.append(f"{user}: {token} is there twice")
            now[uidl] = token
        tokens_now = set(now.values())
        for uidl, token in ledger.present.get(user, {}).items():
            if token in ledger.deleted[user]:
                if token in tokens_now:
                    problems.append(f"{user}: {token} survived a completed UPDATE")
            elif token in ledger.maybe_deleted[user]:
                if token in tokens_now and now.get(uidl) != token:
                    problems.append(f"{user}: {token} changed its UIDL")
            elif now.get(uidl) != token:
                problems.append(f"{user}: {token} (UIDL {uidl}) lost or UIDL changed")
        known_before = set(ledger.present.get(user, {}).values())
        for token in ledger.delivered[user] - tokens_now:
            problems.append(f"{user}: acknowledged delivery {token} is missing")
        allowed = known_before | ledger.delivered[user] | ledger.maybe_delivered[user]
        for token in tokens_now - allowed:
            problems.append(f"{user}: {token} appeared from nowhere")
        ledger.present[user] = now
    ledger.corrupt.clear()
    ledger.reset_round()
    return problems


class Workload:
    """POP3 sessions and LMTP deliveries against one running server until stop()."""

    def __init__(self, ledger: Ledger, server: PopboxServer, lmtp_port: int, seed: int) -> None:
        self.ledger = ledger
        self.server = server
        self.lmtp_port = lmtp_port
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(self._pop3_session, seed + n), daemon=True)
            for n in range(2)
        ] + [threading.Thread(target=self._loop, args=(self._delivery, seed + 9), daemon=True)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def _loop(self, step: Callable[[random.Random], None], seed: int) -> None:
        rng = random.Random(seed)
        while not self.stopping.is_set():
            try:
                step(rng)
            except (OSError, EOFError, poplib.error_proto, smtplib.SMTPException):
                time.sleep(0.01)  # the server is gone (or busy): try again until stopped

    def _pop3_session(self, rng: random.Random) -> None:
        user = rng.choice(USERS)
        ledger = self.ledger
        client = pop3_connect(self.server.host, self.server.port)
        try:
            client.user(user)
            try:
                client.pass_(PASSWORD)
            except poplib.error_proto:
                return  # [IN-USE]: another session has it
            listed = {}
            for line in client.uidl()[1]:
                number, uidl = line.decode().split()
                listed[uidl] = int(number)
            with ledger.lock:
                known = {u: t for u, t in ledger.present[user].items() if u in listed}
            if known and rng.random() < 0.5:
                uidl = rng.choice(sorted(known))
                lines = client.retr(listed[uidl])[1]
                wire = b"\n".join(lines) + b"\n"
                if not same_message(wire, ledger.contents[known[uidl]]):
                    with ledger.lock:
                        ledger.corrupt.append(f"{user}: RETR of {known[uidl]} differed")
            chosen = rng.sample(sorted(known), k=min(len(known), rng.randint(0, 3)))
            for uidl in chosen:
                client.dele(listed[uidl])
            with ledger.lock:
                ledger.maybe_deleted[user] |= {known[u] for u in chosen}
            reply = client.quit()
            if reply.startswith(b"+OK"):
                with ledger.lock:
                    ledger.deleted[user] |= {known[u] for u in chosen}
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _delivery(self, rng: random.Random) -> None:
        user = rng.choice(USERS)
        token = self.ledger.new_token()
        data = make_message(token, rng)
        with self.ledger.lock:
            self.ledger.contents[token] = data
            self.ledger.maybe_delivered[user].add(token)
        with smtplib.LMTP(self.server.host, self.lmtp_port, timeout=10) as lmtp:
            # CRLF on the wire (RFC 5321 section 2.3.8): smtplib sends bytes as they are.
            refused = lmtp.sendmail("sender@crash.test", [user], data.replace(b"\n", b"\r\n"))
        if not refused:
            with self.ledger.lock:
                self.ledger.delivered[user].add(token)


def pop3_connect(host: str, port: int) -> poplib.POP3:
    """poplib.POP3, closing its socket if the greeting never comes (the server died)."""
    opened: list[socket.socket] = []

    class Pop3(poplib.POP3):
        def _create_socket(self, timeout: float) -> socket.socket:
            # (poplib's hook for the connection; typeshed does not list it)
            sock: socket.socket = super()._create_socket(timeout)  # type: ignore[misc]
            opened.append(sock)
            return sock

    try:
        return Pop3(host, port, timeout=10)
    except BaseException:
        for sock in opened:
            sock.close()
        raise


def lmtp_port_of(server: PopboxServer) -> int:
    return int(server.log.wait_for(r"lmtp listening on 127\.0\.0\.1:(\d+)").group(1))


def kill_rounds(
    root: Path,
    config: Path,
    ledger: Ledger,
    read_store: Callable[[], dict[str, dict[str, bytes]]],
    *,
    kills: int,
    seed: int,
) -> list[str]:
    """Run `kills` rounds of: start the server, load it, SIGKILL it at a random moment,
    check the store. Returns every problem found (with its round)."""
    rng = random.Random(seed)
    problems: list[str] = []
    ledger.reset_round()
    for round_number in range(kills):
        server = launch(root, config)
        workload = Workload(ledger, server, lmtp_port_of(server), seed + round_number * 31)
        workload.start()
        time.sleep(rng.uniform(0.05, 0.8))
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        workload.stop()
        problems += [f"round {round_number}: {p}" for p in check_store(ledger, read_store())]
    return problems


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

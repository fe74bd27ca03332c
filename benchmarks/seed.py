"""Identical users and Maildirs for both servers (benchmarks/compare.py).

Every server gets its own copy of the mail tree, so neither sees the other's index or cache
files (Dovecot's dovecot.index* and dovecot-uidlist, popbox's popbox-cache and lock). The
passwd-file is the same file for both: `name:{PLAIN}secret`, a form Dovecot's passwd-file
passdb and popbox both read, so no password hashing is measured.

Messages are stored as an MDA leaves them: LF line ends, in new/, under Postfix/Dovecot
file names carrying ,S=<octets> and ,W=<octets with CRLF line ends> (RFC 1939 sizes), so
neither server has to read a file to answer LIST.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "bench-secret"
BULK_MESSAGE_OCTETS = 20 * 1024  # the issue: 20 KB messages


@dataclass(frozen=True)
class Population:
    """Who exists: `bulk` users with `messages` messages of 20 KB (churn and bulk download),
    `idle` users with one small message (the many-sessions workload), and one `big` user
    (the large maildrop, seeded separately)."""

    bulk: int = 500
    messages: int = 20
    idle: int = 10_000

    def bulk_users(self) -> list[str]:
        return [f"bulk{n:05d}" for n in range(self.bulk)]

    def idle_users(self) -> list[str]:
        return [f"idle{n:05d}" for n in range(self.idle)]


BIG_USER = "big"


def bulk_message(number: int, octets: int = BULK_MESSAGE_OCTETS) -> bytes:
    """A plain-text message of exactly `octets` octets with LF line ends; every 25th body
    line starts with a dot, so RETR byte-stuffs (RFC 1939 section 3) in both servers."""
    header = (
        f"Return-Path: <sender{number % 89}@example.org>\n"
        f"From: Sender {number % 89} <sender{number % 89}@example.org>\n"
        "To: user@example.org\n"
        f"Subject: benchmark message {number}\n"
        f"Message-ID: <{number}.bench@example.org>\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n"
    ).encode()
    lines = []
    size = len(header)
    line_number = 0
    while size < octets:
        dot = "." if line_number % 25 == 7 else ""
        text = (
            f"{dot}{line_number:05d} the quick brown fox jumps over the lazy dog, message {number}"
        )
        line = (text[:72] + "\n").encode()
        lines.append(line)
        size += len(line)
        line_number += 1
    body = b"".join(lines)
    data = header + body
    return data[: octets - 1] + b"\n"


def maildir_name(number: int, data: bytes) -> str:
    """A Dovecot/Postfix-style base name with ,S= and ,W= (Dovecot's maildir_filename)."""
    wire = len(data) + data.count(b"\n") - data.count(b"\r\n")
    return f"{1_700_000_000 + number}.M{number}P4242.bench,S={len(data)},W={wire}"


def write_maildir(maildir: Path, messages: list[bytes]) -> None:
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for number, data in enumerate(messages):
        (maildir / "new" / maildir_name(number, data)).write_bytes(data)


def write_users(path: Path, names: list[str]) -> None:
    path.write_text("".join(f"{name}:{{PLAIN}}{PASSWORD}\n" for name in names))


def seed_mail(mail: Path, population: Population) -> None:
    """One server's mail tree: <mail>/<user>/Maildir for every bulk and idle user."""
    bulk = [bulk_message(n) for n in range(population.messages)]
    for user in population.bulk_users():
        write_maildir(mail / user / "Maildir", bulk)
    small = [b"From: a@example.org\nSubject: hello\n\nhello\n"]
    for user in population.idle_users():
        write_maildir(mail / user / "Maildir", small)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Hand a tree to the user Dovecot's mail processes run as (never root)."""
    if os.geteuid() != 0:
        return
    for directory, _, files in os.walk(path):
        os.chown(directory, uid, gid)
        for name in files:
            os.chown(os.path.join(directory, name), uid, gid)

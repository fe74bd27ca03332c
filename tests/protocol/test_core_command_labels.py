"""The core tells the driver each command line's keyword for the metrics: known keywords
as they are, anything else as "unknown", SASL responses not at all."""

from __future__ import annotations

import base64
import dataclasses

from core_helpers import PASSWORD, FakeDriver


def labels_of(script: bytes, **driver_options: object) -> list[str]:
    driver = FakeDriver(messages={"k1": b"Subject: x\r\n\r\nbody\r\n"}, **driver_options)  # type: ignore[arg-type]
    labels: list[str] = []
    session = driver.session
    session.config = dataclasses.replace(session.config, on_command=labels.append)
    driver.feed(script)
    return labels


def test_every_command_line_is_labelled_by_keyword() -> None:
    script = (
        b"capa\r\nSTAT\r\nUSER alice\r\nPASS " + PASSWORD.encode() + b"\r\n"
        b"stat\r\nLIST 1\r\nRETR 1\r\nTOP 1 0\r\nUIDL\r\nDELE 1\r\nRSET\r\nNOOP\r\nQUIT\r\n"
    )
    assert labels_of(script) == [
        "CAPA",
        "STAT",  # not allowed before login, still a STAT line
        "USER",
        "PASS",
        "STAT",
        "LIST",
        "RETR",
        "TOP",
        "UIDL",
        "DELE",
        "RSET",
        "NOOP",
        "QUIT",
    ]


def test_unknown_and_malformed_lines_share_one_label() -> None:
    script = (
        b"XYZZY\r\nHELO\r\n\r\nQUITE\r\nRE\x01R 1\r\n\xff\xfe\r\n"
        + b"A" * 300  # overlong: the rest of it is discarded
        + b"\r\nUSER\r\nQUIT\r\n"
    )
    assert labels_of(script) == ["unknown"] * 7 + ["USER", "QUIT"]


def test_sasl_responses_are_not_commands() -> None:
    initial = base64.b64encode(b"\0alice\0" + PASSWORD.encode())
    script = b"AUTH PLAIN\r\n" + initial + b"\r\nQUIT\r\n"
    assert labels_of(script, mechanisms=("PLAIN",)) == ["AUTH", "QUIT"]

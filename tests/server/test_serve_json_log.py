"""log_format = "json" end to end: every line of a real `popbox serve` parsed with
json.loads, the structured fields of the login and logout lines, no secrets, and the JSON
fail2ban filter in contrib/ run by the real fail2ban-regex."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import Starter

from server_helpers import RawClient, crlf, fail2ban_matches

FILTER = Path(__file__).parents[2] / "contrib" / "fail2ban" / "filter.d" / "popbox-json.conf"
USERS = {"alice": "{PLAIN}Pa55-alice"}
MESSAGE = b"From: a@example.org\r\nSubject: one\r\n\r\nbody\r\n"
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def records(lines: list[str]) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in lines]
    for record in parsed:
        assert list(record)[:4] == ["time", "level", "logger", "message"], record
        assert RFC3339_UTC.fullmatch(record["time"]), record
        datetime.fromisoformat(record.pop("time"))  # RFC 3339 as Python reads it
    return parsed


def one(parsed: list[dict[str, Any]], message_start: str) -> dict[str, Any]:
    found = [r for r in parsed if r["message"].startswith(message_start)]
    assert len(found) == 1, (message_start, parsed)
    return found[0]


def test_json_log_lines_carry_structured_fields(popbox: Starter) -> None:
    server = popbox(USERS, {"alice": [MESSAGE]}, log_format="json", extra="failure_delay = 0\n")
    failed = RawClient(server)
    assert failed.login("alice", "wrong-Pa55").startswith(b"-ERR [AUTH]")
    client = RawClient(server, source="127.0.0.2")
    assert client.login("alice", "Pa55-alice").startswith(b"+OK")
    client.send(b"RETR 1\r\n")
    retr = client.read_multiline()
    assert client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
    client.command(b"QUIT")
    server.log.wait_for(r'"message": "logout user=alice ')
    assert server.stop() == 0
    text = "\n".join(server.log.lines)
    assert "Pa55" not in text  # neither password, in any field

    parsed = records(server.log.lines)
    login_failed = one(parsed, "login failed")
    session = login_failed.pop("session")
    assert login_failed == {
        "level": "WARNING",
        "logger": "popbox.login",
        "message": "login failed user=alice client=127.0.0.1 mechanism=USER "
        "reason=invalid-credentials",
        "user": "alice",
        "client": "127.0.0.1",
        "mechanism": "USER",
        "reason": "invalid-credentials",
    }
    login_ok = one(parsed, "login ok")
    assert login_ok["session"] != session and len(session) == len(login_ok["session"]) == 12
    assert login_ok["user"] == "alice" and login_ok["client"] == "127.0.0.2"
    logout = one(parsed, "logout user=alice")
    size = len(crlf(MESSAGE))
    sent = len(b"USER alice\r\nPASS Pa55-alice\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n")
    assert logout == {
        "level": "INFO",
        "logger": "popbox.session",
        "message": f"logout user=alice client=127.0.0.2 reason=quit top=0/0 retr=1/{len(retr)} "
        f"del=1/1 size={size} bytes_in={sent} bytes_out={logout['bytes_out']}",
        "user": "alice",
        "client": "127.0.0.2",
        "reason": "quit",
        "top": 0,
        "top_bytes": 0,
        "retr": 1,
        "retr_bytes": len(retr),
        "deleted": 1,
        "messages": 1,
        "size": size,
        "bytes_in": sent,
        "bytes_out": logout["bytes_out"],
        "session": login_ok["session"],
    }
    assert isinstance(logout["bytes_out"], int) and logout["bytes_out"] > len(retr)
    # Lines without fields of their own carry the session's (the connect line).
    connects = [r for r in parsed if r["message"].startswith("connect ")]
    assert [(r["client"], r["session"]) for r in connects] == [
        ("127.0.0.1", session),
        ("127.0.0.2", login_ok["session"]),
    ]
    ready = one(parsed, "ready")
    assert ready == {"level": "INFO", "logger": "popbox.server", "message": "ready"}


def test_fail2ban_json_filter_matches_popbox_json_log(popbox: Starter, tmp_path: Path) -> None:
    server = popbox(USERS, log_format="json", extra="failure_delay = 0\n")
    assert RawClient(server).login("alice", "wrong").startswith(b"-ERR [AUTH]")
    assert RawClient(server, source="127.0.0.3").login("nobody", "x").startswith(b"-ERR")
    holder = RawClient(server, source="127.0.0.4")
    assert holder.login("alice", "Pa55-alice").startswith(b"+OK")
    # [IN-USE] is not an attack: logged as login failed reason=in-use, not matched.
    busy = RawClient(server, source="127.0.0.5")
    assert busy.login("alice", "Pa55-alice").startswith(b"-ERR [IN-USE]")
    server.log.wait_for(r"reason=in-use")
    server.stop()
    assert fail2ban_matches(server.log.lines, FILTER, tmp_path) == (2, ["127.0.0.1", "127.0.0.3"])

"""curl as a real POP3 client against `popbox serve` (shared/STYLE.md item 8).

curl logs in with APOP here (the greeting carries a timestamp and no SASL is offered), and
it sends QUIT when it is done, so a DELE it issues is committed. What curl writes:

* `pop3://u:p@host:port/`: the LIST scan listings as sent, "n octets" CRLF lines, without
  the "+OK" line and without the terminating ".";
* `pop3://u:p@host:port/N`: message N as RETR carried it, CRLF line ends and dot-stuffing
  removed, i.e. exactly `wire_form(stored)`;
* `-X UIDL` and `-X 'TOP n k'`: the multi-line response body, unstuffed, CRLF lines;
* `-X 'DELE n' -I`: nothing (`-I` tells curl the command has no body to transfer).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from curl_helpers import NEEDS_CURL, curl
from server_helpers import PopboxServer, client_corpus, maildir_contents, wire_form

pytestmark = NEEDS_CURL

Starter = Callable[..., PopboxServer]
CORPUS = client_corpus()

# curl's exit codes (man curl, EXIT CODES).
CURLE_WEIRD_SERVER_REPLY = 8  # the server answered -ERR to the command
CURLE_LOGIN_DENIED = 67


def url(server: PopboxServer, path: str = "", password: str = "secret") -> str:
    return f"pop3://alice:{password}@{server.host}:{server.port}/{path}"


def scan_listing(messages: list[bytes]) -> bytes:
    """LIST's lines (RFC 1939 section 5): "n octets", octets being the wire size."""
    return b"".join(b"%d %d\r\n" % (n, len(wire_form(m))) for n, m in enumerate(messages, 1))


def top_form(stored: bytes, lines: int) -> bytes:
    """TOP n k (RFC 1939 section 7): the header, the blank line, then k body lines."""
    header, blank, body = wire_form(stored).partition(b"\r\n\r\n")
    return header + blank + b"".join(body.splitlines(keepends=True)[:lines])


def start(popbox: Starter) -> PopboxServer:
    return popbox({"alice": "{PLAIN}secret"}, {"alice": CORPUS})


def test_list_is_the_scan_listing_of_wire_sizes(popbox: Starter) -> None:
    server = start(popbox)
    result = curl(url(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout == scan_listing(CORPUS)


def test_retr_every_message_byte_for_byte_and_keeps_them(popbox: Starter, tmp_path: Path) -> None:
    server = start(popbox)
    outputs = [tmp_path / f"retr{n}" for n in range(1, len(CORPUS) + 1)]
    args: list[str] = []
    for n, output in enumerate(outputs, 1):
        args += [url(server, str(n)), "--output", str(output)]
    result = curl(*args)
    assert result.returncode == 0, result.stderr
    for n, (output, stored) in enumerate(zip(outputs, CORPUS, strict=True), 1):
        assert output.read_bytes() == wire_form(stored), f"message {n}"
    # RETR alone deletes nothing: QUIT leaves every message, unchanged.
    assert maildir_contents(server.maildir("alice")) == CORPUS


def test_uidl_lists_the_maildir_base_names(popbox: Starter) -> None:
    server = start(popbox)
    names = sorted(path.name for path in (server.maildir("alice") / "new").iterdir())
    result = curl("--request", "UIDL", url(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"".join(
        b"%d %s\r\n" % (n, name.encode()) for n, name in enumerate(names, 1)
    )


def test_top_returns_header_blank_line_and_k_body_lines(popbox: Starter) -> None:
    server = start(popbox)
    requests = [(n, 0) for n in range(1, len(CORPUS) + 1)] + [(3, 3), (3, 99), (6, 2)]
    for n, lines in requests:
        result = curl("--request", f"TOP {n} {lines}", url(server))
        assert result.returncode == 0, (n, lines, result.stderr)
        assert result.stdout == top_form(CORPUS[n - 1], lines), f"TOP {n} {lines}"


def test_dele_is_committed_by_quit_and_renumbers(popbox: Starter) -> None:
    server = start(popbox)
    result = curl("--request", "DELE 1", "--head", url(server))
    assert (result.returncode, result.stdout) == (0, b""), result.stderr
    assert maildir_contents(server.maildir("alice")) == CORPUS[1:]
    result = curl(url(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout == scan_listing(CORPUS[1:])


def test_no_such_message_and_wrong_password_are_errors(popbox: Starter) -> None:
    server = start(popbox)
    result = curl(url(server, str(len(CORPUS) + 1)))
    assert (result.returncode, result.stdout) == (CURLE_WEIRD_SERVER_REPLY, b"")
    result = curl(url(server, "1", password="wrong"))
    assert (result.returncode, result.stdout) == (CURLE_LOGIN_DENIED, b"")
    assert maildir_contents(server.maildir("alice")) == CORPUS

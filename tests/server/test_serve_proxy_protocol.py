"""PROXY protocol listeners end to end, with headers built from the specification.

The real `popbox serve` with `proxy_protocol = true`: the header's client is the one in
the logs, limits, throttling and the plaintext policy; a v2 SSL TLV counts as TLS; LOCAL
and UNKNOWN keep the proxy's address; untrusted peers, missing, malformed and late
headers are closed before a single octet is sent, and nobody else notices. Implicit TLS
comes after the header, also in the same segment, many times over. The same behaviour
behind a real HAProxy is in test_haproxy.py.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
from conftest import Starter, TlsFiles

from proxy_helpers import ssl_tlv, v1, v2, v2_local, v2_raw
from server_helpers import PopboxServer, RawClient

USERS = {"alice": "{PLAIN}secret", "bob": "{PLAIN}bobpw"}
MAIL = {"alice": [b"Subject: one\n\nbody\n"]}
REFUSED = b"-ERR [AUTH] plaintext authentication disallowed without TLS\r\n"
CLIENT = ("203.0.113.7", 50123)  # a non-loopback client, as only a header can name here
OTHER = ("203.0.113.8", 50124)
TRUSTED = '["127.0.0.1/32"]'


def proxy_listener(tls: str = "none", trusted: str = TRUSTED) -> str:
    return (
        f'[[listen]]\naddress = "127.0.0.1"\nport = 0\ntls = "{tls}"\n'
        f"proxy_protocol = true\ntrusted_proxies = {trusted}\n"
    )


def destination(server: PopboxServer, mode: str = "none") -> tuple[str, int]:
    return ("127.0.0.1", server.proxy_ports[mode])


def proxied(
    server: PopboxServer,
    header: bytes,
    mode: str = "none",
    *,
    source: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> RawClient:
    """A client whose connection starts with `header`, as a proxy's would."""
    return RawClient(server, port=server.proxy_ports[mode], preamble=header, source=source, tls=tls)


def capa(client: RawClient) -> list[bytes]:
    client.send(b"CAPA\r\n")
    return client.read_multiline().split(b"\r\n")[1:-2]


def closed_without_a_word(sock: socket.socket) -> None:
    """The server closes (FIN, or RST when our octets were left unread) and sent nothing."""
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert received == b""


def test_v1_header_names_the_client_for_logs_and_the_plaintext_policy(
    popbox: Starter,
) -> None:
    server = popbox(USERS, MAIL, extra=proxy_listener())
    client = proxied(server, v1(CLIENT, destination(server)))
    assert client.greeting.startswith(b"+OK POP3 server ready <")
    # 203.0.113.7 is not loopback: the default policy hides and refuses USER/PASS.
    assert b"USER" not in capa(client)
    assert client.command(b"USER alice") == REFUSED
    assert client.command(b"QUIT").startswith(b"+OK")
    server.log.wait_for(r"connect client=203\.0\.113\.7 proxy=127\.0\.0\.1$")
    server.log.wait_for(r"logout user=- client=203\.0\.113\.7 reason=quit ")
    loopback = proxied(server, v1(("127.0.0.9", 1), destination(server)))
    assert loopback.login("alice", "secret").startswith(b"+OK maildrop has 1 messages")
    server.log.wait_for(r"login ok user=alice client=127\.0\.0\.9 mechanism=USER ")


def test_v2_ssl_tlv_counts_as_tls(popbox: Starter, tls_files: TlsFiles) -> None:
    extra = 'plaintext = "never"\n' + tls_files.toml + proxy_listener("starttls")
    server = popbox(USERS, MAIL, extra=extra)
    tlv = ssl_tlv(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384")
    client = proxied(server, v2(CLIENT, destination(server, "starttls"), tlv), "starttls")
    tags = capa(client)
    assert b"USER" in tags and b"STLS" not in tags
    # TLS ended at the proxy: no channel to bind, so no -PLUS mechanism.
    assert b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN" in tags
    assert client.command(b"STLS") == b"-ERR command not permitted when TLS active\r\n"
    assert client.login("alice", "secret").startswith(b"+OK maildrop has 1 messages")
    server.log.wait_for(
        r"tls client=203\.0\.113\.7 version=TLSv1\.3 cipher=TLS_AES_256_GCM_SHA384 "
        r"proxy=127\.0\.0\.1$"
    )
    server.log.wait_for(r"login ok user=alice client=203\.0\.113\.7 mechanism=USER ")


def test_v2_without_the_client_ssl_bit_is_cleartext_and_stls_works(
    popbox: Starter, tls_files: TlsFiles
) -> None:
    extra = 'plaintext = "never"\n' + tls_files.toml + proxy_listener("starttls")
    server = popbox(USERS, MAIL, extra=extra)
    header = v2(CLIENT, destination(server, "starttls"), ssl_tlv(client=0, version=None))
    client = proxied(server, header, "starttls")
    tags = capa(client)
    assert b"USER" not in tags and b"STLS" in tags
    assert client.command(b"USER alice") == REFUSED
    # STLS through the proxy: our own TLS, so channel binding is back.
    assert client.command(b"STLS") == b"+OK Begin TLS negotiation\r\n"
    client.starttls(tls_files.client_context())
    assert any(tag.startswith(b"SASL SCRAM-SHA-256-PLUS ") for tag in capa(client))
    assert client.login("alice", "secret").startswith(b"+OK maildrop has 1 messages")
    server.log.wait_for(r"tls client=203\.0\.113\.7 version=TLSv1\.[23] cipher=\S+ proxy=")


@pytest.mark.parametrize(
    "header",
    [v2_local(), v2_local(b"\x00" * 12), b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ::1 ::2 1 2\r\n"],
    ids=["v2-local", "v2-local-with-block", "v1-unknown", "v1-unknown-with-addresses"],
)
def test_local_and_unknown_keep_the_proxys_address(popbox: Starter, header: bytes) -> None:
    server = popbox(USERS, MAIL, extra=proxy_listener())
    client = proxied(server, header)
    assert client.login("alice", "secret").startswith(b"+OK")  # 127.0.0.1: loopback
    server.log.wait_for(r"connect client=127\.0\.0\.1 proxy=127\.0\.0\.1 local$")
    server.log.wait_for(r"login ok user=alice client=127\.0\.0\.1 ")


def test_commands_in_the_headers_segment_and_a_header_in_pieces(popbox: Starter) -> None:
    server = popbox(USERS, MAIL, extra=proxy_listener())
    header = v2(("127.0.0.9", 1), destination(server))
    pipelined = proxied(server, header + b"USER alice\r\nPASS secret\r\nSTAT\r\n")
    assert pipelined.read_line() == b"+OK send PASS\r\n"
    assert pipelined.read_line().startswith(b"+OK maildrop has 1 messages")
    assert pipelined.read_line().startswith(b"+OK 1 ")
    line = v1(("127.0.0.10", 2), destination(server))
    sock = socket.create_connection(destination(server), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in (line[:1], line[1:12], line[12:-1], line[-1:]):
        sock.sendall(piece)
        time.sleep(0.05)  # separate segments: the header arrives in four reads
    assert sock.recv(4096).startswith(b"+OK POP3 server ready")
    sock.close()
    server.log.wait_for(r"connect client=127\.0\.0\.10 proxy=127\.0\.0\.1$")


BAD_HEADERS = [
    pytest.param(b"USER alice\r\n", "invalid PROXY header: not a PROXY protocol header", id="pop3"),
    pytest.param(
        b"\x16\x03\x01\x00\xa5\x01\x00\x00", "not a PROXY protocol header", id="tls-hello"
    ),
    pytest.param(b"PROXY TCP4 203.0.113.7\n", "bare CR or LF", id="bare-lf"),
    pytest.param(b"PROXY TCP4 203.0.113.7 127.0.0.1 01 110\r\n", "invalid port", id="v1-port"),
    pytest.param(b"PROXY TCP4 " + b"9" * 120, "no CRLF within 107", id="v1-too-long"),
    pytest.param(v2_raw(0x1, 0x11, b"")[:12] + b"\x11", "version 1", id="v2-version"),
    pytest.param(v2_raw(0x1, 0x11, bytes(8)), "too short for INET", id="v2-short-block"),
]


@pytest.mark.parametrize(("data", "reason"), BAD_HEADERS)
def test_malformed_headers_are_closed_at_once(popbox: Starter, data: bytes, reason: str) -> None:
    server = popbox(USERS, MAIL, extra=proxy_listener())
    bystander = proxied(server, v1(("127.0.0.9", 1), destination(server)))
    assert bystander.login("alice", "secret").startswith(b"+OK")
    sock = socket.create_connection(destination(server), timeout=10)
    sock.sendall(data)
    closed_without_a_word(sock)
    server.log.wait_for(rf"refused client=127\.0\.0\.1 reason='[^']*{reason}")
    # The session that was already there, and new ones, carry on.
    assert bystander.command(b"STAT").startswith(b"+OK 1 ")
    assert proxied(server, v2_local()).command(b"QUIT").startswith(b"+OK")


def test_missing_late_and_unfinished_headers(popbox: Starter) -> None:
    server = popbox(USERS, MAIL, extra=proxy_listener())
    silent = socket.create_connection(destination(server), timeout=10)
    half = socket.create_connection(destination(server), timeout=10)
    half.sendall(v1(CLIENT, destination(server))[:20])
    started = time.monotonic()
    closed_without_a_word(silent)
    closed_without_a_word(half)
    # proxy-protocol.txt section 2: "at least 3 seconds to cover a TCP retransmit".
    assert 2.9 <= time.monotonic() - started < 8
    server.log.wait_count(r"refused client=127\.0\.0\.1 reason='no PROXY header within 3 s'", 2)
    hangup = socket.create_connection(destination(server), timeout=10)
    hangup.sendall(v2(CLIENT, destination(server))[:20])
    hangup.shutdown(socket.SHUT_WR)
    closed_without_a_word(hangup)
    server.log.wait_for(r"reason='invalid PROXY header: connection closed before the end")
    assert server.process.poll() is None


def test_untrusted_peers_are_closed_whatever_they_send(popbox: Starter) -> None:
    server = popbox(USERS, MAIL, extra=proxy_listener(trusted='["127.0.0.2/32", "::1/128"]'))
    sock = socket.create_connection(destination(server), timeout=10)
    sock.sendall(v1(("127.0.0.9", 1), destination(server)))
    closed_without_a_word(sock)
    server.log.wait_for(r"refused client=127\.0\.0\.1 reason='not in trusted_proxies'")
    trusted = proxied(server, v1(("127.0.0.9", 1), destination(server)), source="127.0.0.2")
    assert trusted.login("alice", "secret").startswith(b"+OK")
    server.log.wait_for(r"login ok user=alice client=127\.0\.0\.9 ")


def test_throttling_and_limits_apply_to_the_real_client(popbox: Starter) -> None:
    extra = (
        "failure_delay = 0\nfailure_delay_max = 0\nmax_failures = 1\n"
        + proxy_listener()
        + "[limits]\nmax_connections_per_ip = 2\n"
    )
    server = popbox(USERS, MAIL, extra=extra)
    attacker = proxied(server, v1(CLIENT, destination(server)))
    for _ in range(2):
        assert attacker.command(b"APOP mallory 0123456789abcdef0123456789abcdef").startswith(
            b"-ERR [AUTH]"
        )
    server.log.wait_for(
        r"login failed user=mallory client=203\.0\.113\.7 mechanism=APOP "
        r"reason=invalid-credentials"
    )
    blocked = proxied(server, v1(CLIENT, destination(server)))
    assert blocked.greeting == (
        b"-ERR [SYS/TEMP] too many failed logins from your address, try again later\r\n"
    )
    # Same proxy, another client: not blocked, and has its own connection count.
    first = proxied(server, v2(OTHER, destination(server)))
    second = proxied(server, v2(OTHER, destination(server)))
    assert first.greeting.startswith(b"+OK") and second.greeting.startswith(b"+OK")
    third = proxied(server, v2(OTHER, destination(server)))
    assert third.greeting == b"-ERR [SYS/TEMP] too many connections from your address\r\n"
    server.log.wait_for(r"refused client=203\.0\.113\.8 reason='too many connections from")


def tls_greeting_in_one_segment(
    address: tuple[str, int], header: bytes, context: ssl.SSLContext
) -> bytes:
    """The header and the TLS ClientHello in a single send (as a proxy relaying a client
    that spoke first would), then the handshake and the greeting over memory BIOs."""
    sock = socket.create_connection(address, timeout=10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    preamble = [header]

    def exchange() -> None:
        if pending := outgoing.read():
            sock.sendall(b"".join(preamble) + pending)
            preamble.clear()
        data = sock.recv(65536)
        if not data:
            raise EOFError("closed during the TLS handshake")
        incoming.write(data)

    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                exchange()
        received = b""
        while b"\r\n" not in received:
            try:
                received += tls.read(4096)
            except ssl.SSLWantReadError:
                exchange()
        return received
    finally:
        sock.close()


def test_a_flood_relayed_by_the_proxy_waits_its_turn_by_client_address(
    popbox: Starter,
) -> None:
    """1,000 connections relayed by the proxy for 20 flooding clients (50 each), then one
    from a client with nothing open: once its header names it, it starts ahead of the
    flood's waiting connections (server/start_queue.py, as on other listeners), not after
    every one of them, as it did when each header started its session at once. All are
    connected first, then the headers sent back to back: the proxy relays a burst."""
    server = popbox(USERS, MAIL, extra=proxy_listener())
    flood = [socket.create_connection(destination(server)) for _ in range(1000)]
    honest = socket.create_connection(destination(server))
    for n, sock in enumerate(flood):
        sock.sendall(v1((f"10.1.0.{n % 20 + 1}", 40000 + n), destination(server)))
    honest.sendall(v1(CLIENT, destination(server)))
    for sock in [honest, *flood]:
        sock.settimeout(30)
        assert sock.recv(100).startswith(b"+OK POP3 server ready <")
    server.log.wait_count(r"connect client=10\.1\.0\.", 1000)
    starts = [line for line in server.log.lines if "connect client=" in line]
    first = next(n for n, line in enumerate(starts) if "client=203.0.113.7 " in line)
    assert len(starts) - 1 - first >= 100, f"{len(starts) - 1 - first} flood sessions after"
    honest.sendall(b"QUIT\r\n")
    assert honest.recv(100).startswith(b"+OK")
    for sock in [honest, *flood]:
        sock.close()


def test_implicit_tls_after_the_header(popbox: Starter, tls_files: TlsFiles) -> None:
    extra = 'plaintext = "never"\n' + tls_files.toml + proxy_listener("implicit")
    server = popbox(USERS, MAIL, extra=extra)
    context = tls_files.client_context()
    header = v2(CLIENT, destination(server, "implicit"))
    client = proxied(server, header, "implicit", tls=context)
    assert client.login("alice", "secret").startswith(b"+OK maildrop has 1 messages")
    server.log.wait_for(r"tls client=203\.0\.113\.7 version=TLSv1\.[23] cipher=\S+ proxy=")
    one_segment = tls_greeting_in_one_segment(destination(server, "implicit"), header, context)
    assert one_segment.startswith(b"+OK POP3 server ready <")
    # A client that skips the header: its ClientHello is no header.
    sock = socket.create_connection(destination(server, "implicit"), timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        context.wrap_socket(sock, server_hostname="localhost")
    server.log.wait_for(r"refused client=127\.0\.0\.1 reason='invalid PROXY header: not a PROXY")
    # A header and then no TLS: the handshake fails, the server goes on.
    sock = socket.create_connection(destination(server, "implicit"), timeout=10)
    sock.sendall(header + b"USER alice\r\n")
    closed_without_a_word(sock)
    server.log.wait_for(r"tls handshake failed client=203\.0\.113\.7 proxy=127\.0\.0\.1")
    assert proxied(server, header, "implicit", tls=context).command(b"QUIT").startswith(b"+OK")


def test_many_tls_handshakes_after_headers(popbox: Starter, tls_files: TlsFiles) -> None:
    """The header read, then the hand-over to TLS, under load: sequential and concurrent
    connections, the ClientHello in the header's segment or after it; none may hang."""
    extra = tls_files.toml + proxy_listener("implicit")
    server = popbox(USERS, MAIL, extra=extra)
    context = tls_files.client_context()
    address = destination(server, "implicit")
    failures: list[BaseException] = []

    def session(number: int) -> None:
        header = v2((f"203.0.{number // 250}.{number % 250 + 1}", 1000 + number), address)
        try:
            if number % 2:
                greeting = tls_greeting_in_one_segment(address, header, context)
            else:
                client = proxied(server, header, "implicit", tls=context)
                greeting = client.greeting
                assert client.command(b"QUIT").startswith(b"+OK")
                client.close()
            assert greeting.startswith(b"+OK POP3 server ready <"), greeting
        except BaseException as error:
            failures.append(error)

    started = time.monotonic()
    for number in range(200):
        session(number)
    for batch in range(5):
        threads = [
            threading.Thread(target=session, args=(1000 + batch * 40 + n,)) for n in range(40)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert not failures, failures[:3]
    assert time.monotonic() - started < 50
    assert server.process.poll() is None


def test_ipv6_listener_and_v4_mapped_clients(popbox: Starter) -> None:
    listener = proxy_listener(trusted='["::1/128"]').replace('"127.0.0.1"', '"::1"')
    server = popbox(USERS, MAIL, extra=listener)
    address = ("::1", server.proxy_ports["none"])
    for source, logged in [
        ("2001:db8::7", r"2001:db8::7"),
        ("::ffff:203.0.113.9", r"203\.0\.113\.9"),  # one spelling per client
    ]:
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(v1((source, 1), ("::1", 110)) + b"QUIT\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        sock.close()
        assert reply.endswith(b"+OK POP3 server signing off\r\n")
        server.log.wait_for(rf"logout user=- client={logged} reason=quit ")
    local = socket.create_connection(address, timeout=10)
    local.sendall(v2_local())
    assert local.recv(4096).startswith(b"+OK POP3 server ready")
    local.close()
    server.log.wait_for(r"connect client=::1 proxy=::1 local$")


def test_half_close_after_header_still_gets_every_reply(popbox: Starter) -> None:
    """`printf 'PROXY ...\\r\\nUSER..QUIT' | nc`: the half-close behind a proxy is the
    client's, and its commands are all answered (there is no TLS to forbid it)."""
    server = popbox(USERS, MAIL, extra=proxy_listener())
    sock = socket.create_connection(destination(server), timeout=10)
    sock.sendall(
        v1(("127.0.0.9", 1), destination(server)) + b"USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n"
    )
    sock.shutdown(socket.SHUT_WR)
    replies = b""
    while chunk := sock.recv(4096):
        replies += chunk
    sock.close()
    lines = replies.split(b"\r\n")
    assert lines[0].startswith(b"+OK POP3 server ready <")
    assert lines[1] == b"+OK send PASS"
    assert lines[2].startswith(b"+OK maildrop has 1 messages")
    assert lines[3].startswith(b"+OK 1 ")
    assert lines[4] == b"+OK POP3 server signing off (1 messages left)"
    assert lines[5:] == [b""]


def test_sigterm_with_headers_pending_and_sessions_open(popbox: Starter) -> None:
    server = popbox(USERS, MAIL, extra=proxy_listener())
    client = proxied(server, v1(("127.0.0.9", 1), destination(server)))
    assert client.login("alice", "secret").startswith(b"+OK")
    waiting = socket.create_connection(destination(server), timeout=10)
    waiting.sendall(b"PROXY TCP4 ")
    server.log.wait_for(r"login ok user=alice client=127\.0\.0\.9 ")
    assert server.stop() == 0
    closed_without_a_word(waiting)
    assert client.read_until_closed() == b"-ERR [SYS/TEMP] server shutting down\r\n"
    server.log.wait_for(r"logout user=alice client=127\.0\.0\.9 reason=shutdown ")
    server.log.wait_for(r"popbox\.server: stopped")
    assert (
        len(list((server.maildir("alice") / "new").iterdir()))
        + len(list((server.maildir("alice") / "cur").iterdir()))
        == 1
    )

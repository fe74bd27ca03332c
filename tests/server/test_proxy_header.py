"""The PROXY protocol parser (popbox.server.proxy_header) against HAProxy's specification.

Exact results for the edges of sections 2.1 and 2.2, every prefix of a valid header is
INCOMPLETE (so any chunking works, shared/STYLE.md item 6), only ProxyHeaderError ever
escapes (hypothesis), and headers built by tests/proxy_helpers.py round-trip.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from popbox.server.proxy_header import (
    INCOMPLETE,
    PP2_CLIENT_CERT_CONN,
    V1_MAX_LENGTH,
    Command,
    Family,
    ProxyHeader,
    ProxyHeaderError,
    SslInfo,
    Tlv,
    Transport,
    parse_proxy_header,
)
from proxy_helpers import (
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_SIGNATURE,
    ssl_tlv,
    tlv,
    v1,
    v2,
    v2_local,
    v2_raw,
)

POP3 = b"USER alice\r\n"
TCP4 = (Family.INET, Transport.STREAM)


def parsed(data: bytes) -> ProxyHeader:
    result = parse_proxy_header(data)
    assert isinstance(result, ProxyHeader), result
    return result


def refused(data: bytes) -> str:
    with pytest.raises(ProxyHeaderError) as caught:
        parse_proxy_header(data)
    return str(caught.value)


# -- version 1 ---------------------------------------------------------------------------


def test_v1_tcp4_and_what_follows_it() -> None:
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert parse_proxy_header(line + POP3) == ProxyHeader(
        1, Command.PROXY, *TCP4, ("192.168.0.1", 56324), ("192.168.0.11", 443), len(line)
    )


def test_v1_tcp6_longest_line_is_104_octets() -> None:
    full = ":".join(["ffff"] * 8)
    line = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(line) == 104
    header = parsed(line)
    assert header.family is Family.INET6
    assert header.source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)


@pytest.mark.parametrize(
    ("address", "normal"),
    [
        ("2001:DB8::1", "2001:db8::1"),
        ("::ffff:127.0.0.2", "::ffff:7f00:2"),  # as inet_ntop writes a v4-mapped client
        ("::1", "::1"),
    ],
)
def test_v1_tcp6_address_forms(address: str, normal: str) -> None:
    assert parsed(f"PROXY TCP6 {address} ::1 1 2\r\n".encode()).source == (normal, 1)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n",
        # "the receiver must ignore anything presented before the CRLF"
        b"PROXY UNKNOWN \xff\x00 garbage\r\n",
        b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n",
    ],
)
def test_v1_unknown_keeps_the_real_endpoints(line: bytes) -> None:
    assert len(line) <= V1_MAX_LENGTH
    assert parse_proxy_header(line + POP3) == ProxyHeader(
        1, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, len(line)
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"USER alice\r\n", "not a PROXY protocol header"),
        (b"\x16\x03\x01\x02\x00", "not a PROXY protocol header"),  # a TLS ClientHello
        (b"PROXY\r\n", "not a PROXY protocol header"),
        (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "exactly 4 fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "exactly 4 fields"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "exactly 4 fields"),
        (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "invalid INET address"),  # octal-looking
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "invalid INET address"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "invalid INET address"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "invalid INET address"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "invalid INET6 address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "invalid INET6 address"),
        (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "invalid INET6 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "invalid port"),  # Arabic-Indic 1
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare CR or LF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "bare CR or LF"),
        (b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n", "bare CR or LF"),
        (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "bare CR or LF"),
        (b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15) + b"\r\n", "no CRLF within 107"),
        (b"PROXY TCP4 " + b"1" * 200, "no CRLF within 107"),
    ],
)
def test_v1_refused(data: bytes, reason: str) -> None:
    assert reason in refused(data)


def test_v1_refused_as_soon_as_it_cannot_be_a_header() -> None:
    """Section 2.1: "abort the connection as soon as possible"."""
    assert "not a PROXY" in refused(b"X")
    assert "not a PROXY" in refused(b"PROXX")
    assert "bare CR or LF" in refused(b"PROXY TCP4\n")
    assert parse_proxy_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r") is INCOMPLETE
    assert "no CRLF" in refused(b"PROXY " + b"A" * (V1_MAX_LENGTH - 6))
    assert parse_proxy_header(b"PROXY " + b"A" * (V1_MAX_LENGTH - 7)) is INCOMPLETE


# -- version 2 ---------------------------------------------------------------------------


def test_v2_tcp4_with_tlvs_and_what_follows_it() -> None:
    tlvs = (
        tlv(PP2_TYPE_ALPN, b"pop3")
        + tlv(PP2_TYPE_AUTHORITY, "pop.exämple.org".encode())
        + tlv(PP2_TYPE_NOOP, b"")
        + tlv(PP2_TYPE_UNIQUE_ID, b"\x00" * 128)
        + ssl_tlv(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384")
        + tlv(0xE0, b"custom")
    )
    header = v2(("203.0.113.7", 50123), ("192.0.2.1", 995), tlvs)
    result = parsed(header + POP3)
    assert (result.version, result.command, result.family, result.transport) == (2, 1, 1, 1)
    assert (result.source, result.destination) == (("203.0.113.7", 50123), ("192.0.2.1", 995))
    assert result.length == len(header)
    assert [t.type for t in result.tlvs] == [0x01, 0x02, 0x04, 0x05, 0x20, 0xE0]
    assert result.authority == "pop.exämple.org"
    assert result.client_tls
    assert result.ssl == SslInfo(
        PP2_CLIENT_SSL,
        0,
        (
            Tlv(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"),
            Tlv(PP2_SUBTYPE_SSL_CIPHER, b"TLS_AES_256_GCM_SHA384"),
        ),
    )
    assert result.ssl.text(PP2_SUBTYPE_SSL_VERSION) == "TLSv1.3"


def test_v2_tcp6() -> None:
    header = v2(("2001:db8::7", 1), ("2001:db8::1", 110))
    assert parsed(header) == ProxyHeader(
        2,
        Command.PROXY,
        Family.INET6,
        Transport.STREAM,
        ("2001:db8::7", 1),
        ("2001:db8::1", 110),
        16 + 36,
    )


@pytest.mark.parametrize(
    ("client", "tls"),
    [(PP2_CLIENT_SSL, True), (PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, True), (0, False)],
)
def test_v2_ssl_tlv_client_bit(client: int, tls: bool) -> None:
    header = v2(("203.0.113.7", 1), ("192.0.2.1", 2), ssl_tlv(client=client, version=None))
    assert parsed(header).client_tls is tls


def test_v2_without_ssl_tlv_is_not_tls() -> None:
    header = parsed(v2(("203.0.113.7", 1), ("192.0.2.1", 2)))
    assert (header.ssl, header.client_tls, header.authority) == (None, False, None)


@pytest.mark.parametrize(
    "block",
    [b"", b"\x00" * 12, b"garbage that is not addresses or TLVs"],
)
def test_v2_local_discards_the_block(block: bytes) -> None:
    """Section 2.2: LOCAL "must use the real connection endpoints and discard the protocol
    block including the family which is ignored"."""
    header = v2_local(block)
    assert parse_proxy_header(header + POP3) == ProxyHeader(
        2, Command.LOCAL, Family.UNSPEC, Transport.UNSPEC, None, None, len(header)
    )
    assert parsed(v2_raw(0x0, 0xFF, block)).command is Command.LOCAL


@pytest.mark.parametrize("family_transport", [0x00, 0x01, 0x10, 0x20, 0x30])
def test_v2_unspec_ignores_the_addresses(family_transport: int) -> None:
    header = v2_raw(0x1, family_transport, b"\x01\x02\x03")
    result = parsed(header)
    assert (result.source, result.destination, result.length) == (None, None, len(header))


def test_v2_unix_and_dgram() -> None:
    unix = parsed(v2_raw(0x1, 0x31, b"/run/a".ljust(108, b"\0") * 2 + tlv(PP2_TYPE_NOOP, b"")))
    assert (unix.family, unix.source, len(unix.tlvs)) == (Family.UNIX, None, 1)
    dgram = parsed(v2(("203.0.113.7", 1), ("192.0.2.1", 2), transport=0x2))
    assert (dgram.transport, dgram.source) == (Transport.DGRAM, ("203.0.113.7", 1))


ADDRESSES4 = bytes(12)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (V2_SIGNATURE[:5] + b"X", "not a PROXY protocol header"),
        (V2_SIGNATURE + b"\x11", "unsupported PROXY protocol version 1"),
        (V2_SIGNATURE + b"\x31", "unsupported PROXY protocol version 3"),
        (V2_SIGNATURE + b"\x22", "unassigned version 2 command 0x2"),
        (V2_SIGNATURE + b"\x2f", "unassigned version 2 command 0xf"),
        (v2_raw(0x1, 0x41, ADDRESSES4), "invalid version 2 family/protocol 0x41"),
        (v2_raw(0x1, 0x13, ADDRESSES4), "invalid version 2 family/protocol 0x13"),
        (v2_raw(0x1, 0x11, bytes(11)), "too short for INET addresses"),
        (v2_raw(0x1, 0x21, bytes(35)), "too short for INET6 addresses"),
        (v2_raw(0x1, 0x31, bytes(215)), "too short for UNIX addresses"),
        (v2_raw(0x1, 0x11, ADDRESSES4 + b"\x04"), "truncated TLV header"),
        (v2_raw(0x1, 0x11, ADDRESSES4 + b"\x04\x00"), "truncated TLV header"),
        (v2_raw(0x1, 0x11, ADDRESSES4 + b"\x04\x00\x02x"), "TLV 0x04 longer than the header"),
        (v2_raw(0x1, 0x11, ADDRESSES4 + tlv(PP2_TYPE_SSL, b"\x01\x00\x00\x00")), "shorter"),
        (
            v2_raw(0x1, 0x11, ADDRESSES4 + tlv(PP2_TYPE_SSL, bytes(5) + b"\x21\x00\x05ab")),
            "longer than the header inside PP2_TYPE_SSL",
        ),
        (v2_raw(0x1, 0x11, ADDRESSES4 + tlv(PP2_TYPE_AUTHORITY, b"\xff")), "not UTF-8"),
    ],
)
def test_v2_refused(data: bytes, reason: str) -> None:
    assert reason in refused(data)


def test_v2_length_field_bounds_the_header() -> None:
    """The header is exactly 16 + len octets: less is INCOMPLETE, more is the session's."""
    header = v2(("203.0.113.7", 1), ("192.0.2.1", 2), tlv(PP2_TYPE_NOOP, b"x" * 65000))
    assert len(header) == 16 + 12 + 3 + 65000
    assert parse_proxy_header(header[:-1]) is INCOMPLETE
    assert parsed(header + b"\r\n\r\n").length == len(header)
    largest = v2_raw(0x0, 0x00, bytes(0xFFFF))
    assert parsed(largest).length == 16 + 0xFFFF


# -- properties ---------------------------------------------------------------------------

ports = st.integers(0, 0xFFFF)
endpoints4 = st.tuples(st.ip_addresses(v=4).map(str), ports)
endpoints6 = st.tuples(st.ip_addresses(v=6).map(str), ports)
pairs = st.one_of(st.tuples(endpoints4, endpoints4), st.tuples(endpoints6, endpoints6))
plain_tlvs = st.lists(
    st.tuples(
        st.integers(0, 0xFF).filter(lambda t: t not in (PP2_TYPE_SSL, PP2_TYPE_AUTHORITY)),
        st.binary(max_size=40),
    ),
    max_size=4,
)
ssl_options = st.none() | st.tuples(
    st.integers(0, 7), st.integers(0, 0xFFFFFFFF), st.sampled_from([None, "TLSv1.2", "TLSv1.3"])
)


@given(pairs=pairs, extra=plain_tlvs, ssl=ssl_options, trailing=st.binary(max_size=64))
def test_v2_round_trip(
    pairs: tuple[tuple[str, int], tuple[str, int]],
    extra: list[tuple[int, bytes]],
    ssl: tuple[int, int, str | None] | None,
    trailing: bytes,
) -> None:
    source, destination = pairs
    tlvs = b"".join(tlv(kind, value) for kind, value in extra)
    if ssl is not None:
        tlvs += ssl_tlv(client=ssl[0], verify=ssl[1], version=ssl[2])
    header = v2(source, destination, tlvs)
    result = parsed(header + trailing)
    assert (result.source, result.destination) == (source, destination)
    assert result.length == len(header)
    assert [(t.type, t.value) for t in result.tlvs[: len(extra)]] == extra
    assert result.client_tls is (ssl is not None and bool(ssl[0] & PP2_CLIENT_SSL))
    if ssl is not None:
        assert result.ssl is not None and (result.ssl.client, result.ssl.verify) == ssl[:2]
        assert result.ssl.text(PP2_SUBTYPE_SSL_VERSION) == ssl[2]
    for cut in range(len(header)):
        assert parse_proxy_header(header[:cut]) is INCOMPLETE


@given(pairs=pairs, trailing=st.binary(max_size=64))
def test_v1_round_trip(pairs: tuple[tuple[str, int], tuple[str, int]], trailing: bytes) -> None:
    source, destination = pairs
    header = v1(source, destination)
    result = parsed(header + trailing)
    assert (result.source, result.destination) == (source, destination)
    assert result.length == len(header) <= V1_MAX_LENGTH
    for cut in range(len(header)):
        assert parse_proxy_header(header[:cut]) is INCOMPLETE


def outcome(data: bytes) -> object:
    try:
        return parse_proxy_header(data)
    except ProxyHeaderError:
        return ProxyHeaderError


@settings(max_examples=500)
@given(data=st.binary(max_size=300))
@example(data=V2_SIGNATURE + b"\x21\x11\x00\x0c")
@example(data=b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
def test_arbitrary_bytes_raise_only_the_parsers_error(data: bytes) -> None:
    outcome(data)


@settings(max_examples=500)
@given(
    base=st.sampled_from(
        [
            v1(("203.0.113.7", 50123), ("192.0.2.1", 110)),
            v1(("2001:db8::7", 1), ("2001:db8::1", 110)),
            b"PROXY UNKNOWN\r\n",
            v2(("203.0.113.7", 1), ("192.0.2.1", 2), ssl_tlv(cipher="X") + tlv(2, b"a")),
            v2(("2001:db8::7", 1), ("2001:db8::1", 2), tlv(PP2_TYPE_NOOP, b"abc")),
            v2_local(),
        ]
    ),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 200),
)
def test_mutated_headers_raise_only_the_parsers_error(
    base: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(base)
    for position, value in edits:
        if position < len(data):
            data[position] = value
    result = outcome(bytes(data[:cut]))
    if isinstance(result, ProxyHeader):
        assert result.length <= cut


@given(data=st.binary(max_size=120))
def test_prefix_verdicts_are_consistent(data: bytes) -> None:
    """Once a prefix is refused, every longer input is refused; once a header is found,
    more octets do not change it (so any chunking of the wire gives the same verdict)."""
    whole = outcome(data)
    for cut in range(len(data)):
        part = outcome(data[:cut])
        if part is ProxyHeaderError:
            assert whole is ProxyHeaderError, (data[:cut], whole)
        elif isinstance(part, ProxyHeader):
            assert whole == part


def test_v2_ssl_fixed_fields_are_big_endian() -> None:
    value = struct.pack("!BI", PP2_CLIENT_SSL, 0x01020304)
    header = v2(("203.0.113.7", 1), ("192.0.2.1", 2), tlv(PP2_TYPE_SSL, value))
    assert parsed(header).ssl == SslInfo(PP2_CLIENT_SSL, 0x01020304, ())

"""Build PROXY protocol headers (HAProxy's proxy-protocol.txt) the way a sender does.

Written from the specification with struct, independently of the parser in
popbox.server.proxy_header, so round trips check one reading of the text against another.
"""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01

Endpoint = tuple[str, int]


def v1(source: Endpoint, destination: Endpoint, protocol: str | None = None) -> bytes:
    """Section 2.1: "PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n"."""
    if protocol is None:
        protocol = "TCP6" if ":" in source[0] else "TCP4"
    return (
        f"PROXY {protocol} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    ).encode("ascii")


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def ssl_tlv(
    client: int = PP2_CLIENT_SSL,
    verify: int = 0,
    version: str | None = "TLSv1.3",
    cipher: str | None = None,
) -> bytes:
    """Section 2.2.6: PP2_TYPE_SSL with its client bits and version/cipher sub-TLVs."""
    subs = b""
    if version is not None:
        subs += tlv(PP2_SUBTYPE_SSL_VERSION, version.encode("ascii"))
    if cipher is not None:
        subs += tlv(PP2_SUBTYPE_SSL_CIPHER, cipher.encode("ascii"))
    return tlv(PP2_TYPE_SSL, struct.pack("!BI", client, verify) + subs)


def v2(
    source: Endpoint,
    destination: Endpoint,
    tlvs: bytes = b"",
    *,
    command: int = 0x1,
    transport: int = 0x1,
) -> bytes:
    """Section 2.2: the binary header for TCP (transport 1) or UDP (2) over IPv4/IPv6."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x1 if src.version == 4 else 0x2
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return v2_raw(command, family << 4 | transport, block)


def v2_local(block: bytes = b"") -> bytes:
    """A LOCAL command (a health check from the proxy itself), family UNSPEC."""
    return v2_raw(0x0, 0x00, block)


def v2_raw(command: int, family_transport: int, block: bytes, version: int = 2) -> bytes:
    return (
        V2_SIGNATURE
        + bytes([version << 4 | command, family_transport])
        + struct.pack("!H", len(block))
        + block
    )

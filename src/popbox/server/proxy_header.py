"""The PROXY protocol header, versions 1 and 2 (HAProxy's proxy-protocol.txt), sans-IO.

A proxy in front of the server (HAProxy `send-proxy`, `send-proxy-v2`) starts each
connection with one header telling who the client is. `parse_proxy_header(data)` takes the
octets received so far and returns the header, or `Incomplete` while a valid header may
still be arriving; anything that is not a valid header raises ProxyHeaderError, the
sender's fault, at the first octet that makes it invalid (section 2.1: "abort the
connection as soon as possible"). Nothing here touches a socket or a clock.

Every valid header is rejected by no prefix of itself, so the caller may feed the octets
in any chunking, and the header's `length` says where the connection's own data begins.
TLVs are kept as they came; PP2_TYPE_SSL and PP2_TYPE_AUTHORITY are decoded, and
PP2_TYPE_CRC32C is skipped like any other (checking it is optional for receivers, 2.2.3).
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from dataclasses import dataclass

# Section 2.2: the 12-octet version 2 signature, then \x2X (version 2, command X).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16  # signature, ver_cmd, fam, 16-bit length
# The 16-bit length field bounds a version 2 header to 16 + 65535 octets.
V2_MAX_LENGTH = V2_FIXED_LENGTH + 0xFFFF
# Section 2.1: "PROXY" and exactly one space; the whole line, CRLF included, is at most
# 107 octets ("PROXY UNKNOWN" with two full IPv6 addresses and ports).
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107

# Section 2.2: the registered TLV types and the PP2_TYPE_SSL client bits.
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04
TLV_HEADER_LENGTH = 3  # type, 16-bit length
SSL_TLV_FIXED_LENGTH = 5  # client (8 bits), verify (32 bits)

# Section 2.1: decimal without leading zeros; addresses in their canonical forms (IPv6 as
# inet_pton reads it, which includes a dotted IPv4 tail but no zone).
_PORT_RE = re.compile(rb"0|[1-9][0-9]{0,4}")
_IPV4_RE = re.compile(rb"[0-9.]{7,15}")
_IPV6_RE = re.compile(rb"[0-9A-Fa-f:.]{2,45}")
_LINE_END_RE = re.compile(rb"[\r\n]")


class ProxyHeaderError(Exception):
    """Not a valid PROXY protocol header: the sender's fault; close the connection."""


class Command(enum.IntEnum):
    """Section 2.2, the low 4 bits of the 13th octet (version 1 is always PROXY)."""

    LOCAL = 0x0  # the proxy's own connection (health checks): use the real endpoints
    PROXY = 0x1  # relayed on behalf of the client named in the header


class Family(enum.IntEnum):
    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


class Transport(enum.IntEnum):
    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


# Section 2.2: the address block of each family ("exactly 4/16/108 bytes each").
_ADDRESS_LENGTHS = {Family.INET: 12, Family.INET6: 36, Family.UNIX: 216}


@dataclass(frozen=True, slots=True)
class Tlv:
    """One Type-Length-Value vector of a version 2 header (section 2.2)."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class SslInfo:
    """The PP2_TYPE_SSL vector (section 2.2.6): how the client reached the proxy."""

    client: int  # PP2_CLIENT_* bits
    verify: int  # 0: the client's certificate was verified
    subtlvs: tuple[Tlv, ...] = ()

    @property
    def client_ssl(self) -> bool:
        """PP2_CLIENT_SSL: "the client connected over SSL/TLS"."""
        return bool(self.client & PP2_CLIENT_SSL)

    def text(self, subtype: int) -> str | None:
        """A sub-vector's US-ASCII string (version, cipher ...), if present."""
        for tlv in self.subtlvs:
            if tlv.type == subtype:
                return tlv.value.decode("ascii", "replace")
        return None


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int  # 1 or 2
    command: Command
    family: Family
    transport: Transport
    # (address, port) for TCP/UDP over IPv4 or IPv6; None otherwise (UNKNOWN, UNSPEC,
    # AF_UNIX, LOCAL): then the connection's own endpoints stand (section 2.1, 2.2).
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # octets of the header; the connection's own data follows
    tlvs: tuple[Tlv, ...] = ()
    ssl: SslInfo | None = None

    @property
    def client_tls(self) -> bool:
        """True when a PP2_TYPE_SSL vector says the client used TLS to reach the proxy."""
        return self.ssl is not None and self.ssl.client_ssl

    @property
    def authority(self) -> str | None:
        """PP2_TYPE_AUTHORITY (section 2.2.2): the host name the client asked for (SNI)."""
        for tlv in self.tlvs:
            if tlv.type == PP2_TYPE_AUTHORITY:
                return tlv.value.decode("utf-8")
        return None


@dataclass(frozen=True, slots=True)
class Incomplete:
    """A valid header may still be arriving: more octets are needed."""


INCOMPLETE = Incomplete()


def parse_proxy_header(data: bytes) -> ProxyHeader | Incomplete:
    """The header at the start of `data`, or INCOMPLETE; raises ProxyHeaderError."""
    if not data:
        return INCOMPLETE
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    # Section 2.2: "otherwise the protocol is not covered by this specification and the
    # connection must be dropped".
    raise ProxyHeaderError("not a PROXY protocol header")


# -- version 1 (section 2.1) ------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | Incomplete:
    if not data.startswith(V1_PREFIX):
        if V1_PREFIX.startswith(data):
            return INCOMPLETE
        raise ProxyHeaderError("not a PROXY protocol header")
    window = data[:V1_MAX_LENGTH]
    end = window.find(b"\r\n")
    # "The receiver must not tolerate a single CR or LF character to end the line."
    bare = _LINE_END_RE.search(window)
    if end == -1:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"no CRLF within {V1_MAX_LENGTH} octets (version 1)")
        if bare is not None and (bare.start() != len(data) - 1 or window[-1:] == b"\n"):
            raise ProxyHeaderError("bare CR or LF in the PROXY line (version 1)")
        return INCOMPLETE  # a final CR may be followed by its LF
    if bare is not None and bare.start() < end:
        raise ProxyHeaderError("bare CR or LF in the PROXY line (version 1)")
    line = window[len(V1_PREFIX) : end]
    length = end + 2
    protocol = line.split(b" ", 1)[0]
    if protocol == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF is found".
        return ProxyHeader(1, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, length)
    families = {b"TCP4": Family.INET, b"TCP6": Family.INET6}
    family = families.get(protocol)
    if family is None:
        raise ProxyHeaderError("version 1 protocol is not TCP4, TCP6 or UNKNOWN")
    fields = line.split(b" ")
    if len(fields) != 5:
        raise ProxyHeaderError("version 1 line needs exactly 4 fields after the protocol")
    source = (_v1_address(fields[1], family), _v1_port(fields[3]))
    destination = (_v1_address(fields[2], family), _v1_port(fields[4]))
    return ProxyHeader(1, Command.PROXY, family, Transport.STREAM, source, destination, length)


def _v1_address(text: bytes, family: Family) -> str:
    pattern = _IPV4_RE if family is Family.INET else _IPV6_RE
    try:
        if not pattern.fullmatch(text):
            raise ValueError(text)
        ip = (ipaddress.IPv4Address if family is Family.INET else ipaddress.IPv6Address)(
            text.decode("ascii")
        )
    except ValueError:
        raise ProxyHeaderError(f"invalid {family.name} address in the PROXY line") from None
    return str(ip)


def _v1_port(text: bytes) -> int:
    if not _PORT_RE.fullmatch(text) or int(text) > 0xFFFF:
        raise ProxyHeaderError("invalid port in the PROXY line (version 1)")
    return int(text)


# -- version 2 (section 2.2) ------------------------------------------------------------


def _parse_v2(data: bytes) -> ProxyHeader | Incomplete:
    signature = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        raise ProxyHeaderError("not a PROXY protocol header")
    if len(data) <= len(V2_SIGNATURE):
        return INCOMPLETE
    version_command = data[12]
    # "As of this specification, it must always be sent as \x2 and the receiver must
    # only accept this value"; other commands "must drop connections".
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"unsupported PROXY protocol version {version_command >> 4}")
    if version_command & 0x0F not in (Command.LOCAL, Command.PROXY):
        raise ProxyHeaderError(f"unassigned version 2 command {version_command & 0x0F:#x}")
    command = Command(version_command & 0x0F)
    if len(data) < V2_FIXED_LENGTH:
        return INCOMPLETE
    family_byte, block_length = data[13], struct.unpack_from("!H", data, 14)[0]
    length = V2_FIXED_LENGTH + block_length
    if command is Command.LOCAL:
        # "the receiver must accept this connection as valid and must use the real
        # connection endpoints and discard the protocol block including the family".
        if len(data) < length:
            return INCOMPLETE
        return ProxyHeader(2, command, Family.UNSPEC, Transport.UNSPEC, None, None, length)
    # Other families and protocols "must be rejected as invalid by receivers".
    try:
        family, transport = Family(family_byte >> 4), Transport(family_byte & 0x0F)
    except ValueError:
        raise ProxyHeaderError(f"invalid version 2 family/protocol {family_byte:#04x}") from None
    address_length = _ADDRESS_LENGTHS.get(family, 0)
    if transport is Transport.UNSPEC or family is Family.UNSPEC:
        address_length = 0
    if block_length < address_length:
        raise ProxyHeaderError(f"version 2 block too short for {family.name} addresses")
    if len(data) < length:
        return INCOMPLETE
    block = data[V2_FIXED_LENGTH:length]
    if family is Family.UNSPEC or transport is Transport.UNSPEC:
        # "The receiver should ignore address information": what follows is not ours to
        # read (no known address layout, so no known start of the TLVs either).
        return ProxyHeader(2, command, family, transport, None, None, length)
    source, destination = _v2_addresses(family, block)
    tlvs = _tlvs(block[address_length:], "")
    ssl = next((_ssl_info(tlv) for tlv in tlvs if tlv.type == PP2_TYPE_SSL), None)
    for tlv in tlvs:
        if tlv.type == PP2_TYPE_AUTHORITY:
            _utf8(tlv.value, "PP2_TYPE_AUTHORITY")
    return ProxyHeader(2, command, family, transport, source, destination, length, tlvs, ssl)


def _v2_addresses(
    family: Family, block: bytes
) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    if family is Family.INET:
        src, dst, src_port, dst_port = struct.unpack_from("!4s4sHH", block)
        return (
            (str(ipaddress.IPv4Address(src)), src_port),
            (str(ipaddress.IPv4Address(dst)), dst_port),
        )
    if family is Family.INET6:
        src, dst, src_port, dst_port = struct.unpack_from("!16s16sHH", block)
        return (
            (str(ipaddress.IPv6Address(src)), src_port),
            (str(ipaddress.IPv6Address(dst)), dst_port),
        )
    return None, None  # AF_UNIX paths are no client address for us


def _tlvs(data: bytes, where: str) -> tuple[Tlv, ...]:
    """A run of TLVs that must fill `data` exactly (section 2.2)."""
    found = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < TLV_HEADER_LENGTH:
            raise ProxyHeaderError(f"truncated TLV header{where}")
        kind, size = struct.unpack_from("!BH", data, offset)
        start = offset + TLV_HEADER_LENGTH
        if start + size > len(data):
            raise ProxyHeaderError(f"TLV {kind:#04x} longer than the header{where}")
        found.append(Tlv(kind, data[start : start + size]))
        offset = start + size
    return tuple(found)


def _ssl_info(tlv: Tlv) -> SslInfo:
    """Section 2.2.6: struct pp2_tlv_ssl { uint8 client; uint32 verify; sub_tlv[] }."""
    if len(tlv.value) < SSL_TLV_FIXED_LENGTH:
        raise ProxyHeaderError("PP2_TYPE_SSL shorter than its client and verify fields")
    client, verify = struct.unpack_from("!BI", tlv.value)
    subtlvs = _tlvs(tlv.value[SSL_TLV_FIXED_LENGTH:], " inside PP2_TYPE_SSL")
    return SslInfo(client, verify, subtlvs)


def _utf8(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyHeaderError(f"{name} is not UTF-8") from None

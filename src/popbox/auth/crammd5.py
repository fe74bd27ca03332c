"""Dovecot's stored CRAM-MD5 secret: the HMAC-MD5 key schedule (hmac-cram-md5.c).

Dovecot stores, instead of the password, the MD5 chaining values after the one block
key^opad (outer) and key^ipad (inner), as eight little-endian 32-bit words, outer first
(hmac_md5_get_cram_context). hashlib does not expose MD5's chaining values, hence this
RFC 1321 compression function. With the context, HMAC-MD5 (RFC 2104) of any message can be
computed without the password, which is what CRAM-MD5 SASL (RFC 2195) needs.
"""

from __future__ import annotations

import hashlib
import math
import struct

__all__ = [
    "CRAM_MD5_CONTEXT_OCTETS",
    "CramContextError",
    "cram_md5_context",
    "hmac_md5_with_context",
]


class CramContextError(ValueError):
    """A stored CRAM-MD5 context that is not 32 octets."""


CRAM_MD5_CONTEXT_OCTETS = 32
_MD5_BLOCK = 64
_MD5_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MD5_K = tuple(int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64))
_MD5_S = (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4
_MASK32 = 0xFFFFFFFF
_MD5State = tuple[int, int, int, int]


def _md5_compress(state: _MD5State, block: bytes) -> _MD5State:
    """One MD5 compression step (RFC 1321 section 3.4) over a 64-octet block."""
    words = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _MD5_K[i] + words[g]) & _MASK32
        a, d, c = d, c, b
        b = (b + ((f << _MD5_S[i]) | (f >> (32 - _MD5_S[i])))) & _MASK32
    return (
        (state[0] + a) & _MASK32,
        (state[1] + b) & _MASK32,
        (state[2] + c) & _MASK32,
        (state[3] + d) & _MASK32,
    )


def _md5_finish(state: _MD5State, data: bytes, prefix_octets: int) -> bytes:
    """MD5 digest of (prefix_octets already absorbed into `state`) + data."""
    total_bits = (prefix_octets + len(data)) * 8
    padding = b"\x80" + b"\0" * ((55 - len(data)) % _MD5_BLOCK)
    message = data + padding + struct.pack("<Q", total_bits & 0xFFFFFFFFFFFFFFFF)
    for offset in range(0, len(message), _MD5_BLOCK):
        state = _md5_compress(state, message[offset : offset + _MD5_BLOCK])
    return struct.pack("<4I", *state)


def cram_md5_context(password: bytes) -> bytes:
    """Dovecot's stored CRAM-MD5 secret (raw 32 octets) for `password`."""
    key = hashlib.md5(password).digest() if len(password) > _MD5_BLOCK else password
    key = key.ljust(_MD5_BLOCK, b"\0")  # RFC 2104 section 2, steps (1)-(2)
    inner = _md5_compress(_MD5_IV, bytes(octet ^ 0x36 for octet in key))
    outer = _md5_compress(_MD5_IV, bytes(octet ^ 0x5C for octet in key))
    return struct.pack("<8I", *outer, *inner)


def hmac_md5_with_context(context: bytes, message: bytes) -> bytes:
    """HMAC-MD5(password, message) from a stored context (CRAM-MD5 SASL, RFC 2195)."""
    if len(context) != CRAM_MD5_CONTEXT_OCTETS:
        raise CramContextError("a CRAM-MD5 context is 32 octets")
    words = struct.unpack("<8I", context)
    outer, inner = words[:4], words[4:]
    inner_digest = _md5_finish(inner, message, _MD5_BLOCK)
    return _md5_finish(outer, inner_digest, _MD5_BLOCK)

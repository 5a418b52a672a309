"""Protobuf wire-format pieces that several modules write by hand (the redact and cost
splices, the logs receiver's record encoder, the Datadog payload framer): one varint
encoder instead of five copies. Hand-written because the protobuf runtime has no public
API for encoding a bare varint."""

from __future__ import annotations

_BYTE = tuple(bytes((i,)) for i in range(128))


def encode_varint(n: int) -> bytes:
    """A non-negative int as a base-128 varint (callers pass negatives as their 64-bit
    two's complement)."""
    if n < 128:
        return _BYTE[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)

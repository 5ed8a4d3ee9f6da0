"""The CBOR helpers the wire format shares: exact decoding and byte-string heads."""

from __future__ import annotations

import io
from typing import Any

import cbor2

from .errors import MalformedEnvelope


def loads_exact(data: bytes) -> Any:
    """cbor2.loads that rejects trailing bytes (loads silently ignores them)."""
    fp = io.BytesIO(data)
    obj = cbor2.CBORDecoder(fp).decode()
    if fp.tell() != len(data):
        raise MalformedEnvelope("trailing bytes after the CBOR item")
    return obj


def bstr_head(n: int) -> bytes:
    """CBOR major type 2 header for a byte string of length n."""
    if n < 24:
        return bytes((0x40 | n,))
    if n < 0x100:
        return bytes((0x58, n))
    if n < 0x10000:
        return b"\x59" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\x5a" + n.to_bytes(4, "big")
    return b"\x5b" + n.to_bytes(8, "big")


def array_head(n: int) -> bytes:
    """CBOR major type 4 header for an array of n items (n < 65536)."""
    return bytes((0x80 | n,)) if n < 24 else b"\x98" + bytes((n,)) if n < 0x100 \
        else b"\x99" + n.to_bytes(2, "big")

"""A-XDR decoding of COSEM ``Data`` (IEC 62056-6-2 / Green Book §9.5), for pushed
notifications: our own strict walker instead of gurux's, so that a structure shorter than
its declared count, trailing bytes or an unknown tag are errors (gurux returns what it
got), and every failure is a :class:`DlmsError` (never IndexError/TypeError/ValueError).

Values come out as plain Python: array -> ``list``, structure -> ``tuple``, integers ->
``int`` (enum -> :class:`EnumValue`, an ``int``), octet-string -> ``bytes``,
visible/utf8-string -> ``str``, float32/64 -> ``float``, bit-string -> :class:`BitString`,
date-time/date/time -> :class:`CosemTime` (its raw bytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

from . import DlmsError

MAX_DEPTH: Final = 16

NULL, ARRAY, STRUCTURE, BOOLEAN, BIT_STRING = 0, 1, 2, 3, 4
OCTET_STRING, VISIBLE_STRING, UTF8_STRING, BCD = 9, 10, 12, 13
COMPACT_ARRAY, ENUM, DATE_TIME, DATE, TIME = 19, 22, 25, 26, 27

# tag -> (size, struct format) of fixed-size numbers
_FIXED: Final[dict[int, tuple[int, str]]] = {
    5: (4, ">i"), 6: (4, ">I"), 15: (1, ">b"), 16: (2, ">h"), 17: (1, ">B"), 18: (2, ">H"),
    20: (8, ">q"), 21: (8, ">Q"), 23: (4, ">f"), 24: (8, ">d"),
}
_TIME_SIZES: Final = {DATE_TIME: 12, DATE: 5, TIME: 4}


class EnumValue(int):
    """An ``enum`` (tag 22): an int, told apart from an integer where it matters (units)."""


@dataclass(frozen=True, slots=True)
class BitString:
    bits: int
    data: bytes

    def __str__(self) -> str:
        return "".join(f"{b:08b}" for b in self.data)[:self.bits]


@dataclass(frozen=True, slots=True)
class CosemTime:
    """A tagged date-time (12 bytes), date (5) or time (4), raw."""

    raw: bytes


def decode_length(data: bytes, pos: int) -> tuple[int, int]:
    """(length, position after it) of an A-XDR length at ``pos``."""
    if pos >= len(data):
        raise DlmsError("A-XDR data truncated in a length field")
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    size = first & 0x7F
    if not 1 <= size <= 4 or pos + 1 + size > len(data):
        raise DlmsError(f"bad A-XDR length prefix {first:02X}")
    return int.from_bytes(data[pos + 1:pos + 1 + size], "big"), pos + 1 + size


def decode(data: bytes, pos: int = 0, depth: int = 0) -> tuple[Any, int]:
    """One ``Data`` value at ``pos``; returns it and the position after it."""
    if depth > MAX_DEPTH:
        raise DlmsError(f"A-XDR data nested deeper than {MAX_DEPTH} levels")
    if pos >= len(data):
        raise DlmsError("A-XDR data truncated: a value is missing")
    tag = data[pos]
    pos += 1
    if tag in _FIXED:
        size, fmt = _FIXED[tag]
        _need(data, pos, size, tag)
        return struct.unpack_from(fmt, data, pos)[0], pos + size
    if tag in (ARRAY, STRUCTURE):
        count, pos = decode_length(data, pos)
        if count > len(data) - pos:  # every element takes at least one byte
            raise DlmsError(f"{'array' if tag == ARRAY else 'structure'} declares {count} "
                            f"elements, only {len(data) - pos} bytes follow")
        items = []
        for i in range(count):
            if pos >= len(data):
                raise DlmsError(f"{'array' if tag == ARRAY else 'structure'} of {count} "
                                f"elements truncated after {i}")
            v, pos = decode(data, pos, depth + 1)
            items.append(v)
        return (items if tag == ARRAY else tuple(items)), pos
    if tag in (OCTET_STRING, VISIBLE_STRING, UTF8_STRING):
        n, pos = decode_length(data, pos)
        _need(data, pos, n, tag)
        raw = data[pos:pos + n]
        if tag == OCTET_STRING:
            return bytes(raw), pos + n
        text = raw.decode("latin-1") if tag == VISIBLE_STRING else raw.decode("utf-8", "replace")
        return text, pos + n
    if tag == NULL:
        return None, pos
    if tag == BOOLEAN:
        _need(data, pos, 1, tag)
        return data[pos] != 0, pos + 1
    if tag in (ENUM, BCD):
        _need(data, pos, 1, tag)
        return (EnumValue(data[pos]) if tag == ENUM else data[pos]), pos + 1
    if tag == BIT_STRING:
        bits, pos = decode_length(data, pos)
        n = (bits + 7) // 8
        _need(data, pos, n, tag)
        return BitString(bits, bytes(data[pos:pos + n])), pos + n
    if tag in _TIME_SIZES:
        n = _TIME_SIZES[tag]
        _need(data, pos, n, tag)
        return CosemTime(bytes(data[pos:pos + n])), pos + n
    if tag == COMPACT_ARRAY:
        raise DlmsError("compact-array data (tag 19) is not supported")
    raise DlmsError(f"unknown A-XDR data tag {tag} (0x{tag:02X})")


def _need(data: bytes, pos: int, n: int, tag: int) -> None:
    if pos + n > len(data):
        raise DlmsError(f"A-XDR value (tag {tag}) truncated: needs {n} bytes, "
                        f"{len(data) - pos} left")


def decode_all(data: bytes, pos: int = 0) -> Any:
    """Exactly one value from ``pos`` to the end: trailing bytes are an error."""
    v, end = decode(data, pos)
    if end != len(data):
        raise DlmsError(f"{len(data) - end} bytes after the end of the data")
    return v

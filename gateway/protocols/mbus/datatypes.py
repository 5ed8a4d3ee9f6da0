"""M-Bus data types (EN 13757-3 Annex A): dates G/F/I/J, BCD and 32-bit reals.

Value extraction only, apart from the record walk in :mod:`.records`: each function turns
one record's data bytes into a value, or None where the bytes are no valid value.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal


def _year(y: int) -> int:
    return 2000 + y if y < 81 else 1900 + y


def _valid_date(y: int, m: int, d: int) -> bool:
    if not (1 <= m <= 12 and 1 <= d <= 31):
        return False
    if d <= 28:
        return True
    mdays = (31, 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28, 31, 30, 31, 30,
             31, 31, 30, 31, 30, 31)[m - 1]
    return d <= mdays


def _date(lo: int, hi: int) -> str | None:
    """The date bytes G, F and I share: day and low year bits, then month and high year bits."""
    day, month = lo & 0x1F, hi & 0x0F
    year = _year(((lo & 0xE0) >> 5) | ((hi & 0xF0) >> 1))
    if not _valid_date(year, month, day):
        return None
    return f"{year:04d}-{month:02d}-{day:02d}"


def decode_date_g(b: bytes) -> str | None:
    """Type G: 16-bit date. None if invalid (all ones, day or month zero)."""
    return _date(b[0], b[1])


def decode_datetime_f(b: bytes) -> str | None:
    """Type F: 32-bit date and time to the minute; None if the IV bit says invalid."""
    if b[0] & 0x80:
        return None
    minute, hour, date = b[0] & 0x3F, b[1] & 0x1F, _date(b[2], b[3])
    if minute > 59 or hour > 23 or date is None:
        return None
    return f"{date}T{hour:02d}:{minute:02d}"


def decode_datetime_i(b: bytes) -> str | None:
    """Type I: 48-bit date and time to the second."""
    if b[1] & 0x80:
        return None
    second, minute, hour, date = b[0] & 0x3F, b[1] & 0x3F, b[2] & 0x1F, _date(b[3], b[4])
    if second > 59 or minute > 59 or hour > 23 or date is None:
        return None
    return f"{date}T{hour:02d}:{minute:02d}:{second:02d}"


def decode_time_j(b: bytes) -> str | None:
    """Type J: 24-bit time of day."""
    second, minute, hour = b[0] & 0x3F, b[1] & 0x3F, b[2] & 0x1F
    if second > 59 or minute > 59 or hour > 23:
        return None
    return f"{hour:02d}:{minute:02d}:{second:02d}"


_DATE_DECODERS = {2: ("date", decode_date_g), 4: ("datetime", decode_datetime_f),
                  6: ("datetime", decode_datetime_i), 3: ("time", decode_time_j)}


def decode_bcd(b: bytes) -> int | None:
    """Type A, little-endian; a high nibble F marks a negative value. None if not BCD."""
    if not b:
        return None  # LVAR 0xC0/0xD0: no digits at all
    s = b[::-1].hex()
    neg = s[0] == "f"
    if neg:
        s = s[1:]
    if not s.isdigit():
        return None if s else (0 if neg else None)
    v = int(s)
    return -v if neg else v


def _bcd_error(raw: bytes) -> str:
    return "invalid BCD " + raw[::-1].hex().upper() if raw else "BCD of zero length"


def decode_real(b: bytes) -> tuple[int, int] | None:
    """Type H (float32) as the shortest decimal that is the same float32; None if NaN/inf."""
    (f,) = struct.unpack("<f", b)
    if not math.isfinite(f):
        return None
    for p in range(1, 10):
        s = f"{f:.{p}g}"
        if struct.pack("<f", float(s)) == b:
            break
    sign, digits, exp = Decimal(s).as_tuple()
    m = int("".join(map(str, digits)))
    return (-m if sign else m), int(exp)

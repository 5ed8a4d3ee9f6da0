"""COSEM values as the gateway needs them: OBIS text, unit symbols, exact scaled values and
date-times as UTC milliseconds. gurux parses the A-XDR; these tables only name things.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

from ...model import to_decimal
from . import DlmsError

# DLMS Blue Book (IEC 62056-6-2) §4.3.2 unit enumeration -> symbol. 255 = count (no unit).
UNITS: Final[dict[int, str]] = {
    1: "a", 2: "mo", 3: "wk", 4: "d", 5: "h", 6: "min", 7: "s", 8: "°", 9: "°C", 10: "currency",
    11: "m", 12: "m/s", 13: "m3", 14: "m3", 15: "m3/h", 16: "m3/h", 17: "m3/d", 18: "m3/d",
    19: "l", 20: "kg", 21: "N", 22: "Nm", 23: "Pa", 24: "bar", 25: "J", 26: "J/h", 27: "W",
    28: "VA", 29: "var", 30: "Wh", 31: "VAh", 32: "varh", 33: "A", 34: "C", 35: "V", 36: "V/m",
    37: "F", 38: "Ω", 39: "Ωm2/m", 40: "Wb", 41: "T", 42: "A/m", 43: "H", 44: "Hz",
    45: "1/(Wh)", 46: "1/(varh)", 47: "1/(VAh)", 48: "V2h", 49: "A2h", 50: "kg/s", 51: "S",
    52: "K", 53: "1/(V2h)", 54: "1/(A2h)", 55: "1/m3", 56: "%", 57: "Ah", 60: "Wh/m3",
    61: "J/m3", 62: "Mol %", 63: "g/m3", 64: "Pa s", 65: "J/kg", 70: "dBm", 71: "dBμV",
    72: "dB", 253: "", 254: "", 255: "",
}

# Unit implied by the OBIS value group C (quantity) and D (processing) when a push list
# carries bare values (Kamstrup, Kaifa): IEC 62056-6-1 §5.4 / §5.5.
_C_ACTIVE = {1, 2, 15, 16, 21, 22, 41, 42, 61, 62}
_C_REACTIVE = {3, 4, 5, 6, 7, 8, 23, 24, 43, 44, 63, 64}
_C_APPARENT = {9, 10, 29, 30, 49, 50, 69, 70}
_C_CURRENT = {11, 31, 51, 71, 91}
_C_VOLTAGE = {12, 32, 52, 72}
_D_ENERGY = {8, 9, 10, 29}
_D_POWER = {4, 5, 6, 7, 14, 15, 16, 24, 25, 26, 27}


def implied_unit(obis: bytes) -> str | None:
    """The unit an electricity OBIS code implies, or None (not electricity / unknown)."""
    if len(obis) != 6 or obis[0] != 1:
        return None
    c, d = obis[2], obis[3]
    if c in _C_CURRENT:
        return "A"
    if c in _C_VOLTAGE:
        return "V"
    if c == 14:
        return "Hz"
    for group, power, energy in ((_C_ACTIVE, "W", "Wh"), (_C_REACTIVE, "var", "varh"),
                                 (_C_APPARENT, "VA", "VAh")):
        if c in group:
            if d in _D_ENERGY:
                return energy
            if d in _D_POWER:
                return power
    return None


def obis_text(ln: Any) -> str:
    """6-byte logical name (bytes or gurux's "a.b.c.d.e.f") -> ``A-B:C.D.E`` (``*F`` if F != 255)."""
    if isinstance(ln, str):
        parts = [int(p) for p in ln.split(".")]
    else:
        parts = list(bytes(ln))
    if len(parts) != 6 or not all(0 <= p <= 255 for p in parts):
        raise DlmsError(f"not an OBIS code: {ln!r}")
    a, b, c, d, e, f = parts
    text = f"{a}-{b}:{c}.{d}.{e}"
    return text if f == 255 else f"{text}*{f}"


def obis_bytes(text: str) -> bytes:
    """``1-0:1.8.0`` / ``1-0:1.8.0*255`` / ``1.0.1.8.0.255`` -> 6 bytes."""
    t = text.strip()
    try:
        if "-" in t or ":" in t:
            ab, _, cde = t.partition(":")
            a, _, b = ab.partition("-")
            cde, _, f = cde.partition("*")
            c, d, e = cde.split(".")
            parts = [int(a), int(b), int(c), int(d), int(e), int(f) if f else 255]
        else:
            parts = [int(p) for p in t.split(".")]
            if len(parts) == 5:
                parts.append(255)
        if len(parts) != 6 or not all(0 <= p <= 255 for p in parts):
            raise ValueError
    except ValueError:
        raise ValueError(f"not an OBIS code: {text!r} (expected e.g. 1-0:1.8.0)") from None
    return bytes(parts)


def gurux_ln(text: str) -> str:
    """OBIS text -> gurux's logical-name notation ``1.0.1.8.0.255``."""
    return ".".join(str(b) for b in obis_bytes(text))


def scaled(value: Any, scaler: int) -> tuple[int, int] | None:
    """(mantissa, exponent) of a raw COSEM value times 10**scaler, exactly; None if the
    value is not a number. Floats (float32/64 registers) go through their shortest repr,
    the value the meter meant, rather than their binary expansion; NaN and infinities are
    not numbers."""
    if isinstance(value, bool):
        return int(value), 0
    if isinstance(value, int):
        return int(value), scaler
    if isinstance(value, float):
        sign, digits, exp = Decimal(repr(value)).as_tuple()
        if not isinstance(exp, int):
            return None
        m = int("".join(map(str, digits)) or "0")
        return (-m if sign else m), exp + scaler
    if isinstance(value, (str, bytes, bytearray, list, tuple)) or value is None:
        return None
    try:  # gurux's GXInt8/GXUInt32... wrappers (the polled client)
        return int(value), scaler
    except (TypeError, ValueError, OverflowError):
        return None


def exact(mantissa: int, exponent: int) -> Decimal:
    """mantissa * 10**exponent as a Decimal, exactly at any length (the model's one
    conversion: ``Decimal.scaleb`` would round to the context's 28 digits)."""
    return to_decimal(mantissa, exponent)


# gurux DateTimeSkips YEAR | MONTH | DAY | HOUR | MINUTE: a time that cannot be placed
_GURUX_SKIPS_UNPLACEABLE: Final = 0x01 | 0x02 | 0x04 | 0x10 | 0x20
DEVIATION_UNSPECIFIED: Final = -0x8000
MAX_DEVIATION_MIN: Final = 15 * 60  # UTC-12 .. UTC+14, with room; beyond: not a deviation


def datetime_ms(raw: Any, default_tz: str = "UTC") -> int | None:
    """COSEM date-time (12-byte octet-string, Blue Book §4.1.6.1) -> UTC epoch ms.

    Deviation is "UTC minus local time" in minutes, per the Blue Book; 0x8000 means not
    specified, and the meter's local time is then read in ``default_tz``. A deviation no
    time zone has (e.g. 0x8001, which some meters send for "not specified") is read the
    same way rather than refused. Returns None for a date-time with unspecified fields
    (0xFF), which cannot be placed on a time line. Raises only DlmsError.
    """
    if hasattr(raw, "value") and isinstance(getattr(raw, "value"), dt.datetime):
        # gurux already turned it into a datetime (the polled client)
        if int(getattr(raw, "skip", 0) or 0) & _GURUX_SKIPS_UNPLACEABLE:
            return None  # gurux put 2000-01-01 00:00 where the meter said "not specified"
        v = raw.value
        if v.tzinfo is None:  # deviation not specified: the meter's local time
            v = v.replace(tzinfo=ZoneInfo(default_tz))
        return int(v.timestamp() * 1000)
    try:
        b = bytes(getattr(raw, "raw", raw))
    except (TypeError, ValueError):
        raise DlmsError(f"not a COSEM date-time: {raw!r}"[:120]) from None
    if len(b) != 12:
        raise DlmsError(f"a COSEM date-time is 12 bytes, got {len(b)}")
    year = int.from_bytes(b[0:2], "big")
    month, day, _dow, hour, minute, second, hundredths = b[2:9]
    deviation = int.from_bytes(b[9:11], "big", signed=True)
    if year == 0xFFFF or 0xFF in (month, day, hour, minute, second) or month > 12:
        return None
    if hundredths > 99:  # 0xFF = not specified
        hundredths = 0
    try:
        local = dt.datetime(year, month, day, hour, minute, second, hundredths * 10_000)
        if deviation == DEVIATION_UNSPECIFIED or abs(deviation) > MAX_DEVIATION_MIN:
            aware = local.replace(tzinfo=ZoneInfo(default_tz))
            return int(aware.timestamp() * 1000)
        utc = local.replace(tzinfo=dt.timezone.utc) + dt.timedelta(minutes=deviation)
        return int(utc.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise DlmsError(f"invalid COSEM date-time {b.hex()}") from None


def datetime_bytes(ms: int) -> bytes:
    """UTC epoch ms -> COSEM date-time with deviation 0 (for setting a meter's clock)."""
    t = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return (t.year.to_bytes(2, "big") + bytes([t.month, t.day, t.isoweekday(), t.hour,
                                                 t.minute, t.second, t.microsecond // 10_000])
            + (0).to_bytes(2, "big") + b"\x00")

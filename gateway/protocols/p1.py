"""DSMR / IEC 62056-21 mode D "P1" push telegrams, sans-I/O: bytes in, typed values out.

A telegram is ``/XXXZident CRLF CRLF data-lines ! [CRC16] CRLF``; the CRC is CRC-16/ARC
over ``/`` through ``!`` written as hex digits (a meter that drops leading zeros writes
fewer than 4: they are zero-padded and still checked). Whatever follows the CRC line (a
P1 splitter's or a meter's trailing noise) is not part of the telegram and is ignored.

Each data line is ``obis(group)(group)...``; what the groups mean is told by their shape,
as DSMR, Fluvius and the Nordic/Austrian P1 variants write them:

* ``(value*unit)``: a register.
* ``(YYMMDDhhmmssX)(value*unit)``: a value captured at a time (DSMR 4/5 hourly gas
  ``0-n:24.2.1``, Fluvius peak demand ``1-0:1.6.0``, heat/water channels). X is W (winter,
  UTC+1) or S (summer, UTC+2), so the instant is known.
* ``(ts)(status)(interval)(n)(obis)(unit)`` with ``(value)`` on the next line: the DSMR
  2.2/3 gas profile ``0-n:24.3.0``; a line that starts with ``(`` continues the previous.
* ``(n)(obis)...(entries)``: a buffer (power failure log ``1-0:99.97.0``, Fluvius monthly
  peaks ``0-0:98.1.0``): its count n, then one value per entry, flagged ``buffer``.

Values stay exact (Decimal built from the digits, never through a context that rounds).
Timestamps without a W/S flag (DSMR 2.2/3) are read in ``tz`` (default Europe/Amsterdam,
where those meters are). Bad input raises :class:`P1Error` (an ``Iec62056Error``;
``BccError`` for a CRC mismatch) and nothing else.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from .iec62056_text import (  # noqa: F401  (re-exported: P1's public names)
    MAX_TELEGRAM, BccError, Identification, Iec62056Error, P1Error, _show, frame_telegram,
)

DEFAULT_TZ: Final = "Europe/Amsterdam"
_FLAG_OFFSET: Final = {"W": dt.timedelta(hours=1), "S": dt.timedelta(hours=2)}

_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
_TST = re.compile(r"(\d{12})([WS]?)")
_OBIS = re.compile(r"\d{1,3}-\d{1,3}:\d{1,3}\.\d{1,3}\.\d{1,3}(\*\d{1,3})?")
_GROUP = re.compile(r"\(([^()]*)\)")


@dataclass(frozen=True, slots=True)
class P1Value:
    """One value of a data line.

    ``value`` is the exact number (None for text: identifiers and tariff codes are also
    numbers when they are digits); ``text`` the group as sent, without the unit. ``ts_ms``
    is the value's own capture time (gas, peaks), not the telegram's. ``source`` names the
    object the line says it captured (DSMR 2.2/3 ``24.3.0``, buffers). ``buffer``: an entry
    of a log or history buffer, not the current value of a register.
    """

    obis: str
    value: Decimal | None
    text: str
    unit: str
    ts_ms: int | None = None
    source: str = ""
    buffer: bool = False

    def exact(self) -> tuple[int, int] | None:
        """(mantissa, exponent) of the value, or None for text."""
        if self.value is None:
            return None
        sign, digits, exp = self.value.as_tuple()
        mantissa = int("".join(map(str, digits)) or "0")
        return (-mantissa if sign else mantissa), int(exp)


@dataclass(frozen=True, slots=True)
class P1Telegram:
    identification: Identification
    values: tuple[P1Value, ...]
    check: str                # "crc16" when a CRC was present and verified, else "none"
    meter_ts_ms: int | None   # the telegram's own time stamp (0-0:1.0.0), if any

    def get(self, obis: str) -> P1Value | None:
        """The first (non-buffer) value of a data line; else the value a line says it
        captured from that object (DSMR 2.2/3: ``0-1:24.3.0`` holds ``0-1:24.2.1``)."""
        current = [v for v in self.values if not v.buffer]
        return next((v for v in current if v.obis == obis), None) or \
            next((v for v in current if v.source == obis), None)


def exact_text(value: Decimal) -> str:
    """A Decimal as plain digits, exactly (format() does not round; scaleb would)."""
    return format(value, "f")


def parse_p1(data: bytes, tz: dt.tzinfo | str | None = None) -> P1Telegram:
    """Parse one P1 telegram (bytes from ``/`` to past ``!CRC``; leading line ends and
    trailing lines are ignored). Raises P1Error / BccError."""
    ident, body, check = frame_telegram(data)
    zone = _zone(tz)
    values = _values(body.decode("latin-1"), zone)
    stamp = next((v for v in values if v.obis in ("0-0:1.0.0", "0-0:1.0.0*255")), None)
    meter_ts = _timestamp(stamp.text, zone) if stamp is not None else None
    return P1Telegram(ident, tuple(values), check, meter_ts)


def interpret(obis: str, groups: list[str] | tuple[str, ...],
              tz: dt.tzinfo | str | None = None) -> list[P1Value]:
    """The values of one data line ``obis(group)(group)...`` by the shape of its groups
    (for readouts of modes A-C, whose data sets take the same shapes)."""
    return _interpret(obis, list(groups), _zone(tz))


def parse_timestamp(text: str, tz: dt.tzinfo | str | None = None) -> int | None:
    """``YYMMDDhhmmss[W|S]`` -> ms since the epoch (UTC); None if it is not a valid time."""
    return _timestamp(text, _zone(tz))


# --------------------------------------------------------------------------- internals

def _zone(tz: dt.tzinfo | str | None) -> dt.tzinfo:
    if isinstance(tz, dt.tzinfo):
        return tz
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(tz or DEFAULT_TZ)
    except Exception:  # no tz database on a stripped-down image: CET without DST
        return dt.timezone(dt.timedelta(hours=1))


def _timestamp(text: str, zone: dt.tzinfo) -> int | None:
    m = _TST.fullmatch(text.strip())
    if m is None:
        return None
    d = m[1]
    try:
        local = dt.datetime(2000 + int(d[0:2]), int(d[2:4]), int(d[4:6]), int(d[6:8]),
                            int(d[8:10]), int(d[10:12]))
    except ValueError:
        return None  # placeholders such as 632525252525W
    if m[2]:
        when = local.replace(tzinfo=dt.timezone(_FLAG_OFFSET[m[2]]))
    else:
        when = local.replace(tzinfo=zone)
    return int(when.timestamp()) * 1000


def _is_tst(g: str) -> bool:
    return _TST.fullmatch(g) is not None


def _number(text: str) -> Decimal | None:
    t = text.strip()
    return Decimal(t) if _NUMBER.fullmatch(t) else None  # Decimal(str) is exact


def _value(obis: str, group: str, ts: int | None = None, source: str = "",
           buffer: bool = False) -> P1Value:
    text, _, unit = group.partition("*")
    return P1Value(obis, _number(text), text, unit, ts, source, buffer)


def _lines(body: str) -> list[tuple[str, list[str]]]:
    """(obis, groups) per data line; a line starting with '(' continues the previous one."""
    out: list[tuple[str, list[str]]] = []
    for raw_line in body.split("\n"):
        line = raw_line.strip("\r ")
        if not line:
            continue
        paren = line.find("(")
        if paren < 0:
            continue  # not a data line
        address, rest = line[:paren].strip(), line[paren:]
        groups: list[str] = []
        pos = 0
        for m in _GROUP.finditer(rest):
            if m.start() != pos:
                break
            groups.append(m[1])
            pos = m.end()
        if not groups:
            continue
        if not address:
            if out:
                out[-1][1].extend(groups)
            continue
        out.append((address, groups))
    return out


def _values(body: str, zone: dt.tzinfo) -> list[P1Value]:
    out: list[P1Value] = []
    for obis, g in _lines(body):
        out += _interpret(obis, g, zone)
    return out


def _interpret(obis: str, g: list[str], zone: dt.tzinfo) -> list[P1Value]:
    if len(g) == 2 and _is_tst(g[0]):
        return [_value(obis, g[1], _timestamp(g[0], zone))]  # value at a time
    if (len(g) >= 7 and _is_tst(g[0]) and _OBIS.fullmatch(g[4]) and "*" not in g[6]
            and _number(g[6]) is not None):
        # DSMR 2.2/3 profile: (ts)(status)(interval)(n)(obis)(unit)(value)
        v = _number(g[6])
        return [P1Value(obis, v, g[6], g[5], _timestamp(g[0], zone), g[4])]
    if len(g) >= 2 and g[0].isdigit() and _OBIS.fullmatch(g[1]):
        return _buffer(obis, g, zone)
    return [_value(obis, g[0])]


def _buffer(obis: str, g: list[str], zone: dt.tzinfo) -> list[P1Value]:
    """``(n)(obis)...(entries)``: the count n (the line's own value, unitless), then n
    entries of equal width, each ending in its value and carrying its time in the last
    time stamp before it. A count that does not fit the groups gives no entries (they are
    kept out rather than misread)."""
    n = int(g[0])
    k = 1
    while k < len(g) and _OBIS.fullmatch(g[k]):
        k += 1
    sources, rest = g[1:k], g[k:]
    out = [P1Value(obis, Decimal(n), g[0], "")]
    if n == 0 or not rest or len(rest) % n:
        return out
    width = len(rest) // n
    for i in range(n):
        entry = rest[i * width:(i + 1) * width]
        ts = next((_timestamp(x, zone) for x in reversed(entry[:-1]) if _is_tst(x)), None)
        out.append(_value(obis, entry[-1], ts, sources[-1], buffer=True))
    return out

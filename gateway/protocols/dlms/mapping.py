"""Notification bodies -> exact OBIS values: the four body shapes HAN meters push.

* ``structure{obis, value, structure{scaler, unit}}...`` (Aidon, most IDIS meters): exact;
* a flat ``obis, value, obis, value...`` list (Kamstrup): the unit follows from the OBIS
  code, the scaler from the list's table (:data:`LIST_SCALERS`) or the config;
* a push object list first (E360, AM550): ``array{structure{class, obis, attribute,
  data index}}`` names each following element;
* bare values without OBIS codes (Kaifa; IM350/Wels after a list identifier 0-x:25.9.0):
  by position, from a configured OBIS list.

Pure functions on the values :mod:`.axdr` decodes; a body that contradicts itself is a
DlmsError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Iterable, Mapping, Sequence

from ...model import Reading
from . import DlmsError, axdr
from .values import UNITS, datetime_ms, implied_unit, obis_bytes, obis_text, scaled

# Scalers of lists that carry bare values, keyed by the list's version string (first
# element). Kamstrup HAN (NO/DK, "Kamstrup_V0001"): currents in 0.01 A, energies in
# 10 Wh (amshan's Kamstrup decoder, and Kamstrup's HAN interface description).
LIST_SCALERS: Final[dict[str, dict[tuple[int, int], int]]] = {
    "Kamstrup_V0001": {(31, 7): -2, (51, 7): -2, (71, 7): -2,
                       (1, 8): 1, (2, 8): 1, (3, 8): 1, (4, 8): 1},
}



@dataclass(frozen=True, slots=True)
class Value:
    """One mapped value before it becomes a Reading."""

    obis: str
    mantissa: int
    exponent: int
    unit: str



def clock_in_body(body: Any, tz: str = "UTC") -> int | None:
    """The meter time a body carries as its Clock object (0-x:1.0.0 attribute 2, a
    12-byte date-time), in any of the body shapes; None if it has none (or an invalid one:
    the values stand without a meter time)."""
    items = list(body) if isinstance(body, (list, tuple)) else [body]
    raw = None
    if items and _is_object_list(items[0]):
        defs = items[0]
        values = items if defs[0][0] == 40 and defs[0][2] == 2 else items[1:]
        raw = next((v for d, v in zip(defs, values) if d[0] == 8 and d[2] == 2), None)
    else:
        for i, it in enumerate(items):
            if _has_obis(it) and _is_clock(it[0]):
                raw = it[1]
            elif _is_clock(it) and i + 1 < len(items):
                raw = items[i + 1]
            if raw is not None:
                break
    if not isinstance(raw, bytes) or len(raw) != 12:
        return None
    try:
        return datetime_ms(raw, tz)
    except DlmsError:
        return None


def _is_clock(x: Any) -> bool:
    return _is_obis(x) and x[0] == 0 and x[2] == 1 and x[3] == 0



def notification_values(n: Any, scalers: Mapping[str, int] | None = None,
                        positional: Sequence[str] = ()) -> list[Value]:
    """The numeric OBIS values of a notification, whichever shape it came in."""
    if n.telegram is not None:
        return p1_values(n.telegram)
    return map_body(n.body, scalers, positional)


def p1_values(telegram: Any) -> list[Value]:
    """Numbers with a unit from a P1 telegram (as the P1 driver maps them: dates, serial
    numbers, unitless counters and buffer entries are not registers)."""
    from ..iec62056_21 import normalise_obis
    out = []
    for v in telegram.values:
        ex = v.exact()
        if ex is None or not v.unit or v.buffer:
            continue
        out.append(Value(normalise_obis(v.obis, "1-0:"), ex[0], ex[1], v.unit))
    return out


def map_body(body: Any, scalers: Mapping[str, int] | None = None,
             positional: Sequence[str] = ()) -> list[Value]:
    """Numeric OBIS values of a notification body, scaled exactly. Raises DlmsError for a
    body whose layout contradicts itself (a push object list that does not match the
    values, a scaler_unit that is not {integer, enum})."""
    scalers = dict(scalers or {})
    items = list(body) if isinstance(body, (list, tuple)) else [body]
    out: list[Value] = []
    list_scalers: dict[tuple[int, int], int] = {}
    if items and isinstance(items[0], str) and items[0] in LIST_SCALERS:
        list_scalers = LIST_SCALERS[items[0]]
    if items and _is_object_list(items[0]):
        return _map_object_list(items, scalers)
    if _is_list_id(items[0] if items else None) or \
            not any(_is_obis(x) or _has_obis(x) for x in items):
        # Kaifa: values by position; IM350/Wels: the same after a list identifier
        for obis, value in zip(positional, items):
            _append(out, obis_bytes(obis), value, None, scalers, list_scalers)
        return out
    i = 0
    while i < len(items):
        it = items[i]
        if _has_obis(it):  # structure{obis, value[, structure{scaler, unit}]}
            s = list(it)
            _append(out, bytes(s[0]), s[1], s[2] if len(s) > 2 else None, scalers, list_scalers)
            i += 1
        elif _is_obis(it) and i + 1 < len(items):
            nxt = items[i + 1]
            su = None
            step = 2
            if i + 2 < len(items) and _looks_scaler_unit(items[i + 2]):
                su, step = items[i + 2], 3
            _append(out, bytes(it), nxt, su, scalers, list_scalers)
            i += step
        else:
            i += 1
    return out


def _is_obis(x: Any) -> bool:
    return isinstance(x, (bytes, bytearray)) and len(x) == 6


def _has_obis(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) >= 2 and _is_obis(x[0])


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _looks_scaler_unit(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and _is_int(x[0]) and _is_int(x[1])


def _is_list_id(x: Any) -> bool:
    """The logical name of a Push setup object (0-x:25.9.0) sent as the list's first
    element: it says which list this is, it is no value."""
    return _is_obis(x) and x[2] == 25 and x[3] == 9


def _is_object_list(x: Any) -> bool:
    """array{structure{class-id, logical-name, attribute-index, data-index[, restriction,
    columns]}}: the push object list (Push setup attribute 2; the 6-element form is the
    Blue Book's version 1 capture object definition)."""
    return isinstance(x, list) and bool(x) and all(
        isinstance(d, tuple) and len(d) in (3, 4, 6) and _is_int(d[0]) and _is_obis(d[1])
        and all(_is_int(v) for v in d[2:4]) for d in x)


# class id -> attribute holding the scaler_unit: Register, Extended Register, Demand Register
_SCALER_UNIT_ATTR: Final = {3: 3, 4: 3, 5: 4}


def _map_object_list(items: list[Any], scalers: Mapping[str, int]) -> list[Value]:
    defs = items[0]
    # the list usually names itself first (class 40 attribute 2): then element i is
    # object i; otherwise the objects follow the list
    self_named = defs[0][0] == 40 and defs[0][2] == 2
    values = items if self_named else items[1:]
    if len(values) != len(defs):
        raise DlmsError(f"push object list declares {len(defs)} objects, the notification "
                        f"carries {len(values)} values")
    scaler_units = {bytes(d[1]): v for d, v in zip(defs, values)
                    if d[2] == _SCALER_UNIT_ATTR.get(d[0])}
    out: list[Value] = []
    for d, v in zip(defs, values):
        if d[2] != 2 or d[0] == 40:
            continue  # scaler_unit, status, capture time... and the list itself
        obis = bytes(d[1])
        _append(out, obis, v, scaler_units.get(obis), scalers, {})
    return out


def _append(out: list[Value], obis: bytes, value: Any, scaler_unit: Any,
            scalers: Mapping[str, int], list_scalers: Mapping[tuple[int, int], int]) -> None:
    if isinstance(value, (bool, axdr.EnumValue)) or not isinstance(value, (int, float)):
        return  # identifiers, states (enums), date-times, nested data, null: not registers
    text = obis_text(obis)
    if scaler_unit is not None:
        if not _looks_scaler_unit(scaler_unit):
            raise DlmsError(f"{text}: scaler_unit is not structure{{integer, enum}}: "
                            f"{scaler_unit!r}"[:200])
        scaler, unit = scaler_unit[0], UNITS.get(scaler_unit[1], "")
    else:
        unit = implied_unit(obis) or ""
        scaler = scalers.get(text, list_scalers.get((obis[2], obis[3]), 0))
    if text in scalers:
        scaler = scalers[text]
    ex = scaled(value, scaler)
    if ex is not None:
        out.append(Value(text, ex[0], ex[1], unit))


def to_readings(values: Iterable[Value], meter_id: str, meter_ts_ms: int | None, rx_ms: int,
                bus: str) -> list[Reading]:
    return [Reading(meter_id, v.obis, v.mantissa, v.exponent, v.unit, meter_ts_ms, rx_ms, (), bus)
            for v in values]


@dataclass
class PushMapping:
    """Per-meter mapping options: scaler overrides and, for lists without OBIS codes,
    the OBIS code of each position."""

    scalers: dict[str, int] = field(default_factory=dict)
    positional: tuple[str, ...] = ()

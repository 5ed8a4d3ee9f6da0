"""ZCL attribute values -> ``Reading``s: pure functions, no port, clock or device state.

Why apart: what a Metering or Electrical Measurement attribute means (its scaling, unit,
OBIS code, "invalid" sentinel, BCD coding) is the whole of the Zigbee bus's arithmetic,
and it is easier to check against the spec, and to test, without a driver around it. The
driver decides *when* a value is published (held until the scaling is known, once per
read); this module says *what* it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..model import Reading
from ..protocols import zcl

QUALITY_ROUNDED = "rounded"   # multiplier/divisor not a terminating decimal (e.g. /3)

# Metering attributes that become readings -> which formatting/unit applies.
METERING_VALUES: dict[int, str] = {0x0000: "summation", 0x0001: "summation",
                                   0x0400: "demand"}
# Electrical Measurement attributes that become readings -> (scaling, unit, quantity).
AC_VALUES: dict[int, tuple[str, str, str]] = {
    0x0505: ("voltage", "V", "1-0:32.7.0"),     # L1 voltage
    0x0508: ("current", "A", "1-0:31.7.0"),     # L1 current
    0x050B: ("power", "W", "zcl:0B04:ActivePower"),  # signed: no single OBIS code
}
# (device type family, attribute) -> OBIS code, where the meaning is unambiguous.
OBIS: dict[tuple[str, int], str] = {
    ("electric", 0x0000): "1-0:1.8.0", ("electric", 0x0001): "1-0:2.8.0",
    ("electric", 0x0400): "1-0:16.7.0",
    ("gas", 0x0000): "7-0:3.0.0", ("water", 0x0000): "8-0:1.0.0",
}
# The UnitOfMeasure codes (low 7 bits) under which those OBIS codes are meaningful.
_VOLUME = frozenset((0x01, 0x02, 0x03, 0x04, 0x05, 0x07, 0x0A))
OBIS_UNITS: dict[str, frozenset[int]] = {"electric": frozenset((0x00,)), "gas": _VOLUME,
                                         "water": _VOLUME}
METERING_SCALE_ATTRS = (0x0300, 0x0301, 0x0302, 0x0303, 0x0304, 0x0306)
AC_SCALE_ATTRS = (0x0600, 0x0601, 0x0602, 0x0603, 0x0604, 0x0605)
METERING_POLL_ATTRS = (0x0000, 0x0001, 0x0400, 0x0200)
AC_POLL_ATTRS = (0x0505, 0x0508, 0x050B)
BASIC_ATTRS = (0x0004, 0x0005)  # ManufacturerName, ModelIdentifier
METERING_STATUS = 0x0200


@dataclass(frozen=True)
class MeteringScale:
    unit_code: int
    multiplier: int
    divisor: int
    summation_fmt: zcl.Formatting
    demand_fmt: zcl.Formatting
    device_type: int

    @property
    def units(self) -> tuple[str, str, bool]:
        return zcl.unit_of_measure(self.unit_code)


@dataclass(frozen=True)
class AcScale:
    voltage: tuple[int, int]
    current: tuple[int, int]
    power: tuple[int, int]


@dataclass(frozen=True)
class Invalid:
    """A value that is not a reading (a sentinel, a wrong type, bad BCD): a diagnostic."""

    cluster: int
    attribute: int
    value: zcl.TypedValue
    reason: str = "invalid sentinel"

    @property
    def raw(self) -> int | None:
        return self.value.value if isinstance(self.value.value, int) else None

    def detail(self, ieee: str) -> dict[str, object]:
        """The ``meter.invalid_value`` event's detail."""
        return {"ieee": ieee, "cluster": f"0x{self.cluster:04X}",
                "attribute": f"0x{self.attribute:04X}",
                "name": zcl.attribute_name(self.cluster, self.attribute),
                "type": self.value.type_name, "raw": self.raw, "reason": self.reason}


def is_integer(tv: zcl.TypedValue) -> bool:
    return zcl.DATA_TYPES[tv.type_id].kind in ("uint", "int", "data", "bitmap") \
        and isinstance(tv.value, int) and not isinstance(tv.value, bool)


def is_measurement(cluster: int, attr: int) -> bool:
    """An attribute that becomes a Reading (once its cluster's scaling is known)."""
    return (cluster == zcl.METERING and attr in METERING_VALUES) or \
        (cluster == zcl.ELECTRICAL_MEASUREMENT and attr in AC_VALUES)


def check_value(cluster: int, attr: int, tv: zcl.TypedValue) -> Invalid | None:
    """Why a measurement's value cannot be a reading, whatever the scaling; None if it can."""
    if tv.invalid:
        return Invalid(cluster, attr, tv)
    if not is_integer(tv):
        return Invalid(cluster, attr, tv, f"unexpected type {tv.type_name}")
    return None


# ---------------------------------------------------------------------------- scaling


def _scale_attr(recs: dict[int, zcl.AttributeStatus], attr: int, cluster: int,
                problems: list[str], default: int | None = 1) -> int | None:
    r = recs.get(attr)
    name = zcl.attribute_name(cluster, attr)
    if r is None:
        problems.append(f"{name} missing from the response")
        return None
    if r.status == zcl.UNSUPPORTED_ATTRIBUTE and default is not None:
        return default  # optional attribute: the spec's default applies
    if r.status != zcl.SUCCESS or r.value is None:
        problems.append(f"{name}: {zcl.status_name(r.status)}")
        return None
    if r.value.invalid:
        problems.append(f"{name} is the invalid sentinel 0x{r.value.value:X}")
        return None
    if not is_integer(r.value):
        problems.append(f"{name} has type {r.value.type_name}, not an integer type")
        return None
    if r.value.value < 0:
        problems.append(f"{name} is negative ({r.value.value})")
        return None
    return int(r.value.value)


def metering_scale(recs: dict[int, zcl.AttributeStatus]
                   ) -> tuple[MeteringScale | None, list[str]]:
    """The Metering scaling from a Read Attributes response, or None and why not."""
    M = zcl.METERING
    problems: list[str] = []
    unit = _scale_attr(recs, 0x0300, M, problems, default=None)
    mult = _scale_attr(recs, 0x0301, M, problems)
    div = _scale_attr(recs, 0x0302, M, problems)
    sfmt = _scale_attr(recs, 0x0303, M, [], default=0) or 0
    dfmt = _scale_attr(recs, 0x0304, M, [], default=0) or 0
    dtype = _scale_attr(recs, 0x0306, M, [], default=0) or 0
    if unit is not None and (unit & 0x7F) not in zcl.UNIT_OF_MEASURE:
        problems.append(f"UnitOfMeasure 0x{unit:02X} is not a known unit")
    for name, v in (("Multiplier", mult), ("Divisor", div)):
        if v == 0:
            problems.append(f"{name} is 0")
    if problems:
        return None, problems
    assert unit is not None and mult is not None and div is not None
    return MeteringScale(unit, mult, div, zcl.Formatting.from_bits(sfmt),
                         zcl.Formatting.from_bits(dfmt), dtype), []


def ac_scale(recs: dict[int, zcl.AttributeStatus]) -> tuple[AcScale | None, list[str]]:
    """The Electrical Measurement AC multipliers/divisors, or None and why not."""
    AC = zcl.ELECTRICAL_MEASUREMENT
    problems: list[str] = []
    v = [_scale_attr(recs, a, AC, problems) for a in AC_SCALE_ATTRS]
    problems += [f"{zcl.attribute_name(AC, a)} is 0" for a, x in zip(AC_SCALE_ATTRS, v)
                 if x == 0]
    if problems:
        return None, problems
    return AcScale((v[0], v[1]), (v[2], v[3]), (v[4], v[5])), []  # type: ignore[arg-type]


def has_ac(recs: dict[int, zcl.AttributeStatus]) -> bool:
    """Whether the device answered any AC measurement: it has the cluster's values."""
    return any(recs.get(a) is not None and recs[a].status == zcl.SUCCESS
               for a in AC_POLL_ATTRS)


# ---------------------------------------------------------------------------- readings


def metering_reading(meter_id: str, source: str, m: MeteringScale, attr: int,
                     tv: zcl.TypedValue, rx: int) -> Union[Reading, Invalid]:
    """One Metering value (attr in METERING_VALUES, an integer) as a Reading."""
    summ_unit, demand_unit, bcd = m.units
    raw = int(tv.value)
    if bcd:
        try:
            size = zcl.DATA_TYPES[tv.type_id].size or 6
            raw = zcl.bcd_value(raw & ((1 << (8 * size)) - 1), size)
        except ValueError:
            return Invalid(zcl.METERING, attr, tv, "not BCD although UnitOfMeasure says BCD")
    what = METERING_VALUES[attr]
    fmt = m.summation_fmt if what == "summation" else m.demand_fmt
    mantissa, exponent, rounded = zcl.scale(raw, m.multiplier, m.divisor, fmt.right)
    family = zcl.device_type_name(m.device_type)
    quantity = OBIS.get((family, attr))
    if quantity is None or (m.unit_code & 0x7F) not in OBIS_UNITS[family]:
        quantity = f"zcl:0702:{zcl.attribute_name(zcl.METERING, attr)}"
    unit = summ_unit if what == "summation" else demand_unit
    return Reading(meter_id, quantity, mantissa, exponent, unit, None, rx,
                   (QUALITY_ROUNDED,) if rounded else (), source)


def ac_reading(meter_id: str, source: str, ac: AcScale, attr: int, tv: zcl.TypedValue,
               rx: int) -> Reading:
    """One Electrical Measurement value (attr in AC_VALUES, an integer) as a Reading."""
    which, unit, quantity = AC_VALUES[attr]
    mult, div = getattr(ac, which)
    mantissa, exponent, rounded = zcl.scale(int(tv.value), mult, div)
    return Reading(meter_id, quantity, mantissa, exponent, unit, None, rx,
                   (QUALITY_ROUNDED,) if rounded else (), source)


def reading(meter_id: str, source: str, cluster: int, attr: int, tv: zcl.TypedValue,
            metering: MeteringScale | None, ac: AcScale | None,
            rx: int) -> Union[Reading, Invalid, None]:
    """A measurement as a Reading, an Invalid diagnostic, or None while its cluster's
    scaling is not known (the caller holds the value)."""
    bad = check_value(cluster, attr, tv)
    if bad is not None:
        return bad
    if cluster == zcl.METERING:
        return None if metering is None else \
            metering_reading(meter_id, source, metering, attr, tv, rx)
    return None if ac is None else ac_reading(meter_id, source, ac, attr, tv, rx)

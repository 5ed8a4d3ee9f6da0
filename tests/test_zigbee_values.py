"""ZCL attribute values -> Readings (gateway.drivers.zigbee_values): pure, no driver."""

from __future__ import annotations

from decimal import Decimal

from gateway.drivers import zigbee_values as zv
from gateway.model import Reading
from gateway.protocols import zcl


def _ok(type_id: int, value: int) -> zcl.AttributeStatus:
    return zcl.AttributeStatus(0, zcl.SUCCESS, zcl.TypedValue(type_id, value))


def _recs(**attrs: zcl.AttributeStatus) -> dict[int, zcl.AttributeStatus]:
    return {int(k[1:], 16): v for k, v in attrs.items()}


def _metering(unit=0x00, mult=1, div=1000, fmt=0x2B, dtype=0) -> zv.MeteringScale:
    scale, problems = zv.metering_scale(_recs(
        x0300=_ok(zcl.ENUM8, unit), x0301=_ok(zcl.U24, mult), x0302=_ok(zcl.U24, div),
        x0303=_ok(zcl.BMP8, fmt), x0304=_ok(zcl.BMP8, fmt), x0306=_ok(zcl.BMP8, dtype)))
    assert scale is not None and problems == []
    return scale


def test_summation_is_scaled_exactly_with_its_obis_code():
    r = zv.reading("m1", "zb", zcl.METERING, 0x0000, zcl.TypedValue(zcl.U48, 1_234_567),
                   _metering(), None, 5)
    assert isinstance(r, Reading)
    assert (r.quantity, r.value, r.unit, r.quality) == ("1-0:1.8.0", Decimal("1234.567"),
                                                        "kWh", ())


def test_a_division_that_does_not_terminate_is_flagged_rounded():
    r = zv.reading("m1", "zb", zcl.METERING, 0x0000, zcl.TypedValue(zcl.U48, 100),
                   _metering(mult=10, div=3, fmt=0x2A), None, 5)
    assert isinstance(r, Reading) and r.quality == (zv.QUALITY_ROUNDED,)


def test_values_wait_for_their_scaling_and_sentinels_are_invalid():
    tv = zcl.TypedValue(zcl.U48, 7)
    assert zv.reading("m1", "zb", zcl.METERING, 0x0000, tv, None, None, 5) is None
    bad = zv.reading("m1", "zb", zcl.METERING, 0x0000,
                     zcl.TypedValue(zcl.U48, 0xFFFFFFFFFFFF), None, None, 5)
    assert isinstance(bad, zv.Invalid) and bad.reason == "invalid sentinel"
    assert bad.detail("ieee")["name"] == "CurrentSummationDelivered"


def test_unusable_scaling_says_why():
    scale, problems = zv.metering_scale(_recs(x0300=_ok(zcl.ENUM8, 0),
                                              x0301=_ok(zcl.U24, 0)))
    assert scale is None
    assert "Multiplier is 0" in problems and any("Divisor" in p for p in problems)


def test_ac_values_use_their_own_multiplier_and_divisor():
    ac, problems = zv.ac_scale(_recs(**{f"x{a:04X}": _ok(zcl.U16, v) for a, v in zip(
        zv.AC_SCALE_ATTRS, (1, 10, 1, 100, 1, 1))}))
    assert ac is not None and not problems
    r = zv.reading("m1", "zb", zcl.ELECTRICAL_MEASUREMENT, 0x0505,
                   zcl.TypedValue(zcl.U16, 2301), None, ac, 5)
    assert isinstance(r, Reading) and (r.quantity, str(r.value), r.unit) == (
        "1-0:32.7.0", "230.1", "V")

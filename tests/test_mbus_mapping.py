"""The pure mapping from decoded M-Bus telegrams to Readings and Events (no port, no thread):
quality flags from the status byte, recovery and status-change events, decode-error detail."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gateway import events
from gateway.drivers.mbus_mapping import (MAX_EVENT_HEX, decode_error_detail, read_ok_events,
                                          telegram_readings)
from gateway.model import QUALITY_HISTORIC, QUALITY_METER_ERROR, QUALITY_NOT_ENCRYPTED


def _rec(key: str, value: Any, storage: int = 0, kind: str = "number", **kw: Any) -> Any:
    base = dict(key=key, value=value, exponent=-2, unit="m3", storage=storage, kind=kind,
                error=None, tariff=0, subunit=0, function="instantaneous", quantity=key)
    base.update(kw)
    return SimpleNamespace(**base)


def _telegram(records: list[Any], status: int = 0, **extra: Any) -> Any:
    return SimpleNamespace(records=records, status=status, extra=extra)


def test_numbers_become_readings_stored_ones_historic_errors_dropped() -> None:
    t = _telegram([_rec("Volume", 1234), _rec("Volume/storage=1", 1000, storage=1),
                   _rec("Flow", None), _rec("Bad", 5, error="reserved VIF")])
    out = telegram_readings(t, "m1", "bus", 42)
    assert [(r.quantity, r.mantissa, r.quality) for r in out] == [
        ("Volume", 1234, ()), ("Volume/storage=1", 1000, (QUALITY_HISTORIC,))]
    assert all(r.meter_id == "m1" and r.rx_ts_ms == 42 and r.meter_ts_ms is None for r in out)


def test_status_errors_and_clear_text_mark_quality() -> None:
    t = _telegram([_rec("Volume", 1)], status=0x10, not_encrypted=True)
    (r,) = telegram_readings(t, "m1", "bus", 0)
    assert r.quality == (QUALITY_METER_ERROR, QUALITY_NOT_ENCRYPTED)


def test_date_record_gives_the_meter_time() -> None:
    t = _telegram([_rec("Date and time", "2024-01-02T03:04", kind="datetime",
                        quantity="Date and time"), _rec("Volume", 7)])
    (r,) = telegram_readings(t, "m1", "bus", 0)
    assert r.meter_ts_ms == 1704164640000


def test_read_ok_events_say_recovery_and_flag_changes_once() -> None:
    evs = read_ok_events(3, (), ("low_battery",), 4, "bus", "m1", 99, retried_with_new_key=True)
    assert [(e.kind, e.severity) for e in evs] == [(events.RECOVERED, "info"),
                                                   (events.STATUS, "warning")]
    assert evs[0].detail == {"after_failures": 3, "retried_with_new_key": True}
    assert evs[1].detail == {"flags": ["low_battery"], "status": 4, "previous": []}
    assert read_ok_events(0, ("low_battery",), ("low_battery",), 4, "bus", "m1", 99) == []


def test_decode_error_detail_bounds_the_hex() -> None:
    assert decode_error_detail("boom", b"\x01\xab") == {"error": "boom", "hex": "01AB"}
    long = decode_error_detail("boom", bytes(MAX_EVENT_HEX))
    assert len(long["hex"]) == MAX_EVENT_HEX and long["hex_truncated"] is True

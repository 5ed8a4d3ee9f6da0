"""M-Bus readings carry the meter's own time: the current values the telegram's "Date and
time" record, the stored values the date of their storage number (flagged historic), read in
the driver's default_tz; the edge judges clock drift on the former only."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.config import ConfigError, load_config
from gateway.drivers.mbus import meter_times, telegram_readings
from gateway.model import QUALITY_HISTORIC
from gateway.protocols.mbus.wired import decode_rsp_ud
from tests.configs import config_with_driver

VECTORS = json.loads((Path(__file__).parent / "vectors" / "mbus.json").read_text())
BY_NAME = {v["name"]: v for v in VECTORS["vectors"]}


def _ms(text: str, tz: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)


@pytest.mark.parametrize("tz", ["UTC", "Europe/Oslo"])
def test_kamstrup_current_values_at_the_meter_clock_stored_values_at_their_due_date(tz) -> None:
    t = decode_rsp_ud(bytes.fromhex(BY_NAME["kamstrup_multical_601"]["hex"]))
    rx = _ms("2011-01-05T15:27:10", "UTC")
    readings = telegram_readings(t, "kam", "bus0", rx, ZoneInfo(tz))
    now_ts, due_ts = _ms("2011-01-05T15:26", tz), _ms("2010-12-31T00:00", tz)
    assert meter_times(t, ZoneInfo(tz)) == {(0, 0): now_ts, (1, 0): due_ts}
    current = [r for r in readings if "storage=" not in r.quantity]
    stored = [r for r in readings if "/storage=1" in r.quantity]
    assert current and stored
    assert {r.meter_ts_ms for r in current} == {now_ts}
    assert all(QUALITY_HISTORIC not in r.quality for r in current)
    assert {r.meter_ts_ms for r in stored} == {due_ts}
    assert all(QUALITY_HISTORIC in r.quality for r in stored)
    assert all(r.rx_ts_ms == rx for r in readings)


def test_telegrams_without_date_records_keep_meter_ts_empty() -> None:
    for v in VECTORS["vectors"]:
        if v["protocol"] != "mbus_wired":
            continue
        t = decode_rsp_ud(bytes.fromhex(v["hex"]))
        times = meter_times(t, ZoneInfo("UTC"))
        for r in telegram_readings(t, "m", "b", 0):
            storage = int(r.quantity.split("storage=")[1].split("/")[0]) \
                if "storage=" in r.quantity else 0
            if not any(k[0] == storage for k in times):
                assert r.meter_ts_ms is None, (v["name"], r)


def test_default_tz_is_checked_with_its_line(tmp_path) -> None:
    def cfg(tz: str) -> Path:
        return config_with_driver(tmp_path, "  - type: mbus\n"
                                            "    name: m\n"
                                            "    serial: {port: /dev/ttyUSB0, baud: 2400}\n"
                                            f"    default_tz: {tz}\n"
                                            "    meters: [{primary: 1}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg("Europe/Olso"))
    assert ":8:17: drivers[0].default_tz: expected an IANA time zone" in str(e.value)
    assert "unknown time zone" in str(e.value)


def test_type_f_encoder_round_trips_through_the_decoder() -> None:
    from gateway.protocols.mbus import records as rec
    for args in ((2026, 11, 26, 2, 15), (2000, 1, 1, 0, 0), (2080, 12, 31, 23, 59),
                 (2024, 2, 29, 12, 30)):
        field, data = rec.encode_datetime_f(*args)
        assert field == 0x4 and len(data) == 4
        y, mo, d, h, mi = args
        assert rec.decode_datetime_f(data) == f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}"
    for bad in ((2023, 2, 29, 0, 0), (1999, 1, 1, 0, 0), (2026, 1, 1, 24, 0)):
        with pytest.raises(ValueError):
            rec.encode_datetime_f(*bad)

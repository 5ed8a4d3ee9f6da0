"""The console's wording and layout rules, on their own: the main register, errors with their
errno once, tables that wrap instead of cutting, plurals, `listen` stopped early, and the
`gateway diag` table printed as a person writes it (issue 16 items 8-10, 14)."""

from __future__ import annotations

import errno
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.subcommands.diag import render as diag_render
from gateway.console.views import r_listen_end, r_read
from gateway.console.render import WIDTH, Out, cell_lines, table_lines, wrap_lines
from gateway.control.handlers_config import key_bytes
from gateway.control.mainreg import main_quantity, rank
from gateway.text import error_text, plural


def test_main_register_is_the_cumulative_index():
    # electricity: +A total, not the power, a voltage or a tariff register
    assert main_quantity({"1-0:32.7.0": "V", "1-0:1.8.1": "kWh", "1-0:1.8.0": "kWh",
                          "1-0:16.7.0": "kW"}) == "1-0:1.8.0"
    assert main_quantity({"1-1:1.8.0*255": "kWh", "0-0:96.1.1": ""}) == "1-1:1.8.0*255"
    assert main_quantity({"8-0:1.0.0": "L", "zcl:0702:InstantaneousDemand": "L/h"}) \
        == "8-0:1.0.0"
    assert main_quantity({"7-0:3.0.0": "m3"}) == "7-0:3.0.0"
    assert main_quantity({"0-1:24.2.1": "m3", "1-0:1.7.0": "kW"}) == "0-1:24.2.1"
    assert main_quantity({"6-0:1.0.0": "GJ", "6-0:8.0.0": "m3"}) == "6-0:1.0.0"
    # M-Bus: energy, storage 0 tariff 0, not a stored value, a temperature or flags
    mbus = {"Energy/storage=12": "kWh", "Flow temperature": "°C", "Error flags": "",
            "Volume": "m3", "Energy": "kWh", "Energy/tariff=1": "kWh"}
    assert main_quantity(mbus) == "Energy"
    assert main_quantity({"Volume": "m3", "Volume flow": "m3/h",
                          "Volume/storage=1": "m3"}) == "Volume"
    assert main_quantity({"Energy (accumulation abs)": "kWh"}) == "Energy (accumulation abs)"
    assert main_quantity({"zcl:0702:CurrentSummationDelivered": "kWh",
                          "zcl:0B04:ActivePower": "W"}) == "zcl:0702:CurrentSummationDelivered"
    # nothing cumulative: no main register (the console then shows the last one)
    assert main_quantity({"Flow temperature": "°C", "Error flags": ""}) is None
    assert rank("1-0:1.8.0") < rank("1-0:2.8.0") < rank("Energy") < rank("Volume")


def test_errors_name_the_errno_once_never_a_tuple():
    assert error_text(OSError(errno.EIO, "Input/output error")) == \
        "Input/output error (EIO)"
    # pyserial: SerialException(errno, "could not open port X: [Errno 2] No such file ...")
    import serial
    exc = serial.SerialException(2, "could not open port /dev/ttyX: [Errno 2] No such file "
                                    "or directory: '/dev/ttyX'")
    text = error_text(exc)
    assert text.count("2") == 0 or "Errno" not in text
    assert "Errno" not in text and text.count("ENOENT") == 1 and "/dev/ttyX" in text
    assert error_text(RuntimeError("scan failed: (5, 'Input/output error')")) == \
        "scan failed: Input/output error (EIO)"
    assert error_text(RuntimeError("read: [Errno 5] Input/output error; again [Errno 5] x")) \
        == "read: Input/output error; again x (EIO)"
    # pyserial wrapping termios.error: errno twice, the second as a tuple
    conf = serial.SerialException(5, "Could not configure port: (5, 'Input/output error')")
    assert error_text(conf) == "Could not configure port: Input/output error (EIO)"
    assert error_text(RuntimeError(f"scan failed: port failed: {conf}")) == \
        "scan failed: port failed: Could not configure port: Input/output error (EIO)"
    assert error_text(TimeoutError()) == "TimeoutError"


def test_key_sizes_per_driver_type():
    assert key_bytes("mbus") == (16,) and key_bytes("wmbus") == (16,)
    assert key_bytes("dlms") == (16, 32)
    assert key_bytes("iec62056-21") == () and key_bytes("zigbee") == ()


def test_plural():
    assert plural(1, "driver") == "1 driver" and plural(2, "driver") == "2 drivers"
    assert plural(0, "meter") == "0 meters" and plural(3, "entry", "entries") == "3 entries"


def test_long_error_wraps_at_word_boundaries():
    msg = ("listen wmbus: no wmbus bus is configured (buses: zigbee (zigbee), heat-bus "
           "(mbus), substation-north-feeder-7 (simulated))")
    lines = wrap_lines("error: ", msg)
    assert all(len(l) <= WIDTH - 1 for l in lines) and len(lines) == 2
    assert " ".join(l.strip() for l in lines) == "error: " + msg
    assert lines[1].startswith(" " * 7)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126)
                                 | st.sampled_from([" ", ",", "_"]), max_size=60),
                         min_size=4, max_size=4), max_size=6),
       st.booleans())
def test_tables_fit_and_lose_nothing(rows, id_first):
    headers = ["ID", "BUS", "VALUE", "FLAGS"]
    lines = table_lines(headers, rows, shrink=3, id_first=id_first)
    assert all(len(l) <= WIDTH - 1 for l in lines[1:] if l.strip()) or any(
        len(r[0]) > WIDTH - 1 for r in rows)
    text = "".join(lines)
    for r in rows:
        for cell in r:
            for word in cell.replace(",", " ").replace("_", " ").split():
                # every character of every cell is shown (maybe across lines)
                assert all(ch in text for ch in word)


def test_cell_lines_break_after_separators_and_keep_everything():
    assert cell_lines("simulated,never_read", 10) == ["simulated,", "never_read"]
    assert cell_lines("simulated,never_read", 8) == ["simulate", "d,never_", "read"]
    assert "".join(cell_lines("0123456789abcdefghij", 7)) == "0123456789abcdefghij"


def test_read_aligns_values_whatever_the_register_names():
    out = Out(io.StringIO(), colour=False)
    r_read({"meter_id": "m1", "bus": "b", "duration_ms": 3, "records": [
        {"type": "reading", "quantity": "1-0:1.8.0", "value": "123.456", "unit": "kWh",
         "meter_ts_ms": None, "quality": []},
        {"type": "reading", "quantity": "Return temperature (second)", "value": "42.1",
         "unit": "°C", "meter_ts_ms": None, "quality": []},
        {"type": "reading", "quantity": "zcl:0702:CurrentSummationDelivered/storage=12/x",
         "value": "1", "unit": "m3", "meter_ts_ms": None, "quality": ["historic"]}]}, out)
    lines = out.stream.getvalue().splitlines()[1:]
    values = [l for l in lines if l.rstrip().endswith(("kWh", "°C", "[historic]"))]
    ends = {l.index(" kWh") if "kWh" in l else l.index(" °C") if "°C" in l
            else l.index(" m3") for l in values}
    assert len(values) == 3 and len(ends) == 1, lines
    assert all(len(l) <= WIDTH - 1 for l in lines)


def test_listen_stopped_early_says_how_long_it_listened():
    out = Out(io.StringIO(), colour=False)
    r_listen_end({"bus": "radio", "seconds": 30, "heard": 1, "dropped": 0, "listened_s": 4.2,
                  "stopped_early": True}, out)
    assert out.stream.getvalue() == \
        "-- 1 telegram heard on radio in 4.2 s (stopped early; asked for 30 s)\n"
    out = Out(io.StringIO(), colour=False)
    r_listen_end({"bus": "radio", "seconds": 30, "heard": 3, "listened_s": 30,
                  "stopped_early": False}, out)
    assert out.stream.getvalue() == "-- 3 telegrams heard on radio in 30 s\n"


def _table(**meter):
    return {"snapshot_ms": 1_000_000, "run": None,
            "gateway": {"uptime_s": 12, "boot_reason": "restart", "clock": {"synced": True},
                        "store_depth": 0, "oldest_unsent_s": None, "broker_connected": True,
                        "broker_reconnects": 1, "load": [0.1, 0.2, 0.3]},
            "meters": {"m1": {"bus": "b", "last_seen_ms": 999_000, "reads_ok": 5,
                              "reads_failed": 0, "success_ratio": 1.0, "alarms": {},
                              "units": {"Energy": "Wh"}, **meter}},
            "registers": {"m1": {"Energy": {"value": "1.499E+4", "read_ms": 999_000}}}}


def test_gateway_diag_prints_values_as_a_person_writes_them():
    text = diag_render(_table(driver={"clock_drift_s": -2.5}), "gw", 1_000_500)
    assert "oldest unsent none" in text and "None" not in text
    assert "Energy=14990 Wh" in text and "E+" not in text
    assert "-2.5s" in text  # the drift the driver measured (DLMS clock_drift_s)
    assert "1 reconnect," in text and text.splitlines()[-1] == "  overall: OK" or \
        text.splitlines()[-1].endswith("overall: OK")


def test_gateway_diag_warns_on_a_silent_meter():
    text = diag_render(_table(reads_ok=3, reads_failed=4, success_ratio=0.4286,
                              missed_readings=4, alarms={"silent": 999_000}), "gw", 1_000_500)
    row = next(l for l in text.splitlines() if l.startswith("m1"))
    assert "43%" in row and "WARN silent" in row
    assert text.splitlines()[-1].startswith("overall: WARN: 1 meter need")
    narrow = diag_render(_table(alarms={"silent": 1}), "gw", 1_000_500, width=79)
    assert all(len(l) <= 79 for l in narrow.splitlines())
    assert "m1 on b: WARN silent" in narrow


@pytest.mark.parametrize("flags", [["simulated"], []])
def test_out_table_never_cuts(flags):
    out = Out(io.StringIO(), colour=False)
    out.table(["ID", "BUS", "LAST VALUE", "FLAGS"],
              [["x" * 70, "bus", "1 kWh", ",".join(flags + ["never_read", "read_failed"])]],
              shrink=3, id_first=True)
    text = out.stream.getvalue()
    assert "~" not in text and "x" * 70 in text
    assert all(len(l) <= WIDTH - 1 for l in text.splitlines())


def test_diag_shows_a_repeated_problem_once_with_its_count():
    from gateway.console.views import r_diag
    out = Out(io.StringIO(), colour=False)

    def ev(t: int, kind: str, meter: str) -> dict:
        return {"ts_ms": t, "severity": "warning", "kind": kind, "meter_id": meter,
                "source": "zb", "detail": {"reason": "invalid sentinel"}}
    r_diag({"checks": [{"level": "warn", "what": "meter m6", "detail": "sends invalid values"}],
            "recent_problems": [ev(1, "meter.invalid_value", "m6"), ev(2, "meter.silent", "m5"),
                                ev(3, "meter.invalid_value", "m6")], "overall": "warn"}, out)
    lines = out.stream.getvalue().splitlines()
    assert lines[2].endswith("meter.silent m5 reason=\"invalid sentinel\"")
    assert "meter.invalid_value m6 (2 times)" in lines[3] and len(lines) == 6
    assert lines[-1] == "overall: WARN"

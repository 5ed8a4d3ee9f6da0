"""The wM-Bus driver over a pseudo-terminal with the dongle simulator, for both dongle
types: readings from every security mode, one reading per repeated telegram, unknown
meters listed but not forwarded, each failure its own event, a failed meter read again,
and a dongle that goes silent re-initialised and then reopened."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from gateway.drivers.wmbus import WMBusDriver
from tools.sim.wmbus import SimRadioMeter, WMBusDongleSimulator, start
from tests.sinks import Sink
from tests.waiting import wait_for

KEY = bytes(range(16))
OTHER = bytes(16)


def radio_meters() -> list[SimRadioMeter]:
    m = [SimRadioMeter("11111111", "KAM", 0x1B, 0x16, KEY, "ell"),
         SimRadioMeter("22222222", "APA", 0x05, 0x07, KEY, "mode5"),
         SimRadioMeter("33333333", "LAS", 0x14, 0x07, KEY, "mode7"),
         SimRadioMeter("44444444", "SEN", 0x68, 0x07, None, "none", fault="duplicate"),
         SimRadioMeter("55555555", "KAM", 1, 0x07, OTHER, "mode5"),        # wrong key
         SimRadioMeter("66666666", "KAM", 1, 0x07, KEY, "mode5"),          # no key in config
         SimRadioMeter("77777777", "KAM", 1, 0x07, KEY, "mode5", fault="truncate"),
         SimRadioMeter("88888888", "KAM", 1, 0x07, KEY, "mode5", fault="crc"),
         SimRadioMeter("99999999", "KAM", 1, 0x07, KEY, "mode5", fault="unsupported"),
         SimRadioMeter("12121212", "ZZZ", 1, 0x03, KEY, "mode5"),          # not configured
         SimRadioMeter("13131313", "XYZ", 1, 0x16, KEY, "mode7", link_mode="C1")]  # not heard
    for i, x in enumerate(m):
        x.interval_s = 0.25
        x.rssi_dbm = -50 - 2 * i
    return m


def options(device: str, dongle: str, **kw: Any) -> dict[str, Any]:
    opts = {"dongle": dongle, "mode": "t1",
            "serial": {"port": device, "baud": 57600 if dongle == "im871a" else 9600,
                       "parity": "N", "timeout_ms": 100},
            "silence_timeout_s": 30, "ping_interval_s": 30, "command_timeout_ms": 1000,
            "duplicate_window_s": 60, "event_interval_s": 0,
            "meters": [{"id": "11111111", "key": KEY, "name": "kitchen"},
                       {"id": "22222222", "key": KEY}, {"id": "33333333", "key": KEY},
                       {"id": "44444444"}, {"id": "55555555", "key": KEY},
                       {"id": "66666666"}, {"id": "77777777", "key": KEY},
                       {"id": "88888888", "key": KEY}, {"id": "99999999", "key": KEY},
                       {"id": "13131313", "key": KEY}]}
    opts.update(kw)
    return opts


@pytest.fixture(params=["im871a", "amb8465"])
def radio(request: pytest.FixtureRequest) -> Iterator[tuple[WMBusDongleSimulator, str]]:
    sim = start(request.param, radio_meters())
    yield sim, request.param
    sim.stop()


def run_driver(opts: dict[str, Any]) -> tuple[WMBusDriver, Sink]:
    sink = Sink()
    drv = WMBusDriver("radio", opts, sink)
    drv.start()
    return drv, sink


def test_readings_failures_duplicates_unknown(radio: tuple[WMBusDongleSimulator, str]) -> None:
    sim, dongle = radio
    drv, sink = run_driver(options(sim.device, dongle))
    try:
        assert wait_for(lambda: sim.state.mode == "T1")
        assert wait_for(lambda: all(len(sink.readings(m)) >= 3 * 4 for m in
                                    ("kitchen", "22222222", "33333333", "44444444")))
        assert wait_for(lambda: all(sink.events(k) for k in (
            "meter.decrypt_failed", "meter.no_key", "meter.truncated", "meter.crc_error",
            "meter.unsupported_security")))
    finally:
        drv.stop()
    # every failure is its own event, for the right meter, and never a reading
    owners = {k: {e.meter_id for e in sink.events(k)} for k in (
        "meter.decrypt_failed", "meter.no_key", "meter.truncated", "meter.crc_error",
        "meter.unsupported_security")}
    assert owners == {"meter.decrypt_failed": {"55555555"}, "meter.no_key": {"66666666"},
                      "meter.truncated": {"77777777"}, "meter.crc_error": {"88888888"},
                      "meter.unsupported_security": {"99999999"}}
    assert not any(sink.readings(m) for m in ("55555555", "66666666", "77777777", "88888888",
                                              "99999999", "12121212", "13131313"))
    # values are exact and named by record
    vol = [r for r in sink.readings("33333333") if r.quantity == "Volume"]
    assert vol and vol[0].unit == "m3" and vol[0].exponent == -3
    assert {r.quantity for r in sink.readings("kitchen")} == {
        "Volume", "Volume/storage=1", "Volume flow", "Error flags"}
    # the duplicated telegram made one reading per transmission
    sent = sim.meter("44444444").sent
    per_quantity = Counter(r.quantity for r in sink.readings("44444444"))
    assert max(per_quantity.values()) <= sent
    stats = drv.meter_stats()
    assert stats["44444444"]["duplicates"] >= 1
    assert stats["55555555"]["failures"] == {"meter.decrypt_failed":
                                             stats["55555555"]["reads_failed"]}
    # RSSI per meter, in dBm, for diagnostics
    assert stats["22222222"]["rssi_dbm"] is not None and -70 <= stats["22222222"]["rssi_dbm"] <= -40
    # meters not in the config are counted and listed, not forwarded
    unknown = drv.unknown_meters()
    assert [(u["manufacturer"], u["id"]) for u in unknown] == [("ZZZ", "12121212")]
    assert unknown[0]["count"] >= 1 and unknown[0]["device_type"] == "gas"
    assert drv.dongle_stats["inits"] >= 1 and drv.dongle_stats["telegrams"] > 0


def test_a_failed_meter_is_read_again(radio: tuple[WMBusDongleSimulator, str]) -> None:
    sim, dongle = radio
    broken = sim.meter("22222222")
    broken.fault = "crc"
    drv, sink = run_driver(options(sim.device, dongle))
    try:
        assert wait_for(lambda: len(sink.events("meter.crc_error", "22222222")) >= 2)
        broken.fault = "truncate"
        assert wait_for(lambda: sink.events("meter.truncated", "22222222"))
        broken.fault = None
        assert wait_for(lambda: sink.readings("22222222"))
        assert sink.events("meter.recovered", "22222222")
    finally:
        drv.stop()
    st = drv.meter_stats()["22222222"]
    assert st["reads_ok"] >= 1 and st["consecutive_failures"] == 0
    assert set(st["failures"]) == {"meter.crc_error", "meter.truncated"}


def test_silent_dongle_is_reinitialised_then_reopened(
        radio: tuple[WMBusDongleSimulator, str]) -> None:
    sim, dongle = radio
    drv, sink = run_driver(options(sim.device, dongle, silence_timeout_s=0.8,
                                   command_timeout_ms=1000))
    try:
        assert wait_for(lambda: sink.readings("22222222"))
        # hears nothing and answers nothing for longer than the silence timeout plus two
        # init attempts: re-initialisation fails and the port is reopened
        sim.hang(4.0)
        assert wait_for(lambda: sink.events("dongle.silent"))
        assert wait_for(lambda: sink.events("dongle.reopen"))
        assert wait_for(lambda: drv.state == "listening" and not sim.hung)
        n = len(sink.readings("22222222"))
        assert wait_for(lambda: len(sink.readings("22222222")) > n)  # works again afterwards
        assert drv.dongle_stats["reopens"] >= 1 and drv.dongle_stats["inits"] >= 2
        # a short silence is fixed by re-initialising alone
        sim.state.mode = None  # the dongle forgot its mode (e.g. a brown-out reset)
        assert wait_for(lambda: sink.events("dongle.reinitialised"))
        assert wait_for(lambda: sim.state.mode == "T1")
    finally:
        drv.stop()
    assert not drv.is_alive()


def test_unanswered_ping_triggers_recovery() -> None:
    sim = start("im871a", [SimRadioMeter("22222222", "APA", 5, 7, KEY, "mode5",
                                         interval_s=0.2)])
    try:
        drv, sink = run_driver(options(sim.device, "im871a", ping_interval_s=0.5,
                                       command_timeout_ms=800,
                                       meters=[{"id": "22222222", "key": KEY}]))
        try:
            assert wait_for(lambda: sim.state.pings >= 2)
            sim.hang(1.5)
            assert wait_for(lambda: sink.events("dongle.ping_failed"))
            n = len(sink.readings())
            assert wait_for(lambda: len(sink.readings()) > n)
        finally:
            drv.stop()
    finally:
        sim.stop()


def test_config_check(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.gwproc import ROOT, write_config
    from tools.devpki import make_pki
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    path = write_config(tmp_path, pki, 8883, drivers=[
        {"type": "wmbus", "name": "radio", "dongle": "amb8465", "mode": "c1",
         "serial": {"port": "/dev/ttyUSB1", "baud": 9600},
         "meters": [{"id": "76348799", "manufacturer": "KAM",
                     "key": "28F64A24988064A079AA2C807D6102AE"}]},
        {"type": "mbus", "name": "bus", "serial": {"port": "/dev/ttyUSB0", "baud": 2400,
                                                   "parity": "E"},
         "meters": [{"primary": 3}]}])
    path.chmod(0o600)
    ok = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "28F64A24988064A079AA2C807D6102AE" not in ok.stdout.upper()
    bad = write_config(tmp_path, pki, 8883, name="bad.yaml", drivers=[
        {"type": "wmbus", "name": "radio", "dongle": "im871", "serial": {"port": "/dev/x"},
         "meters": [{"id": "7634879", "key": "28F6"}, {"id": "76348799"},
                    {"id": "76348799"}]}])
    bad.chmod(0o600)
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "dongle" in out.stderr and "did you mean" in out.stderr
    assert "meters[0].id" in out.stderr and "meters[0].key" in out.stderr
    assert "duplicate id" in out.stderr

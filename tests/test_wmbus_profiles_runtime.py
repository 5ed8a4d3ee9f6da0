"""Manufacturer-specific meters in the running system: the dongle simulator on a pty replays
real Techem and Sappel telegrams (and a meter nobody has a profile for); the driver reads
the first two through their profiles, says once that the third is not understood, and
console listen names each meter's profile. The end-to-end test runs the real gateway
process, the real broker and the head-end verifier and finds the readings at the head-end.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from gateway.drivers.wmbus import WMBusDriver
from tests.gwproc import start_gateway, start_headend, write_config
from tests.sinks import Sink
from tests.waiting import wait_for
from tools.sim.wmbus import SimRadioMeter, start

ROOT = Path(__file__).resolve().parents[1]
CORPUS = json.loads((ROOT / "tests/corpus/wmbus_profiles.json").read_text())["telegrams"]

MKRADIO3 = [bytes.fromhex(e["hex"]) for e in CORPUS if e["driver"] == "mkradio3"]  # 34333231
IZAR = [bytes.fromhex(e["hex"]) for e in CORPUS if e["driver"] == "izar"]          # 208962F3
MKRADIO4 = [bytes.fromhex(e["hex"]) for e in CORPUS if e["driver"] == "mkradio4"]  # 02410120
# a Zenner meter with a manufacturer CI no profile describes
UNKNOWN = bytes.fromhex("1344496A56341278210FB4712F03130CEB627A81")


def replay_meters() -> list[SimRadioMeter]:
    ms = [SimRadioMeter("34333231", "TCH", 0x74, 0x62, None, "replay", frames=MKRADIO3),
          SimRadioMeter("208962F3", "SAP", 0xBC, 0x01, None, "replay", frames=IZAR),
          SimRadioMeter("78123456", "ZRI", 0x21, 0x0F, None, "replay", frames=[UNKNOWN]),
          SimRadioMeter("02410120", "TCH", 0x95, 0x62, None, "replay", frames=MKRADIO4)]
    for i, m in enumerate(ms):
        m.interval_s = 0.2
        m.rssi_dbm = -55 - i
    return ms


def radio_options(device: str, **kw: Any) -> dict[str, Any]:
    return {"dongle": "im871a", "mode": "t1", "event_interval_s": 0,
            "serial": {"port": device, "baud": 57600, "parity": "N", "timeout_ms": 100},
            "meters": [{"id": "34333231", "name": "techem-water"}, {"id": "208962F3"},
                       {"id": "78123456", "name": "zenner"}], **kw}


def test_profile_meters_read_and_unsupported_said_once() -> None:
    sim = start("im871a", replay_meters())
    sink = Sink()
    drv = WMBusDriver("radio", radio_options(sim.device), sink)
    drv.start()
    try:
        heard: list[dict[str, Any]] = []
        done = threading.Event()
        threading.Thread(target=lambda: (drv.listen(2.0, heard.append), done.set()),
                         daemon=True).start()
        assert wait_for(lambda: sink.readings("techem-water") and sink.readings("208962F3"))
        assert wait_for(lambda: sim.meter("78123456").sent >= 5)
        assert wait_for(done.is_set, 10)
    finally:
        drv.stop()
        sim.stop()
    water = {r.quantity: r for r in sink.readings("techem-water")}
    assert (water["Volume"].mantissa, water["Volume"].exponent, water["Volume"].unit) == \
        (138, -1, "m3")
    assert water["Volume/storage=1"].mantissa == 89
    assert water["Volume/storage=1"].meter_ts_ms is not None  # stamped with its due date
    izar = {r.quantity: r for r in sink.readings("208962F3")}
    assert (izar["Volume"].mantissa, izar["Volume"].exponent) == (1248146, -3)
    # the meter no profile reads: one event with what it is, no per-telegram error
    ev = sink.events("meter.unsupported_format")
    assert len(ev) == 1 and ev[0].meter_id == "zenner"
    assert {k: ev[0].detail[k] for k in ("manufacturer", "version", "device_type", "ci")} == \
        {"manufacturer": "ZRI", "version": 0x21, "device_type": 0x0F, "ci": "0xB4"}
    assert not sink.readings("zenner")
    stats = drv.meter_stats()["zenner"]
    assert stats["failures"]["meter.unsupported_format"] >= 1 and stats["reads_failed"] == 0
    assert stats["duplicates"] >= 3  # the same telegram again: not decoded, not reported
    # console listen: every meter heard with the profile that reads it
    by_id: dict[str, dict[str, Any]] = {}
    for h in heard:
        by_id.setdefault(h["id"], h)  # the first time each was heard
    assert by_id["34333231"]["profile"] == "techem-mkradio3"
    assert by_id["208962F3"]["profile"] == "diehl-izar-sappel"
    assert by_id["78123456"]["profile"] is None
    assert by_id["78123456"]["result"] == "meter.unsupported_format"
    # a meter not configured yet: the installer sees which profile would read it
    assert by_id["02410120"]["known"] is False
    assert by_id["02410120"]["profile"] == "techem-mkradio4"
    unknown = {u["id"]: u for u in drv.unknown_meters()}
    assert unknown["02410120"]["profile"] == "techem-mkradio4"


def test_listen_line_shows_the_profile() -> None:
    import io

    from gateway.console.views import r_telegram
    from gateway.console.render import Out

    buf = io.StringIO()
    r_telegram({"ts_ms": 0, "manufacturer": "TCH", "id": "34333231", "version": 116,
                "device_type": "water", "rssi_dbm": -55, "known": True, "result": "ok",
                "profile": "techem-mkradio3"}, Out(buf, colour=False))
    text = " ".join(buf.getvalue().split())  # wrapped lines read as one
    assert "water [techem-mkradio3] -55 dBm known" in text


def test_manufacturer_meters_arrive_at_the_headend(tmp_path: Path, pki: Path, broker: Any) -> None:
    sim = start("im871a", replay_meters()[:2])
    try:
        head = start_headend(pki, broker.port, tmp_path / "headend.log", "--until-idle", "4",
                             "--print-readings")
        assert head.wait_for_log("subscribed", 15), head.text()
        cfg = write_config(tmp_path, pki, broker.port, drivers=[{
            "type": "wmbus", "name": "radio", **radio_options(sim.device)}])
        gw = start_gateway(cfg, tmp_path / "gw.log")
        assert gw.wait_for_log("uplink: connected", 20), gw.text()
        assert wait_for(lambda: sim.meter("208962F3").sent >= 3 and
                        sim.meter("34333231").sent >= 3, 20)
        time.sleep(1.5)
        assert gw.terminate() == 0, gw.text()
        out = head.stdout(90)
    finally:
        sim.stop()
    lines = [line for line in out.splitlines() if line.strip()]
    summary = json.loads(lines[-1])
    assert summary["gaps"] == 0 and summary["bad_signatures"] == 0
    got = {tuple(line.split()[:3]) for line in lines[:-1]}
    assert ("techem-water", "Volume", "13.8") in got
    assert ("techem-water", "Volume/storage=1", "8.9") in got
    assert ("208962F3", "Volume", "1248.146") in got

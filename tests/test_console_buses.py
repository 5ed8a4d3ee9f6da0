"""The console capabilities of the real bus drivers (read ID, listen wmbus, scan mbus,
keys set), first on the drivers against the pty simulators, then typed into the real
`gateway console` against a real gateway subprocess reading the simulated buses.

Every capability is called from a thread other than the driver's, as the control server
does; the driver thread keeps owning its port (the work is queued to it)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from gateway.model import Event, Reading
from tools.broker import Broker
from tests.sinks import Sink
from tests.waiting import wait_for

KEY = bytes(range(16))
WRONG = bytes(16)


def in_thread(fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Call ``fn`` from another thread (as the control server does) and return its result."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the capability call did not return"
    if "error" in box:
        raise box["error"]
    return box.get("result")


def write_key(keys_dir: Path, meter: str, key: bytes) -> None:
    keys_dir.mkdir(mode=0o700, exist_ok=True)
    path = keys_dir / f"{meter}.key"
    path.write_text(key.hex() + "\n")
    os.chmod(path, 0o600)


# --------------------------------------------------------------------------- IEC 62056-21


def test_iec_read_now_emits_and_returns_the_values() -> None:
    from gateway.drivers.iec62056_21 import Iec62056Driver
    from tools.sim.iec62056_21 import start
    sim = start(2, silent=("10000002",))
    sink = Sink()
    d = Iec62056Driver("optical", {
        "serial": {"port": sim.device}, "interval_s": 600, "reply_timeout_ms": 400,
        "baud_switch_delay_ms": 20, "retries": 0,
        "meters": [{"id": "m1", "address": "10000001"}, {"id": "m2", "address": "10000002"}]},
        sink)
    d.start()
    try:
        assert wait_for(lambda: d.meter_stats()["m2"]["failures"] >= 1)
        polled = len(sink.readings("m1"))
        assert d.bus_state()["state"] == "open"
        got = in_thread(lambda: d.read_now("m1"))
        wh = sim.meters[0].values()[0][1]  # what the meter shows, exact decimal text
        energy = next(r for r in got if r.quantity == "1-0:1.8.0")
        assert (energy.unit, energy.exponent) == ("kWh", -3)
        assert abs(energy.mantissa - int(wh.replace(".", ""))) <= 1
        assert len(sink.readings("m1")) == polled + len(got), "stored like any reading"
        with pytest.raises(RuntimeError, match="no identification"):
            in_thread(lambda: d.read_now("m2"))
        with pytest.raises(KeyError):
            in_thread(lambda: d.read_now("nope"))
        assert d.meter_stats()["m1"]["success"] == 2
    finally:
        d.stop()
        sim.stop()
    with pytest.raises(RuntimeError, match="not running"):
        d.read_now("m1")


# --------------------------------------------------------------------------- DLMS


def test_dlms_read_now_set_key_and_stored_key(tmp_path: Path) -> None:
    from gateway.drivers.dlms import DlmsDriver
    from tools.sim.dlms import DEFAULT_AUTH_KEY, DEFAULT_BLOCK_KEY, MeterSpec, DlmsBusSimulator
    sim = DlmsBusSimulator([MeterSpec(17, security="hls"), MeterSpec(18, security="hls")])
    keys = tmp_path / "keys"
    write_key(keys, "m18", DEFAULT_BLOCK_KEY + DEFAULT_AUTH_KEY)  # as `keys set` stores it

    def meter(p: int) -> dict[str, Any]:
        return {"id": f"m{p}", "physical": p, "security": "hls", "block_key": WRONG,
                "auth_key": DEFAULT_AUTH_KEY, "interval_s": 600, "clock": False,
                "registers": ["1-0:1.8.0"]}

    sink = Sink()
    d = DlmsDriver("dlms", {"serial": {"port": sim.device}, "reply_timeout_ms": 400,
                            "retries": 1, "backoff_max_s": 600, "keys_dir": str(keys),
                            "meters": [meter(17), meter(18)]}, sink)
    d.start()
    try:
        stats = d.meter_stats
        assert wait_for(lambda: stats()["m17"]["auth_failures"] == 1
                        and stats()["m18"]["success"] == 1, 60)
        assert d.bus_state()["state"] == "open"
        with pytest.raises(RuntimeError, match="refused"):
            in_thread(lambda: d.read_now("m17"))
        with pytest.raises(ValueError, match="16 bytes"):
            d.set_key("m17", bytes(20))
        # the wrong key is replaced: the backed-off meter is polled again at once
        in_thread(lambda: d.set_key("m17", DEFAULT_BLOCK_KEY))
        assert wait_for(lambda: stats()["m17"]["success"] == 1, 30)
        got = in_thread(lambda: d.read_now("m17"))
        assert [(r.quantity, r.unit) for r in got] == [("1-0:1.8.0", "Wh")]
        assert got[0] in sink.readings("m17")
        assert not any(DEFAULT_BLOCK_KEY.hex() in str(e.detail).lower()
                       for e in sink.records if isinstance(e, Event))
    finally:
        d.stop()
        sim.stop()


# --------------------------------------------------------------------------- M-Bus


def test_mbus_read_now_scan_while_polling_and_keys(tmp_path: Path) -> None:
    from gateway.drivers.mbus import MBusDriver
    from tools.sim.mbus import start
    sim = start()
    keys = tmp_path / "keys"
    write_key(keys, "heat", KEY)
    sink = Sink()
    d = MBusDriver("wired", {
        "serial": {"port": sim.device, "baud": 2400, "parity": "N", "timeout_ms": 100},
        "interval_s": 1.5, "response_timeout_ms": 250, "retries": 1, "keys_dir": str(keys),
        "meters": [{"primary": 5, "name": "heat"}, {"secondary": "44001122"}]}, sink)
    assert d.meters[0].key == KEY, "the key stored by the console is read at start"
    d.start()
    try:
        assert wait_for(lambda: d.cycles >= 1)
        got = in_thread(lambda: d.read_now("44001122"))
        energy = next(r for r in got if isinstance(r, Reading) and r.quantity == "Energy")
        assert energy.meter_id == "44001122" and energy.unit == "kWh"
        assert abs(energy.mantissa - sim.meter("44001122").energy_wh() // 1000) <= 1
        assert energy in sink.readings("44001122")
        with pytest.raises(KeyError):
            d.read_now("99999999")

        items: list[dict[str, Any]] = []
        cycles = d.cycles
        devices = in_thread(lambda: d.scan(progress=items.append), 120)
        assert sorted(x["id"] for x in devices) == ["12345678", "44001122", "45001199"]
        by_id = {x["id"]: x for x in devices}
        assert by_id["44001122"]["secondary"] == "4400112277041407"
        assert by_id["44001122"]["configured"] and not by_id["45001199"]["configured"]
        assert by_id["12345678"]["configured"], "known by the id it reports (heat, primary 5)"
        assert {"progress": "FFFFFFFF: collision", "selections": 1} in items
        assert [x for x in items if "id" in x] == devices
        assert d.cycles > cycles, "polling went on during the scan"

        in_thread(lambda: d.set_key("heat", bytes(range(1, 17))))
        assert d.meters[0].key == bytes(range(1, 17))
        with pytest.raises(ValueError):
            d.set_key("heat", bytes(8))
        assert d.bus_state()["state"] == "open"
    finally:
        d.stop()
        sim.stop()


# --------------------------------------------------------------------------- wM-Bus


def radio_meters() -> list[Any]:
    from tools.sim.wmbus import SimRadioMeter
    ms = [SimRadioMeter("22222222", "APA", 0x05, 0x07, KEY, "mode5", rssi_dbm=-61),
          SimRadioMeter("55555555", "KAM", 0x01, 0x07, KEY, "mode5", rssi_dbm=-70),
          SimRadioMeter("12121212", "ZZZ", 0x02, 0x03, KEY, "mode5", rssi_dbm=-80)]
    for m in ms:
        m.interval_s = 0.3
    return ms


def test_wmbus_listen_read_now_and_set_key(tmp_path: Path) -> None:
    from gateway.drivers.wmbus import WMBusDriver
    from tools.sim.wmbus import start
    sim = start("im871a", radio_meters())
    sink = Sink()
    d = WMBusDriver("radio", {
        "dongle": "im871a", "mode": "t1", "event_interval_s": 0,
        "serial": {"port": sim.device, "baud": 57600, "parity": "N", "timeout_ms": 100},
        "keys_dir": str(tmp_path / "keys"),
        "meters": [{"id": "22222222", "key": KEY}, {"id": "55555555", "key": WRONG}]}, sink)
    d.start()
    try:
        heard: list[dict[str, Any]] = []
        in_thread(lambda: d.listen(1.5, heard.append))
        seen = {(h["id"], h["manufacturer"], h["known"], h["result"]) for h in heard}
        assert ("22222222", "APA", True, "ok") in seen
        assert ("55555555", "KAM", True, "meter.decrypt_failed") in seen
        assert ("12121212", "ZZZ", False, "not configured") in seen, "unknown meters too"
        unknown = next(h for h in heard if h["id"] == "12121212")
        assert (unknown["rssi_dbm"], unknown["version"], unknown["device_type"]) == \
            (-80, 2, "gas")
        n = len(heard)
        time.sleep(0.5)
        assert len(heard) == n, "the listener is gone once listen returned"

        # a console that went away (callback returns False) ends listen early
        t0 = time.monotonic()
        in_thread(lambda: d.listen(30, lambda item: False))
        assert time.monotonic() - t0 < 10

        got = in_thread(lambda: d.read_now("22222222"))
        assert {r.quantity for r in got} >= {"Volume", "Volume flow"}
        assert all(r in sink.readings("22222222") for r in got)
        with pytest.raises(TimeoutError, match="decrypt"):
            d.read_now("55555555", wait_s=0.2)

        assert not sink.readings("55555555")
        in_thread(lambda: d.set_key("55555555", KEY))
        # the last undecodable telegram is decoded again at once with the new key
        assert sink.readings("55555555")
        recovered = sink.events("meter.recovered", "55555555")
        assert recovered and recovered[0].detail.get("retried_with_new_key")
        n = len(sink.readings("55555555"))
        assert wait_for(lambda: len(sink.readings("55555555")) > n), "and the next one too"
        assert d.bus_state()["state"] == "listening"
    finally:
        d.stop()
        sim.stop()


def test_wmbus_reads_the_key_stored_by_the_console(tmp_path: Path) -> None:
    from gateway.drivers.wmbus import WMBusDriver
    keys = tmp_path / "keys"
    write_key(keys, "kitchen", KEY)
    (keys / "22222222.key").write_text("not hex\n")
    d = WMBusDriver("radio", {
        "dongle": "im871a", "serial": {"port": "/nonexistent"}, "keys_dir": str(keys),
        "meters": [{"id": "55555555", "key": WRONG, "name": "kitchen"},
                   {"id": "22222222", "key": WRONG}]}, Sink())
    assert d.meters["55555555"][0].key == KEY
    assert d.meters["22222222"][0].key == WRONG, "a bad key file is ignored (and logged)"
    d.set_key("22222222", KEY)  # not running: applied directly
    assert d.meters["22222222"][0].key == KEY


# --------------------------------------------------------------------------- the console


@pytest.fixture(scope="module")
def buses(pki: Path, module_broker: Broker,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real gateway reading a simulated M-Bus, a wM-Bus dongle (one meter configured with
    a wrong key) and an IEC 62056-21 meter."""
    from tests.test_console import _start, _stop
    from tools.sim import iec62056_21, mbus, wmbus
    tmp = tmp_path_factory.mktemp("buses")
    sims = [mbus.start(), wmbus.start("im871a", radio_meters()), iec62056_21.start(1)]
    wired, radio, optical = sims
    drivers = [
        {"type": "mbus", "name": "wired", "interval_s": 600, "response_timeout_ms": 250,
         "retries": 1, "serial": {"port": wired.device, "baud": 2400, "parity": "N"},
         "meters": [{"primary": 5, "name": "heat"}, {"secondary": "44001122"}]},
        {"type": "wmbus", "name": "radio", "dongle": "im871a", "event_interval_s": 0,
         "serial": {"port": radio.device, "baud": 57600, "parity": "N"},
         "meters": [{"id": "22222222", "key": KEY.hex()},
                    {"id": "55555555", "key": WRONG.hex()}]},
        {"type": "iec62056-21", "name": "optical", "interval_s": 600, "reply_timeout_ms": 500,
         "baud_switch_delay_ms": 20, "serial": {"port": optical.device},
         "meters": [{"id": "elec-1", "address": "10000001"}]},
    ]
    gw = _start(tmp, pki, module_broker.port, drivers)
    try:
        assert gw.proc.wait_for_log("uplink: connected", 30), gw.proc.text()
        yield gw
    finally:
        try:
            _stop(gw)
        finally:
            for s in sims:
                s.stop()


def test_console_read_on_every_bus(buses: Any) -> None:
    r = buses.json("read", "heat")
    assert r["bus"] == "wired"
    energy = [x for x in r["records"] if x.get("quantity") == "Energy"]
    assert energy and energy[0]["unit"] == "kWh" and energy[0]["meter_id"] == "heat"
    r = buses.json("read", "elec-1")
    assert r["bus"] == "optical"
    assert {x["quantity"] for x in r["records"]} >= {"1-0:1.8.0", "1-0:32.7.0"}
    r = buses.json("read", "22222222")
    assert r["bus"] == "radio" and any(x["quantity"] == "Volume" for x in r["records"])
    text = buses.console("read", "heat")
    assert text.returncode == 0 and "heat on wired" in text.stdout and "kWh" in text.stdout
    st = buses.json("status")
    by_bus = {b["name"]: b for b in st["buses"]}
    assert by_bus["wired"]["bus"]["state"] == "open"
    assert by_bus["radio"]["bus"]["state"] == "listening"
    assert by_bus["optical"]["bus"]["state"] == "open"
    assert buses.json("diag")["overall"] in ("ok", "warn", "fail")  # M-Bus counters parse
    rows = {m["id"]: m for m in buses.json("meters")["meters"]}
    assert rows["heat"]["success"] >= 1 and rows["heat"]["success_ratio"] == 1.0


def test_console_listen_wmbus(buses: Any) -> None:
    r = buses.console("listen", "wmbus", "2", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    end = lines[-1]["end"]
    items = lines[:-1]
    assert end["bus"] == "radio" and end["heard"] == len(items) >= 3
    unknown = [i for i in items if i["id"] == "12121212"]
    assert unknown and unknown[0]["known"] is False and unknown[0]["manufacturer"] == "ZZZ"
    assert unknown[0]["rssi_dbm"] == -80 and unknown[0]["device_type"] == "gas"
    text = buses.console("listen", "wmbus", "1")
    assert text.returncode == 0 and "ZZZ  12121212" in text.stdout and "UNKNOWN" in text.stdout
    assert "telegrams heard on radio" in text.stdout


def test_console_scan_mbus(buses: Any) -> None:
    r = buses.console("scan", "mbus", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    end = lines[-1]["end"]
    assert end["bus"] == "wired"
    assert sorted(d["id"] for d in end["devices"]) == ["12345678", "44001122", "45001199"]
    assert any("progress" in x for x in lines[:-1])
    text = buses.console("scan", "wired")
    assert text.returncode == 0 and "3 devices found on wired" in text.stdout
    assert "found secondary=4400112277041407" in text.stdout


def test_console_keys_set_fixes_a_wrong_key(buses: Any) -> None:
    before = buses.json("meter", "55555555")
    assert before["stats"]["failures"].get("meter.decrypt_failed", 0) >= 1
    r = buses.console("keys", "set", "55555555", stdin=KEY.hex() + "\n")
    assert r.returncode == 0, r.stderr
    assert "in use by radio" in r.stdout and KEY.hex() not in r.stdout
    path = buses.tmp / "keys" / "55555555.key"
    assert path.read_text().strip() == KEY.hex()
    assert os.stat(path).st_mode & 0o777 == 0o600

    def decoded() -> bool:
        m = buses.json("meter", "55555555")
        return any(x["quantity"] == "Volume" for x in m.get("last_readings") or [])
    assert wait_for(decoded, 30), "the next telegram decodes with the new key"
    r = buses.json("read", "55555555")
    assert any(x["quantity"] == "Volume" for x in r["records"])
    assert KEY.hex() not in buses.proc.text().lower(), "the key is never logged"
    entry = [e for e in buses.audit() if e["command"] == "keys set"][-1]
    assert KEY.hex() not in json.dumps(entry).lower()


def test_console_keys_set_refuses_wrong_sizes_and_meters_without_keys(buses: Any) -> None:
    r = buses.console("keys", "set", "22222222", stdin="00112233\n")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert ("22222222 on radio (type wmbus) needs a key of 16 bytes (32 hex digits); got 4 "
            "bytes (8 hex digits); nothing was stored") in r.stderr
    assert not (buses.tmp / "keys" / "22222222.key").exists()
    r = buses.console("keys", "set", "elec-1", stdin=KEY.hex() + "\n")
    assert r.returncode == 2 and "elec-1 takes no key; nothing was stored" in r.stderr
    r = buses.console("keys", "set", "nosuch", stdin=KEY.hex() + "\n")
    assert r.returncode == 1 and "no meter 'nosuch' on any bus" in r.stderr
    assert not (buses.tmp / "keys" / "nosuch.key").exists()
    # the gateway refuses them too, whatever the client sends
    j = buses.console("keys", "set", "heat", "--json", stdin=(KEY * 2).hex() + "\n")
    err = json.loads(j.stdout.splitlines()[-1])["error"]
    assert err["code"] == "bad_key" and "needs a key of 16 bytes" in err["message"]


def test_console_listen_stopped_early_says_how_long(buses: Any) -> None:
    from tests.test_console import Term
    env = {**os.environ, "NO_COLOR": "1", "TERM": "vt100"}
    t = Term([sys.executable, "-m", "gateway", "console", "--socket", buses.sock, "listen",
              "wmbus", "30"], env)
    try:
        t.expect(r"12121212")  # a telegram heard: then Ctrl-C
        t.send("\x03")
        m = t.expect(r"-- \d+ telegrams? heard on radio in ([\d.]+) s \(stopped early; "
                     r"asked for 30 s\)")
        assert float(m.group(1)) < 30
        assert t.p.wait(20) == 0
    finally:
        t.close()

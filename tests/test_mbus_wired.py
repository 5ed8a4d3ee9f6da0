"""Wired M-Bus: FT 1.2 frames, the frame decoder, secondary addresses, and real serial I/O
over a pseudo-terminal with the bus simulator: multi-telegram readout, FCB repeat after a
lost or damaged answer, secondary scan with wildcards, the driver, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli import main as cli_main
from gateway.drivers.mbus import MBusDriver, MBusMaster, open_port
from gateway.protocols.mbus import wired
from gateway.protocols.mbus.errors import ChecksumError, FrameError, MBusError, TruncatedError
from tools.sim.mbus import MBusBusSimulator, start
from tests.sinks import Sink
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((Path(__file__).parent / "vectors" / "mbus.json").read_text())
WIRED_HEX = [v["hex"] for v in VECTORS["vectors"] if v["protocol"] == "mbus_wired"]


# --------------------------------------------------------------------------- frames

def test_frame_encodings() -> None:
    assert wired.snd_nke(5) == bytes.fromhex("1040054516")
    assert wired.req_ud2(5, True) == bytes.fromhex("107B058016")
    assert wired.req_ud2(5, False) == bytes.fromhex("105B056016")
    assert wired.encode(wired.Ack()) == b"\xe5"
    ctl = wired.encode(wired.LongFrame(0x53, 0xFD, 0x50))  # control frame: no user data
    assert ctl == bytes.fromhex("6803036853FD50A016")


@pytest.mark.parametrize("hexstr", WIRED_HEX)
def test_long_frame_round_trip(hexstr: str) -> None:
    raw = bytes.fromhex(hexstr)
    frame, rest = wired.deserialize(raw)
    assert rest == b"" and isinstance(frame, wired.LongFrame) and frame.is_rsp_ud
    assert wired.encode(frame) == raw


def test_deserialize_errors() -> None:
    good = bytes.fromhex(WIRED_HEX[4])
    with pytest.raises(TruncatedError):
        wired.deserialize(good[:-3])
    with pytest.raises(ChecksumError):
        wired.deserialize(good[:-2] + bytes(((good[-2] + 1) & 0xFF,)) + good[-1:])
    with pytest.raises(FrameError, match="stop byte"):
        wired.deserialize(good[:-1] + b"\x00")
    with pytest.raises(FrameError, match="lengths differ"):
        wired.deserialize(bytes.fromhex("6805066808"))
    with pytest.raises(FrameError, match="not a start byte"):
        wired.deserialize(b"\x00")
    with pytest.raises(FrameError, match="not RSP_UD"):
        wired.decode_rsp_ud(wired.encode(wired.LongFrame(0x53, 1, 0x72, bytes(12))))


def test_decoder_byte_by_byte_with_garbage() -> None:
    frames = [bytes.fromhex(h) for h in WIRED_HEX]
    stream = b"\x00\xff" + frames[0] + b"\xe5" + b"\x68\x01\x02" + frames[1] + \
        wired.snd_nke(3) + frames[2]
    dec = wired.FrameDecoder()
    got: list[Any] = []
    for b in stream:
        dec.receive_data(bytes((b,)))
        while not isinstance(ev := dec.next_event(), wired.NeedData):
            got.append(ev)
    assert [type(f).__name__ for f in got] == ["LongFrame", "Ack", "LongFrame", "ShortFrame",
                                              "LongFrame"]
    assert [wired.encode(f) for f in got if isinstance(f, wired.LongFrame)] == \
        [frames[0], frames[1], frames[2]]
    assert dec.skipped >= 2 and dec.errors >= 1


@given(st.binary(max_size=400))
def test_decoder_survives_random_bytes(data: bytes) -> None:
    dec = wired.FrameDecoder()
    dec.receive_data(data)
    for _ in range(500):
        ev = dec.next_event()
        if isinstance(ev, wired.NeedData):
            break
        if isinstance(ev, wired.LongFrame) and ev.is_rsp_ud:
            try:
                wired.decode_rsp_ud(ev)
            except MBusError:
                pass


@given(st.binary(max_size=300))
def test_deserialize_raises_only_mbus_errors(data: bytes) -> None:
    try:
        frame, rest = wired.deserialize(data)
    except MBusError:
        return
    assert wired.encode(frame) + rest == data or isinstance(frame, wired.Ack)


def test_secondary_masks() -> None:
    m = wired.SecondaryMask.parse("1234FFFF")
    assert m.matches("12345678", "KAM", 1, 4) and not m.matches("12355678", "KAM", 1, 4)
    full = wired.SecondaryMask.parse("123456782D2C0804")
    assert (full.manufacturer, full.version, full.medium) == ("KAM", 8, 4)
    assert str(full) == "123456782D2C0804"
    assert wired.SecondaryMask.decode(full.encode()) == full
    assert wired.select_secondary(m).hex().upper() == \
        "680B0B6853FD52FFFF3412FFFFFFFF" + "%02X" % ((0x53 + 0xFD + 0x52 + 0xFF * 2 + 0x34
                                                     + 0x12 + 0xFF * 4) & 0xFF) + "16"
    with pytest.raises(ValueError):
        wired.SecondaryMask("12AB5678")


# --------------------------------------------------------------------------- over a pty

@pytest.fixture
def sim() -> Iterator[MBusBusSimulator]:
    s = start()
    yield s
    s.stop()


@pytest.fixture
def master(sim: MBusBusSimulator) -> Iterator[MBusMaster]:
    opts = {"port": sim.device, "baud": 2400, "parity": "N", "timeout_ms": 100}
    ser = open_port(opts)
    yield MBusMaster(ser, opts, timeout_s=0.4, retries=2)
    ser.close()


def test_multi_telegram_readout(sim: MBusBusSimulator, master: MBusMaster) -> None:
    master.snd_nke(5)
    telegrams = master.read_telegrams(5)
    assert [t.more_records_follow for t in telegrams] == [True, True, False]
    keys = [r.key for t in telegrams for r in t.records]
    # every telegram exactly once, in order: none skipped, none doubled
    assert keys == ["Energy", "Volume", "Power", "Flow temperature", "Return temperature",
                    "Date and time"] + [f"Energy/storage={s}" for s in range(5, 13)]
    # the FCB alternated 1,0,1 after SND_NKE
    reqs = [c for c, a in sim.meter(5).requests if c & 0xDF == wired.C_REQ_UD2]
    assert reqs == [0x7B, 0x5B, 0x7B]


def test_lost_and_damaged_answers_are_repeated_with_the_same_fcb(
        sim: MBusBusSimulator, master: MBusMaster) -> None:
    m = sim.meter(5)
    master.snd_nke(5)
    m.drop, m.corrupt = 1, 1  # first answer lost, the repeat damaged
    telegrams = master.read_telegrams(5)
    assert len(telegrams) == 3
    reqs = [c for c, a in m.requests if c & 0xDF == wired.C_REQ_UD2]
    assert reqs == [0x7B, 0x7B, 0x7B, 0x5B, 0x7B]  # same FCB until a good answer
    assert m.repeats == 2  # the slave resent telegram 1 instead of skipping to telegram 2
    # two repeats; how each failure is classified (lost, damaged, late) depends on timing on
    # a loaded machine, so only the total is pinned
    assert master.stats.retries == 2
    assert 1 <= master.stats.timeouts + master.stats.crc_errors + master.stats.garbled <= 2
    keys = [r.key for t in telegrams for r in t.records]
    assert len(set(keys)) == len(keys)


def test_secondary_scan_with_wildcards(sim: MBusBusSimulator, master: MBusMaster) -> None:
    master.timeout_s = 0.25
    found = master.scan_secondary(wired.SecondaryMask())
    ids = sorted(t.id for t in found if not isinstance(t, tuple))
    assert ids == ["12345678", "44001122", "45001199"]
    assert sim.collisions >= 2  # FFFFFFFF, then 4FFFFFFF: two meters answer at once
    # a deep collision: two ids equal in 6 digits, found from a narrowed mask
    sim.meter(7).ident = "44001199"
    narrowed = master.scan_secondary(wired.SecondaryMask("440011FF"))
    assert sorted(t.id for t in narrowed) == ["44001122", "44001199"]


def test_select_by_secondary_address(sim: MBusBusSimulator, master: MBusMaster) -> None:
    assert master.select(wired.SecondaryMask("45001199")) == "single"
    (t,) = master.read_telegrams(wired.ADDRESS_NETWORK_LAYER)
    assert (t.id, t.manufacturer) == ("45001199", "EFE")
    assert master.select(wired.SecondaryMask("4FFFFFFF")) == "collision"
    assert master.select(wired.SecondaryMask("99999999")) == "none"


def test_scan_command(sim: MBusBusSimulator) -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "scan", "mbus", "--port", sim.device,
                          "--parity", "N", "--timeout-ms", "250", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    # IIIIIIII MMMM VV DD with the manufacturer bytes in wire order, as libmbus prints them
    assert sorted(m["secondary"] for m in result["meters"]) == [
        "123456782D2C0804", "4400112277041407", "45001199C5140006"]
    bad = subprocess.run([sys.executable, "-m", "gateway", "scan", "mbus", "--port",
                          "/dev/nonexistent-tty"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "cannot open serial port" in bad.stderr


def test_decode_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["decode", "mbus", WIRED_HEX[4], "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert {k: obj[k] for k in ("manufacturer", "id", "version", "access_number", "status")} \
        == {"manufacturer": "HYD", "id": "12345678", "version": 42, "access_number": 38,
            "status": 0}
    assert obj["device_type"] == "heat (outlet)"
    assert obj["records"][1] == {"quantity": "Volume", "value": "703.476", "unit": "m3",
                                 "storage": 0, "tariff": 0, "subunit": 0,
                                 "function": "instantaneous", "type": "number"}
    assert cli_main(["decode", "mbus", WIRED_HEX[4][:-4] + "0016"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: mbus: long frame: checksum") and "\n" not in err
    assert cli_main(["decode", "mbus", "zz"]) == 2
    assert cli_main(["decode", "mbus", WIRED_HEX[0]]) == 0
    assert "Energy" in capsys.readouterr().out


# --------------------------------------------------------------------------- the driver


def test_driver_reads_all_meters_and_recovers_a_failed_one(sim: MBusBusSimulator) -> None:
    sink = Sink()
    opts = {"serial": {"port": sim.device, "baud": 2400, "parity": "N", "timeout_ms": 100},
            "interval_s": 0.2, "retries": 1, "response_timeout_ms": 500, "max_telegrams": 8,
            "reset": True, "event_interval_s": 0,
            "meters": [{"primary": 5}, {"secondary": "44001122", "name": "water-1"},
                       {"secondary": "45001199"}, {"primary": 9}]}
    drv = MBusDriver("heat-bus", opts, sink)
    drv.start()
    try:
        assert wait_for(lambda: len(sink.readings("12345678")) >= 2 * 18)
        first = {r.quantity: r for r in sink.readings("12345678")}
        assert first["Energy"].unit == "kWh" and first["Energy"].exponent == 0
        assert "Energy/storage=12" in first  # from the third telegram
        assert wait_for(lambda: sink.readings("water-1") and sink.readings("45001199"))
        assert wait_for(lambda: sink.events("meter.read_failed"))
        assert "primary-9" in {e.meter_id for e in sink.events("meter.read_failed")}
        # a meter that fails is reported, then read again as soon as it answers
        sim.meter(6).silent = True
        assert wait_for(lambda: any(e.meter_id == "water-1"
                                    for e in sink.events("meter.read_failed")))
        n = len(sink.readings("water-1"))
        sim.meter(6).silent = False
        assert wait_for(lambda: len(sink.readings("water-1")) > n)
        assert any(e.meter_id == "water-1" for e in sink.events("meter.recovered"))
        stats = drv.meter_stats()
        assert stats["water-1"]["reads_failed"] >= 1 and stats["water-1"]["reads_ok"] >= 2
        assert stats["primary-9"]["reads_ok"] == 0
    finally:
        drv.stop()
    assert not drv.is_alive()


def test_driver_reports_a_vanished_port() -> None:
    sink = Sink()
    opts = {"serial": {"port": "/dev/nonexistent-mbus", "baud": 2400, "parity": "N",
                       "timeout_ms": 100},
            "interval_s": 1, "meters": [{"primary": 1}]}
    drv = MBusDriver("bus", opts, sink)
    drv.start()
    try:
        assert wait_for(lambda: sink.events("bus.port_error"), 10)
    finally:
        drv.stop()


def test_config_schema_validates_meters(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_config
    from tests.gwproc import write_config
    pki = tmp_path / "pki"
    pki.mkdir()
    from tools.devpki import make_pki
    make_pki(pki)
    path = write_config(tmp_path, pki, 8883, drivers=[
        {"type": "mbus", "name": "m", "serial": {"port": "/dev/ttyUSB0", "baud": 2400,
                                                 "parity": "E"},
         "meters": [{"primary": 1}, {"secondary": "12345678", "key": "00" * 16}]}])
    cfg = load_config(path)
    assert cfg.drivers[0].options["meters"][1]["key"] == bytes(16)
    assert "00" * 16 not in cfg.summary()
    bad = write_config(tmp_path, pki, 8883, name="bad.yaml", drivers=[
        {"type": "mbus", "name": "m", "serial": {"port": "/dev/ttyUSB0"},
         "meters": [{"primary": 300}, {"primary": 1, "secondary": "12345678"}, {}]}])
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    text = "\n".join(str(i) for i in exc.value.issues)
    assert "meters[0].primary" in text and "meters[1].secondary" in text
    assert "meters[2]" in text


def test_driver_reads_a_plain_text_unit_over_the_bus() -> None:
    from tools.sim.mbus import SimMeter
    sim = start([SimMeter(8, "61150124", "ELV", 0x16, 0x1B, humidity=4564)])
    sink = Sink()
    opts = {"serial": {"port": sim.device, "baud": 2400, "parity": "N", "timeout_ms": 100},
            "interval_s": 0.2, "retries": 1, "response_timeout_ms": 500,
            "meters": [{"primary": 8, "name": "room"}]}
    drv = MBusDriver("bus", opts, sink)
    drv.start()
    try:
        assert wait_for(lambda: sink.readings("room", "%RH"))
    finally:
        drv.stop()
        sim.stop()
    r = sink.readings("room", "%RH")[0]
    assert (r.mantissa, r.exponent, r.unit) == (4564, -2, "")


def test_an_application_error_answer_is_its_own_event() -> None:
    from tools.sim.mbus import SimMeter
    meter = SimMeter(9, "11223344", "KAM", 1, 0x04, app_error=8)
    sim = start([meter])
    sink = Sink()
    opts = {"serial": {"port": sim.device, "baud": 2400, "parity": "N", "timeout_ms": 100},
            "interval_s": 0.2, "retries": 0, "response_timeout_ms": 500,
            "event_interval_s": 0, "meters": [{"primary": 9, "name": "busy"}]}
    drv = MBusDriver("bus", opts, sink)
    drv.start()
    try:
        assert wait_for(lambda: sink.events("meter.application_error", "busy"))
        meter.app_error = None  # the meter is free again: readings, and it recovered
        assert wait_for(lambda: sink.readings("busy"))
    finally:
        drv.stop()
        sim.stop()
    e = sink.events("meter.application_error", "busy")[0]
    assert e.detail["code"] == 8 and e.detail["reason"].startswith("application too busy")
    assert not sink.events("meter.malformed") and not sink.events("meter.unsupported")

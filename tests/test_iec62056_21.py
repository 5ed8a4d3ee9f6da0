"""IEC 62056-21: byte-exact vectors, message codec, fuzzing, and the driver against the
simulated meters over a real pty (modes C/A/B, P1 password, silent meter, bad BCC)."""

from __future__ import annotations

import json
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from tests.sinks import Sink
from hypothesis import given, strategies as st

from gateway.protocols import iec62056_21 as iec
from gateway.model import Event, Reading

VECTORS = json.loads((Path(__file__).parent / "vectors" / "iec62056_21.json").read_text())["vectors"]


def test_mode_c_readout_vector_bcc_and_values():
    v = VECTORS[0]
    raw = bytes.fromhex(v["hex"])
    r = iec.parse_readout(raw)
    assert r.check == "bcc" and iec.bcc(raw[1:-1]) == int(v["expected"]["bcc"], 16)
    got = {d.address: (d.value, d.unit) for d in r.data_sets}
    for addr in ("3:14", "4:15"):
        assert got[addr] == (v["expected"][addr]["value"], v["expected"][addr]["unit"])
    bad = raw[:-1] + bytes([raw[-1] ^ 1])
    with pytest.raises(iec.BccError):
        iec.parse_readout(bad)


def test_p1_style_telegram_vector_crc_and_exact_values():
    from decimal import Decimal
    v = VECTORS[1]
    r = iec.parse_readout(bytes.fromhex(v["hex"]))
    assert r.check == "crc16"
    assert "/" + r.identification.manufacturer + r.identification.baud_char + \
        r.identification.ident == v["expected"]["identification"]
    sets = {d.address: d for d in r.data_sets}
    for obis, exp in v["expected"].items():
        if isinstance(exp, dict):
            m, e = sets[obis].exact()
            assert Decimal(m).scaleb(e) == Decimal(str(exp["value"])) and sets[obis].unit == exp["unit"]
    assert sets["1-0:1.8.0"].exact() == (896020, -3)  # the meter's resolution is kept
    assert sets["0-0:1.0.0"].exact() is None          # a time stamp, not a number


def test_messages_are_byte_exact():
    assert iec.sign_on("12345678") == b"/?12345678!\r\n"
    assert iec.option_select("5") == b"\x06050\r\n"
    assert iec.command("P1", "(secret)") == b"\x01P1\x02(secret)\x03" + bytes([iec.bcc(b"P1\x02(secret)\x03")])
    assert iec.command("B0") == b"\x01B0\x03q"
    ident, rest = iec.Identification.deserialize(b"/LGZ5ZMD310\r\nx")
    assert (ident.mode, ident.max_baud, rest) == ("C", 9600, b"x")
    assert iec.Identification("ABC", "E", "x").mode == "B"
    assert iec.Identification("ABC", "Z", "x").mode == "A"


def test_decoder_handles_split_input_and_bad_bcc():
    dec = iec.Iec62056Decoder()
    good = iec.data_message("1.8.0(1.5*kWh)\r\n")
    bad = good[:-1] + bytes([good[-1] ^ 0x40])
    for b in b"xx/ABC5id\r\n" + bad + good:
        dec.receive_data(bytes([b]))
    events = []
    while (ev := dec.next_event()) is not iec.NEED_DATA:
        events.append(ev)
    assert isinstance(events[0], iec.Identification)
    assert isinstance(events[1], iec.BadBlock) and "BCC" in events[1].reason
    assert events[2] == iec.DataBlock(b"1.8.0(1.5*kWh)\r\n!\r\n")
    assert dec.bcc_errors == 1 and dec.garbage_bytes == 2


def test_software_7e1_parity():
    data = b"/?!\r\n"
    wire = iec.add_even_parity(data)
    assert all(bin(b).count("1") % 2 == 0 for b in wire)
    assert bytes(b & 0x7F for b in wire) == data and iec.parity_errors(wire) == 0


def test_data_sets_with_extra_values():
    sets = iec.parse_data_sets(b"1.8.0(00123.4*kWh)(2402211200)\r\nF.F(00)\r\n")
    assert sets[0] == iec.DataSet("1.8.0", "00123.4", "kWh", ("2402211200",))
    assert iec.normalise_obis("1.8.0") == "1-0:1.8.0" and iec.normalise_obis("F.F") == "F.F"


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_the_codec_error(data):
    try:
        iec.parse_readout(data)
    except iec.Iec62056Error:
        pass
    for side in (False, True):
        dec = iec.Iec62056Decoder(meter_side=side)
        dec.receive_data(data)
        for _ in range(len(data) + 2):
            if dec.next_event() is iec.NEED_DATA:
                break


# --------------------------------------------------------------------------- driver over a pty

ListSink = Sink  # the project's one test sink


def _run(sim, meters, seconds_or_until, **opts):
    from gateway.drivers.iec62056_21 import Iec62056Driver
    sink = ListSink()
    d = Iec62056Driver("iec", {"serial": {"port": sim.device}, "interval_s": 30,
                               "reply_timeout_ms": 400, "baud_switch_delay_ms": 20,
                               "meters": meters, **opts}, sink)
    d.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not seconds_or_until(d):
        time.sleep(0.05)
    d.stop()
    return d, sink


def test_driver_reads_three_meters_one_silent_over_pty():
    from tools.sim.iec62056_21 import start
    sim = start(3, silent=("10000002",))
    try:
        meters = [{"id": f"m{i}", "address": f"1000000{i}"} for i in (1, 2, 3)]
        d, sink = _run(sim, meters, lambda d: all(d.meter_stats()[m]["success"] + d.meter_stats()[m]["failures"] for m in ("m1", "m2", "m3")))
    finally:
        sim.stop()
    stats = d.meter_stats()
    assert stats["m1"]["success"] == 1 and stats["m3"]["success"] == 1
    assert stats["m2"]["failures"] == 1 and stats["m2"]["timeouts"] == 1
    r = {(x.meter_id, x.quantity): x for x in sink.records if isinstance(x, Reading)}
    assert r[("m1", "1-0:32.7.0")].mantissa == 2301 and r[("m1", "1-0:32.7.0")].exponent == -1
    assert r[("m3", "1-0:1.8.0")].exponent == -3 and r[("m3", "1-0:1.8.0")].unit == "kWh"
    assert ("m1", "1-0:0.9.1") not in r  # unitless time, not a register
    ev = [x for x in sink.records if isinstance(x, Event)]
    assert [(e.kind, e.meter_id) for e in ev] == [("meter.read_failed", "m2")]
    assert "no identification" in ev[0].detail["reason"]


def test_driver_password_and_wrong_password():
    from tools.sim.iec62056_21 import start
    sim = start(2, password="pw1234")
    try:
        meters = [{"id": "good", "address": "10000001", "password": "pw1234",
                   "registers": ["1.8.0", "32.7.0"]},
                  {"id": "bad", "address": "10000002", "password": "nope",
                   "registers": ["1.8.0"]}]
        d, sink = _run(sim, meters, lambda d: d.meter_stats()["bad"]["failures"] and d.meter_stats()["good"]["success"])
    finally:
        sim.stop()
    got = sorted(x.quantity for x in sink.records if isinstance(x, Reading))
    assert got == ["1-0:1.8.0", "1-0:32.7.0"]
    assert d.meter_stats()["bad"]["auth_failures"] == 1
    assert any(isinstance(x, Event) and x.kind == "meter.auth_failed" for x in sink.records)


def test_driver_bad_bcc_is_nakked_then_reported():
    from tools.sim.iec62056_21 import start
    sim = start(1, bad_bcc=True)
    try:
        d, sink = _run(sim, [{"id": "m", "address": "10000001"}], lambda d: d.meter_stats()["m"]["failures"], retries=1)
    finally:
        sim.stop()
    s = d.meter_stats()["m"]
    assert s["bcc_errors"] == 2 and s["retries"] == 1
    assert [x.kind for x in sink.records] == ["meter.crc_error"]


@pytest.mark.parametrize("baud_char,mode", [("E", "B"), ("X", "A")])
def test_driver_modes_a_and_b(baud_char, mode):
    from tools.sim.iec62056_21 import start
    sim = start(1, baud_char=baud_char)
    try:
        d, sink = _run(sim, [{"id": "m", "address": "10000001", "mode": mode.lower()}],
                       lambda d: d.meter_stats()["m"]["success"])
    finally:
        sim.stop()
    assert any(x.quantity == "1-0:1.8.0" for x in sink.records if isinstance(x, Reading))


# --------------------------------------------------------------------------- mode D (push)

def test_push_splitter_cuts_the_p1_vector_out_of_noise_with_or_without_a_line_end():
    data = bytes.fromhex(VECTORS[1]["hex"])  # ends "!A077", no CR LF after the CRC
    for tail in (b"", b"\r\n"):
        sp = iec.PushSplitter()
        sp.receive_data(b"\x00\x7fnoise\r\n" + data + tail + b"/LGF5E360\r\n")  # next one starts
        t = sp.next_telegram()
        assert t == data + tail and iec.parse_readout(t).check == "crc16"
        assert sp.garbage_bytes == 7 and sp.next_telegram() is None
    sp = iec.PushSplitter()
    sp.receive_data(data)
    assert sp.next_telegram() is None  # "!A077" may still be followed by CR LF...
    assert sp.flush() == data          # ...until the line goes quiet


@given(st.binary(max_size=400), st.integers(1, 50))
def test_push_splitter_never_raises_and_parse_only_raises_the_codec_error(data, chunk):
    sp = iec.PushSplitter()
    for i in range(0, len(data), chunk):
        sp.receive_data(data[i:i + chunk])
        for t in (sp.next_telegram(), sp.flush()):
            if t is not None:
                assert t.startswith(b"/")
                try:
                    iec.parse_readout(t)
                except iec.Iec62056Error:
                    pass


@pytest.mark.parametrize("fmt", ["crc", "bcc", "plain"])
def test_driver_listens_to_a_mode_d_meter(fmt):
    from tools.sim.iec62056_21 import start
    sim = start(1, push_s=0.2, push_format=fmt)
    try:
        d, sink = _run(sim, [{"id": "d1", "mode": "d"}],
                       lambda d: d.meter_stats()["d1"]["success"] >= 3,
                       interval_s=0.2, serial={"port": sim.device, "baud": 9600})
    finally:
        sim.stop()
    assert d.meter_stats()["d1"]["success"] >= 3 and sim.sign_ons == 0  # never asked
    r = [x for x in sink.records if isinstance(x, Reading) and x.quantity == "1-0:1.8.0"]
    assert len(r) >= 3 and r[0].unit == "kWh" and r[0].meter_id == "d1"
    assert not [x for x in sink.records if isinstance(x, Event)]


def test_mode_d_bad_checks_are_counted_and_silence_is_reported_once():
    from tools.sim.iec62056_21 import start
    sim = start(1, push_s=0.1, bad_bcc=True)
    try:
        d, sink = _run(sim, [{"id": "d1", "mode": "d"}],
                       lambda d: d.meter_stats()["d1"]["bcc_errors"] >= 5,
                       interval_s=0.1, serial={"port": sim.device, "baud": 9600})
        assert d.meter_stats()["d1"]["success"] == 0
        crc = [e for e in sink.records if isinstance(e, Event) and e.kind == "meter.crc_error"]
        assert len(crc) == 1 and "CRC mismatch" in crc[0].detail["reason"]  # once a minute
        sim.meters[0].silent = True
        d2, sink2 = _run(sim, [{"id": "d1", "mode": "d"}],
                         lambda d: d.meter_stats()["d1"]["timeouts"] >= 1,
                         interval_s=0.1, serial={"port": sim.device, "baud": 9600})
    finally:
        sim.stop()
    silent = [e for e in sink2.records if isinstance(e, Event)]
    assert [e.kind for e in silent] == ["meter.read_failed"]
    assert "no push telegram" in silent[0].detail["reason"]


def test_a_mode_d_meter_must_be_alone_on_its_port(tmp_path):
    from gateway.config import ConfigError, load_config
    from tests.configs import config_with_driver
    p = config_with_driver(tmp_path, "  - type: iec62056-21\n"
                                     "    name: d0\n"
                                     "    serial: {port: /dev/ttyUSB0, baud: 9600}\n"
                                     "    meters: [{id: a, mode: d}, {id: b}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "drivers[0].meters" in str(e.value) and "only meter on its port" in str(e.value)


def test_console_read_of_a_mode_d_meter_returns_its_next_telegram():
    from gateway.drivers.iec62056_21 import Iec62056Driver
    from tools.sim.iec62056_21 import start
    sim = start(1, push_s=0.3)
    d = Iec62056Driver("iec", {"serial": {"port": sim.device, "baud": 9600}, "interval_s": 0.3,
                               "meters": [{"id": "d1", "mode": "d"}]}, ListSink())
    d.start()
    try:
        got = d.read_now("d1")
        assert {r.quantity for r in got} >= {"1-0:1.8.0", "1-0:32.7.0"}
        sim.meters[0].silent = True
        with pytest.raises(RuntimeError, match="pushed nothing valid"):
            d.read_now("d1")
    finally:
        d.stop()
        sim.stop()

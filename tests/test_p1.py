"""P1 (DSMR / IEC 62056-21 mode D): byte-exact regression tests of issue 14 (values after a
timestamp group, DSMR 2.2/3 gas, CRC leniency, trailing lines, exact values at any length),
property-based mutations of corpus telegrams, and the mode D driver over a real pty:
meter time stamps in the readings, and a codec that raises anything does not stop it."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.sinks import Sink
from hypothesis import given, settings, strategies as st

from gateway.model import QUALITY_HISTORIC, Event, Reading
from gateway.protocols import iec62056_21 as iec
from gateway.protocols import p1

CORPUS = {t["id"]: t["telegram_latin1"].encode("latin-1") for t in
          json.loads((Path(__file__).parent / "corpus" / "p1.json").read_text())["p1"]}
V4_2 = CORPUS["dsmr_parser:TELEGRAM_V4_2"]


def _ms(*args: int, hours: int = 0) -> int:
    """ms of a wall-clock time at UTC+hours."""
    return int(dt.datetime(*args, tzinfo=dt.timezone(dt.timedelta(hours=hours))).timestamp()) * 1000


def with_crc(text: str) -> bytes:
    """A telegram with its CRC-16/ARC written after '!' (4 hex digits)."""
    head = text.encode("latin-1")
    return head + f"{iec.crc16_arc(head):04X}\r\n".encode()


def recrc(raw: bytes) -> bytes:
    """The telegram with the CRC after its end mark recomputed (a mutation then reaches the
    parser instead of stopping at the checksum); unchanged if it has no end mark."""
    start, bang = raw.find(b"/"), raw.find(b"\n!")
    if start < 0 or bang < start:
        return raw
    end = bang + 2
    crc = iec.crc16_arc(bytes(b & 0x7F for b in raw[start:end]))
    tail = raw[end:]
    nl = tail.find(b"\n")
    return raw[:end] + f"{crc:04X}".encode() + (tail[nl - 1:] if nl > 0 else b"\r\n")


# --------------------------------------------------------------------------- item 1

def test_gas_value_after_a_timestamp_group_with_its_winter_time():
    tg = p1.parse_p1(V4_2)
    gas = tg.get("0-1:24.2.1")
    assert (gas.value, gas.unit, gas.exact()) == (Decimal("981.443"), "m3", (981443, -3))
    assert gas.ts_ms == _ms(2016, 11, 29, 20, 0, 0, hours=1)  # W = UTC+1
    assert tg.meter_ts_ms == _ms(2016, 11, 13, 20, 57, 57, hours=1)
    assert tg.check == "crc16"


def test_summer_time_flag_is_utc_plus_2():
    tg = p1.parse_p1(CORPUS["dsmr_parser:TELEGRAM_V5_TWO_MBUS"])
    assert tg.get("0-2:24.2.1").ts_ms == _ms(2020, 4, 26, 22, 30, 1, hours=2)
    assert tg.get("0-2:24.2.1").value == Decimal("246.138")
    assert tg.get("0-1:24.2.1").value == 0 and tg.get("0-1:24.2.1").unit == ""


FLUVIUS = ("/FLU5\\253769484_A\r\n\r\n"
           "0-0:96.1.4(50217)\r\n"
           "0-0:1.0.0(200512135409S)\r\n"
           "1-0:1.8.1(000000.034*kWh)\r\n"
           "1-0:1.6.0(200509134558S)(02.589*kW)\r\n"
           "0-0:98.1.0(3)(1-0:1.6.0)(1-0:1.6.0)(200501000000S)(200423192538S)(03.695*kW)"
           "(200401000000S)(200305122139S)(05.980*kW)(200301000000S)(200210035421W)(04.318*kW)\r\n"
           "0-1:24.1.0(003)\r\n"
           "0-1:96.1.1(37464C4F32313139303333373333)\r\n"
           "0-1:24.2.3(200512134558S)(00112.384*m3)\r\n"
           "0-2:24.1.0(007)\r\n"
           "0-2:24.2.1(200512134558S)(00872.234*m3)\r\n"
           "!")


def test_fluvius_peak_demand_channels_and_monthly_peaks():
    tg = p1.parse_p1(with_crc(FLUVIUS))
    peak = tg.get("1-0:1.6.0")
    assert (peak.value, peak.unit, peak.ts_ms) == (Decimal("2.589"), "kW",
                                                   _ms(2020, 5, 9, 13, 45, 58, hours=2))
    assert tg.get("0-1:24.2.3").value == Decimal("112.384")
    assert tg.get("0-2:24.2.1").value == Decimal("872.234")
    hist = [v for v in tg.values if v.obis == "0-0:98.1.0" and v.buffer]
    assert [(v.value, v.unit, v.source, v.buffer) for v in hist] == [
        (Decimal("3.695"), "kW", "1-0:1.6.0", True), (Decimal("5.980"), "kW", "1-0:1.6.0", True),
        (Decimal("4.318"), "kW", "1-0:1.6.0", True)]
    assert hist[2].ts_ms == _ms(2020, 2, 10, 3, 54, 21, hours=1)  # the peak's own time
    count = tg.get("0-0:98.1.0")  # the line's own value: how many entries it holds
    assert (count.value, count.unit, count.buffer) == (3, "", False)


def test_power_failure_log_is_a_buffer_not_a_register():
    tg = p1.parse_p1(V4_2)
    log = [v for v in tg.values if v.obis == "1-0:99.97.0" and v.buffer]
    assert [(v.value, v.unit, v.buffer) for v in log] == [
        (Decimal("237126"), "s", True), (Decimal("2147583646"), "s", True),
        (Decimal("2317482647"), "s", True)]
    assert log[0].ts_ms == _ms(2000, 1, 4, 18, 3, 20, hours=1)


# --------------------------------------------------------------------------- item 2

V2_2 = ("/ISk5\\2MT382-1004\r\n\r\n"
        "0-0:96.1.1(00000000000000)\r\n"
        "1-0:1.8.1(00001.001*kWh)\r\n"
        "1-0:1.7.0(0001.01*kW)\r\n"
        "0-1:24.1.0(3)\r\n"
        "0-1:24.3.0(161107190000)(00)(60)(1)(0-1:24.2.1)(m3)\r\n"
        "(00001.001)\r\n"
        "0-1:24.4.0(1)\r\n"
        "!\r\n").encode()


def test_dsmr_2_2_gas_profile_with_its_value_on_the_next_line():
    tg = p1.parse_p1(V2_2)
    gas = tg.get("0-1:24.3.0")
    assert (gas.value, gas.unit, gas.source) == (Decimal("1.001"), "m3", "0-1:24.2.1")
    assert gas.ts_ms == _ms(2016, 11, 7, 19, 0, 0, hours=1)  # no flag: Amsterdam, CET
    assert tg.get("0-1:24.2.1") is gas  # looked up by the object it captured, too
    assert all(v.obis for v in tg.values)  # no value with an empty OBIS code
    assert tg.check == "none" and tg.meter_ts_ms is None
    sets = iec.parse_readout(V2_2).data_sets  # the data-set view agrees: no empty address
    assert all(ds.address for ds in sets)
    assert [ds.extra for ds in sets if ds.address == "0-1:24.3.0"] == [
        ("00", "60", "1", "0-1:24.2.1", "m3", "00001.001")]


def test_a_time_zone_for_flagless_stamps_can_be_given():
    tg = p1.parse_p1(V2_2, tz=dt.timezone.utc)
    assert tg.get("0-1:24.3.0").ts_ms == _ms(2016, 11, 7, 19, 0, 0)


# --------------------------------------------------------------------------- item 8

def test_short_crc_is_zero_padded_and_checked():
    raw = CORPUS["dsmr_parser:TELEGRAM_UNPADDED_CRC"]
    assert raw.endswith(b"!B9F\r\n")
    tg = p1.parse_p1(raw)
    assert tg.check == "crc16" and tg.get("0-1:24.2.1").value == Decimal("240.860")
    with pytest.raises(iec.BccError, match="says 0B9E"):
        p1.parse_p1(raw.replace(b"!B9F", b"!B9E"))
    with pytest.raises(p1.P1Error, match="1-4 hex digits"):
        p1.parse_p1(raw.replace(b"!B9F", b"!0B9F0"))
    with pytest.raises(p1.P1Error, match="1-4 hex digits"):
        p1.parse_p1(raw.replace(b"!B9F", b"!B9G"))  # a corrupted CRC is not "no CRC"


def test_lines_after_the_crc_are_ignored_up_to_the_next_telegram():
    raw = CORPUS["dsmr_parser:TELEGRAM_ESY5Q3DB1024_V304"]
    tg = p1.parse_p1(raw)
    assert tg.get("1-0:1.8.0*255").value == Decimal("52185.7825309")
    crc = V4_2 + b"  25803103\r\n\xff\xff\xff\r\n"
    assert p1.parse_p1(crc) == p1.parse_p1(V4_2)
    sp = iec.PushSplitter()
    sp.receive_data(crc + V4_2)
    assert [sp.next_telegram(), sp.next_telegram()] == [V4_2, V4_2]


def test_splitter_keeps_a_short_crc_with_its_telegram():
    raw = CORPUS["dsmr_parser:TELEGRAM_UNPADDED_CRC"]
    sp = iec.PushSplitter()
    sp.receive_data(raw[:-2])  # "...!B9F", the line end not yet there
    assert sp.next_telegram() is None and sp.flush() == raw[:-2]
    assert p1.parse_p1(raw[:-2]).check == "crc16"


# --------------------------------------------------------------------------- item 7

def test_exact_values_at_any_length():
    big = "123456789012345678901234567890123.4567890123"
    tg = p1.parse_p1(with_crc(f"/XXX5TEST\r\n\r\n1-0:1.8.0({big}*kWh)\r\n!"))
    v = tg.get("1-0:1.8.0")
    assert v.exact() == (1234567890123456789012345678901234567890123, -10)
    assert p1.exact_text(v.value) == big


# --------------------------------------------------------------------------- robustness

@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(CORPUS)), st.data())
def test_mutated_corpus_telegrams_with_the_crc_recomputed_raise_only_the_p1_error(tid, data):
    raw = bytearray(CORPUS[tid])
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    pos = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del raw[pos:]
    elif kind == "insert":
        raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        del raw[pos:pos + data.draw(st.integers(1, 8))]
    if data.draw(st.booleans()):  # make the mutation reach the parser
        raw = bytearray(recrc(bytes(raw)))
    try:
        p1.parse_p1(bytes(raw))
    except iec.Iec62056Error:
        pass
    try:
        iec.parse_readout(bytes(raw))
    except iec.Iec62056Error:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_the_p1_error(data):
    for blob in (data, b"/ABC5x\r\n" + data, b"/ABC5x\r\n\r\n" + data + b"\r\n!"):
        try:
            p1.parse_p1(blob)
        except iec.Iec62056Error:
            pass


# --------------------------------------------------------------------------- driver over a pty

ListSink = Sink  # the project's one test sink


def _listen(sim, until, timeout=20.0):
    from gateway.drivers.iec62056_21 import Iec62056Driver
    sink = ListSink()
    d = Iec62056Driver("p1", {"serial": {"port": sim.device, "baud": 115200}, "interval_s": 0.1,
                              "meters": [{"id": "p1m", "mode": "d"}]}, sink)
    d.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(d, sink):
        time.sleep(0.05)
    d.stop()
    return d, sink


def test_mode_d_readings_carry_the_meter_time_stamps():
    from tools.sim.iec62056_21 import start
    sim = start(1, push_s=0.1, push_raw=[V4_2, V2_2])
    try:
        d, sink = _listen(sim, lambda d, s: d.meter_stats()["p1m"]["success"] >= 2)
    finally:
        sim.stop()
    # V4_2 and V2_2 both have 1-0:1.8.1: keep V4_2's (1581.123 kWh)
    r = {x.quantity: x for x in sink.records if isinstance(x, Reading)
         and not (x.quantity == "1-0:1.8.1" and x.mantissa != 1581123)}
    assert r["0-1:24.2.1"].meter_ts_ms == _ms(2016, 11, 29, 20, 0, 0, hours=1)
    assert (r["0-1:24.2.1"].mantissa, r["0-1:24.2.1"].exponent, r["0-1:24.2.1"].unit) == \
        (981443, -3, "m3")
    assert QUALITY_HISTORIC in r["0-1:24.2.1"].quality
    assert r["1-0:1.8.1"].meter_ts_ms == _ms(2016, 11, 13, 20, 57, 57, hours=1)
    assert r["1-0:1.8.1"].quality == ()
    assert r["0-1:24.3.0"].meter_ts_ms == _ms(2016, 11, 7, 19, 0, 0, hours=1)
    assert (r["0-1:24.3.0"].mantissa, r["0-1:24.3.0"].unit) == (1001, "m3")
    assert "" not in r and "1-0:99.97.0" not in r  # no empty OBIS, no log entries
    assert not [x for x in sink.records if isinstance(x, Event)]


EXCEPTIONS = [TypeError("x"), KeyError("k"), IndexError("i"), ZeroDivisionError("z"),
              AttributeError("a"), RecursionError("r"), AssertionError("boom"),
              UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), OverflowError("o"),
              RuntimeError("rt")]


def test_a_codec_raising_anything_does_not_stop_the_p1_driver(monkeypatch):
    from tools.sim.iec62056_21 import start
    real = p1.parse_p1
    calls = {"n": 0}

    def flaky(data, tz=None):
        calls["n"] += 1
        if calls["n"] % 2:
            raise EXCEPTIONS[(calls["n"] // 2) % len(EXCEPTIONS)]
        return real(data, tz)

    monkeypatch.setattr(p1, "parse_p1", flaky)
    sim = start(1, push_s=0.05, push_raw=[V4_2])
    try:
        d, sink = _listen(sim, lambda d, s: d.meter_stats()["p1m"]["decode_errors"] >= 12
                          and d.meter_stats()["p1m"]["success"] >= 12)
    finally:
        sim.stop()
    assert d.meter_stats()["p1m"]["success"] >= 12  # the bus kept reading
    ev = [x for x in sink.records if isinstance(x, Event)]
    assert [e.kind for e in ev] == ["meter.decode_error"]  # rate-limited: one a minute
    assert ev[0].detail["hex"] == V4_2.hex() and ev[0].detail["error"] == "TypeError: x"
    assert not any(e.kind == "driver.crashed" for e in ev)


def test_mutated_telegrams_on_the_line_never_stop_the_p1_driver():
    from tools.sim.iec62056_21 import start
    rng = random.Random(14)
    pushes = []
    for _ in range(40):
        raw = bytearray(rng.choice(list(CORPUS.values())))
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(128)
        pushes.append(recrc(bytes(raw)) if rng.random() < 0.7 else bytes(raw))
    pushes.append(V4_2)
    sim = start(1, push_s=0.02, push_raw=pushes)
    try:
        d, sink = _listen(sim, lambda d, s: sim.pushes > 2 * len(pushes)
                          and d.meter_stats()["p1m"]["success"] >= 2, timeout=30)
    finally:
        sim.stop()
    assert d.meter_stats()["p1m"]["success"] >= 2
    assert d.meter_stats()["p1m"]["decode_errors"] == 0  # bad bytes: the codec's own error
    assert not any(isinstance(x, Event) and x.kind == "driver.crashed" for x in sink.records)


def test_a_codec_raising_anything_does_not_stop_a_polled_bus(monkeypatch):
    from gateway.drivers.iec62056_21 import Iec62056Driver
    from tools.sim.iec62056_21 import start
    real = iec.parse_data_sets
    calls = {"n": 0}

    def flaky(data):
        calls["n"] += 1
        if calls["n"] % 2:
            raise EXCEPTIONS[(calls["n"] // 2) % len(EXCEPTIONS)]
        return real(data)

    monkeypatch.setattr(iec, "parse_data_sets", flaky)
    sim = start(2)
    sink = ListSink()
    d = Iec62056Driver("iec", {"serial": {"port": sim.device}, "interval_s": 0.1,
                               "reply_timeout_ms": 400, "baud_switch_delay_ms": 20,
                               "backoff_max_s": 0.1,
                               "meters": [{"id": "a", "address": "10000001"},
                                          {"id": "b", "address": "10000002"}]}, sink)
    d.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                sum(s["decode_errors"] for s in d.meter_stats().values()) >= 4
                and all(s["success"] >= 2 for s in d.meter_stats().values())):
            time.sleep(0.05)
        alive = d.is_alive()
    finally:
        d.stop()
        sim.stop()
    assert alive
    stats = d.meter_stats()
    assert all(s["success"] >= 2 for s in stats.values()), stats
    dec = [x for x in sink.records if isinstance(x, Event) and x.kind == "meter.decode_error"]
    assert 1 <= len(dec) <= 2  # one per meter per minute
    assert dec[0].detail["hex"] and "Error" in dec[0].detail["error"]
    assert not any(isinstance(x, Event) and x.kind == "driver.crashed" for x in sink.records)


def test_readings_and_decode_output_stay_exact_beyond_28_digits():
    from gateway.subcommands.decode_common import exact_str
    m = 1234567890123456789012345678901234567890123
    r = Reading("m", "1-0:1.8.0", m, -10, "kWh", None, 0)
    assert str(r.value) == "123456789012345678901234567890123.4567890123"
    assert exact_str(m, -10) == "123456789012345678901234567890123.4567890123"
    assert exact_str(-5, -1) == "-0.5" and exact_str(0, -3) == "0.000" and exact_str(12, 2) == "1200"


def test_a_telegram_cut_short_by_the_next_one_does_not_take_it_down():
    cut = V4_2[:len(V4_2) // 2]
    sp = iec.PushSplitter()
    sp.receive_data(cut + V4_2)
    first, second = sp.next_telegram(), sp.next_telegram()
    assert first == cut and sp.truncated == 1
    with pytest.raises(iec.Iec62056Error, match="end mark"):
        p1.parse_p1(first)
    assert second == V4_2 and p1.parse_p1(second).check == "crc16"


def test_an_exclamation_mark_inside_a_line_is_not_the_end_mark():
    raw = with_crc("/XXX5TEST\r\n\r\n0-0:96.13.0(hi!there)\r\n1-0:1.8.0(1.5*kWh)\r\n!")
    sp = iec.PushSplitter()
    sp.receive_data(raw)
    t = sp.next_telegram()
    assert t == raw
    tg = p1.parse_p1(t)
    assert tg.get("0-0:96.13.0").text == "hi!there" and tg.get("1-0:1.8.0").value == Decimal("1.5")


def test_readout_data_sets_take_the_p1_shapes_too():
    from gateway.drivers.iec62056_21 import Iec62056Driver
    d = Iec62056Driver("iec", {"serial": {"port": "/dev/null"}, "meters": [{"id": "m"}]},
                       ListSink())
    body = (b"0-0:1.0.0(161113205757W)\r\n1-0:1.8.0(00123.4*kWh)(2402211200)\r\n"
            b"0-1:24.2.1(161129200000W)(00981.443*m3)\r\n")
    r = {x.quantity: x for x in d._to_readings(d.meters[0], iec.parse_data_sets(body), 7)}
    assert (r["1-0:1.8.0"].mantissa, r["1-0:1.8.0"].exponent, r["1-0:1.8.0"].quality) == \
        (1234, -1, ())
    assert r["1-0:1.8.0"].meter_ts_ms == _ms(2016, 11, 13, 20, 57, 57, hours=1)
    assert (r["0-1:24.2.1"].mantissa, r["0-1:24.2.1"].meter_ts_ms) == \
        (981443, _ms(2016, 11, 29, 20, 0, 0, hours=1))
    assert QUALITY_HISTORIC in r["0-1:24.2.1"].quality and len(r) == 2


def test_a_splitter_raising_anything_does_not_stop_the_p1_driver(monkeypatch):
    from tools.sim.iec62056_21 import start
    real = iec.PushSplitter.next_telegram
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] % 7 == 3:
            raise EXCEPTIONS[calls["n"] % len(EXCEPTIONS)]
        return real(self)

    monkeypatch.setattr(iec.PushSplitter, "next_telegram", flaky)
    sim = start(1, push_s=0.05, push_raw=[V4_2])
    try:
        d, sink = _listen(sim, lambda d, s: d.meter_stats()["p1m"]["decode_errors"] >= 3
                          and d.meter_stats()["p1m"]["success"] >= 5)
    finally:
        sim.stop()
    assert d.meter_stats()["p1m"]["success"] >= 5
    ev = [x for x in sink.records if isinstance(x, Event)]
    assert [e.kind for e in ev] == ["meter.decode_error"]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(CORPUS)), st.data())
def test_after_any_mutated_telegram_the_next_intact_one_is_cut_out_whole(tid, data):
    raw = bytearray(CORPUS[tid])
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if kind == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del raw[pos:]
        elif kind == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=4)
                                     | st.sampled_from([b"\x02", b"\x03", b"!", b"/", b"\r\n!"]))
        else:
            del raw[pos:pos + data.draw(st.integers(1, 6))]
    chunk = data.draw(st.integers(1, 64))
    stream = bytes(recrc(bytes(raw)) if data.draw(st.booleans()) else raw) + V4_2
    sp = iec.PushSplitter()
    got = []
    for i in range(0, len(stream), chunk):
        sp.receive_data(stream[i:i + chunk])
        while (t := sp.next_telegram()) is not None:
            got.append(t)
    while (t := sp.flush()) is not None:
        got.append(t)
    assert got and got[-1].rstrip(b"\r\n") == V4_2.rstrip(b"\r\n"), got[-2:]
    assert p1.parse_p1(got[-1]) == p1.parse_p1(V4_2)
    for t in got[:-1]:
        try:
            p1.parse_p1(t)
        except iec.Iec62056Error:
            pass


@pytest.mark.parametrize("after,ok", [(b"\r\n", True), (b"", True), (b"\x00\x7f\x7f", True),
                                      (b"/KFM5", True)])
def test_what_follows_the_crc_is_not_the_telegram(after, ok):
    sp = iec.PushSplitter()
    sp.receive_data(V4_2.rstrip(b"\r\n") + after)
    t = sp.next_telegram() or sp.flush()
    assert t.rstrip(b"\r\n") == V4_2.rstrip(b"\r\n") and p1.parse_p1(t).check == "crc16"


@pytest.mark.parametrize("crc", [b"X796", b"67G6", b"679", b"6796 x"])
def test_a_damaged_crc_is_refused_not_taken_for_no_crc(crc):
    raw = V4_2.replace(b"!6796", b"!" + crc)
    sp = iec.PushSplitter()
    sp.receive_data(raw + V4_2)
    t = sp.next_telegram()
    with pytest.raises(iec.Iec62056Error):
        p1.parse_p1(t)
    assert sp.next_telegram() == V4_2
    bare = V4_2.replace(b"!6796", b"!")  # a meter that writes no CRC at all: accepted
    sp.receive_data(bare)
    assert p1.parse_p1(sp.next_telegram()).check == "none"


def test_parse_p1_reads_the_crc_line_as_the_splitter_cuts_it():
    body = V4_2.rstrip(b"\r\n")
    for tail in (b"\x00\x7f\x7f", b"/KFM5", b"\r\n  25803103\r\n"):
        assert p1.parse_p1(body + tail).check == "crc16"
    assert p1.parse_p1(V4_2.replace(b"!6796", b"!\x00\x00")).check == "none"
    for bad in (b"!X796", b"!6796x", b"!6796 7"):
        with pytest.raises(iec.Iec62056Error):
            p1.parse_p1(V4_2.replace(b"!6796", bad))

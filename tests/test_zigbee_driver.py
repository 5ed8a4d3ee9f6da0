"""The zigbee driver against the simulated XBee, over a real pseudo-terminal (no mocks)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from gateway.drivers.zigbee import ZigbeeDriver
from gateway.model import Event, Reading
from gateway.protocols import zcl, zdo
from tools.sim import xbee as simxbee
from tests.sinks import Sink

FAST = {"poll_interval_s": 1, "report_min_s": 0, "report_max_s": 1, "response_timeout_s": 1,
        "retries": 1, "rssi_interval_s": 0.3}


@pytest.fixture
def run():
    """run(sim_devices, sim_kw, **driver_options) -> (sim, driver, sink); all stopped after."""
    started: list[Any] = []

    def start(sim_devices=None, sim_kw=None, **driver_kw):
        sim = simxbee.start(sim_devices, **{"report_interval_s": 0.4, **(sim_kw or {})})
        started.append(sim)
        sink = Sink()
        opts = {"serial": {"port": sim.device, "baud": 9600}, **FAST, **driver_kw}
        drv = ZigbeeDriver("zb", opts, sink)
        drv.start()
        started.append(drv)
        return sim, drv, sink

    yield start
    for obj in reversed(started):
        obj.stop()


def _dev(i: int, **kw: Any) -> simxbee.SimDevice:
    return simxbee.SimDevice(0x00124B0001B00000 + i, 0x2000 + i, **kw)


def test_join_report_and_exact_scaling(run):
    devices = [_dev(1, ac=True), _dev(2, multiplier=10, divisor=3, summation_fmt=0x2A),
               _dev(3, unit=0x81, device_type=1, divisor=1000, summation=4_711_000)]
    sim, drv, sink = run(devices)
    ids = [d.meter_id for d in devices]
    sink.wait_for(lambda _: all(len(sink.readings(m)) >= 4 for m in ids)
                  and sink.readings(ids[0], "1-0:32.7.0"))
    joined = {e.meter_id for e in sink.events("meter.joined")}
    assert joined >= set(ids)
    assert sink.events("bus.coordinator")[0].detail["ieee"] == "0013a20041a2b3c4"
    assert ("AO", b"\x01") in sim.at_log

    for r in sink.readings(ids[0], "1-0:1.8.0"):  # 1/1000, 3 decimals: exact kWh
        assert (r.unit, r.exponent, r.quality) == ("kWh", -3, ())
        assert (int(r.value * 1000) - 1_234_567) % 7 == 0  # raw = start + k * step
        assert Decimal("1234.567") <= r.value < Decimal("1300")
    volts = sink.readings(ids[0], "1-0:32.7.0")[0]
    amps = sink.readings(ids[0], "1-0:31.7.0")[0]
    watts = sink.readings(ids[0], "zcl:0B04:ActivePower")[0]
    assert (str(volts.value), volts.unit) == ("230.1", "V")
    assert (str(amps.value), amps.unit) == ("5.23", "A")
    assert (watts.value, watts.unit) == (-1204, "W")

    odd = sink.readings(ids[1], "1-0:1.8.0")
    assert odd and all(r.quality == ("rounded",) and r.exponent == -2 for r in odd)
    first = odd[0].value  # 10/3 of a raw register near 1 234 567
    assert abs(first - Decimal(1_234_567) * 10 / 3) < 10 * 7 * 20

    gas = sink.readings(ids[2], "7-0:3.0.0")  # BCD-coded m3, 1/1000
    assert gas and all(r.unit == "m3" and r.exponent == -3 for r in gas)
    assert Decimal("4711.000") <= gas[0].value < Decimal("4712")

    stats = drv.meter_stats()
    assert stats[ids[0]]["manufacturer"] == "SimMeter Co"
    assert stats[ids[0]]["reporting"] == {"0x0702": "configured", "0x0B04": "configured"}
    sink.wait_for(lambda _: any(s["rssi_dbm"] is not None
                                for s in drv.meter_stats().values()))
    assert all(s["rssi_dbm"] in (None, -48) for s in drv.meter_stats().values())


def test_values_are_held_until_multiplier_divisor_and_unit_are_known(run):
    # Reports arrive at once, but the scaling read goes unanswered for a while: not one value
    # may leave with a guessed divisor (the "100x too high" bug).
    dev = _dev(4, divisor=100, summation_fmt=0x2A, reporting={zcl.METERING},
               ignore_reads_until_s=2.5, summation=500_000)
    sim, drv, sink = run([dev], poll_interval_s=0.5)
    sink.wait_for(lambda _: len(sink.readings(dev.meter_id, "1-0:1.8.0")) >= 3)
    assert sim.stats["reads_ignored"] >= 1 and sim.stats["reports"] >= 2
    assert sink.events("meter.read_failed")  # the unanswered scaling read was reported
    for r in sink.readings(dev.meter_id, "1-0:1.8.0"):
        assert Decimal(5000) <= r.value < Decimal(5100), r  # /100, never the raw 500000
    first_reading = next(i for i, r in enumerate(sink.records) if isinstance(r, Reading))
    failed = next(i for i, r in enumerate(sink.records)
                  if isinstance(r, Event) and r.kind == "meter.read_failed")
    assert failed < first_reading
    assert drv.meter_stats()[dev.meter_id]["held"] >= 1


def test_invalid_sentinel_is_a_diagnostic_event_never_energy(run):
    dev = _dev(5, invalid_every=2)
    sim, drv, sink = run([dev])
    sink.wait_for(lambda _: len(sink.events("meter.invalid_value")) >= 2
                  and len(sink.readings(dev.meter_id, "1-0:1.8.0")) >= 2)
    ev = sink.events("meter.invalid_value")[0]
    assert ev.meter_id == dev.meter_id and ev.severity == "warning"
    assert ev.detail["name"] == "CurrentSummationDelivered" and ev.detail["type"] == "uint48"
    assert ev.detail["raw"] == 0xFFFFFFFFFFFF
    assert all(r.value < 10_000 for r in sink.readings(dev.meter_id))


def test_device_that_refuses_reporting_is_polled(run):
    dev = _dev(6, unit=0x07, device_type=2, divisor=1, summation_fmt=0x30,
               supports_reporting=False)
    sim, drv, sink = run([dev], poll_interval_s=0.5)
    sink.wait_for(lambda _: len(sink.readings(dev.meter_id, "8-0:1.0.0")) >= 3)
    r = sink.readings(dev.meter_id, "8-0:1.0.0")[0]
    assert (r.unit, r.exponent) == ("L", 0)
    assert (dev.meter_id, zcl.METERING, "bind") in sim.requests
    assert drv.meter_stats()[dev.meter_id]["reporting"] == {"0x0702": "polled"}
    assert drv.meter_stats()[dev.meter_id]["polls"] >= 2
    assert sim.stats["reports"] == 0


def test_silent_device_raises_a_diagnostic_event(run):
    quiet, chatty = _dev(7, silent_after_s=1.5), _dev(8)
    sim, drv, sink = run([quiet, chatty])
    ev = sink.wait_for(lambda _: sink.events("meter.silent"))[0]
    assert ev.meter_id == quiet.meter_id and ev.severity == "warning"
    assert ev.detail["expected_interval_s"] == 1.0
    assert drv.meter_stats()[quiet.meter_id]["silent"] is True
    assert drv.meter_stats()[chatty.meter_id]["silent"] is False
    n = len(sink.readings(chatty.meter_id))
    sink.wait_for(lambda _: len(sink.readings(chatty.meter_id)) > n)  # the others go on


def test_corrupted_frames_and_garbage_are_counted_not_fatal(run):
    dev = _dev(9)
    sim, drv, sink = run([dev], sim_kw={"corrupt_every": 3, "garbage_every": 4})
    sink.wait_for(lambda _: sink.events("meter.crc_error")
                  and len(sink.readings(dev.meter_id, "1-0:1.8.0")) >= 4)
    ev = sink.events("meter.crc_error")[0]
    assert ev.detail["bad_frames"] >= 1 and ev.detail["checksum_errors"] >= 1
    assert sim.stats["corrupted"] >= 1 and drv.is_alive()
    assert drv.frame_errors >= 1


def test_announce_drops_cached_scaling_and_rereads_it(run):
    dev = _dev(10, divisor=1000, summation=2_000_000)
    sim, drv, sink = run([dev])
    sink.wait_for(lambda _: len(sink.readings(dev.meter_id, "1-0:1.8.0")) >= 2)
    sim.set_scaling(dev.ieee, 1, 100)   # e.g. the meter was replaced / reconfigured
    sim.announce(dev.ieee)
    sink.wait_for(lambda _: any(e.detail.get("rejoin") for e in sink.events("meter.joined")))
    idx = next(i for i, r in enumerate(sink.records) if isinstance(r, Event)
               and r.kind == "meter.joined" and r.detail.get("rejoin"))
    sink.wait_for(lambda recs: any(isinstance(r, Reading) and r.quantity == "1-0:1.8.0"
                                   for r in recs[idx:]))
    after = [r for r in sink.records[idx:] if isinstance(r, Reading)
             and r.quantity == "1-0:1.8.0"]
    assert all(Decimal(20_000) <= r.value < Decimal(21_000) for r in after), after
    reads = [q for q in sim.requests if q == (dev.meter_id, zcl.METERING, "read")]
    assert len(reads) >= 2


def test_api_mode_1(run):
    dev = _dev(11)
    sim, drv, sink = run([dev], sim_kw={"escaped": False}, api_mode=1)
    sink.wait_for(lambda _: len(sink.readings(dev.meter_id, "1-0:1.8.0")) >= 2)


def test_permit_join_opens_the_network_and_a_new_device_joins(run):
    late = _dev(12, join_on_permit=True)
    sim, drv, sink = run([_dev(13), late])
    sink.wait_for(lambda _: sink.events("bus.coordinator"))
    assert not any(e.meter_id == late.meter_id for e in sink.events("meter.joined"))
    steps = drv.permit_join(30)
    assert drv.bus_state()["coordinator"]["firmware"] == "21a7"
    with pytest.raises(ValueError):
        drv.permit_join(255)
    assert steps[0] == "AT NJ=30" and ("NJ", b"\x1e") in sim.at_log
    sink.wait_for(lambda _: ("broadcast", 0x0036, "permit joining") in sim.requests)
    sink.wait_for(lambda _: any(e.meter_id == late.meter_id
                                for e in sink.events("meter.joined")))
    sink.wait_for(lambda _: sink.readings(late.meter_id))


def test_module_that_does_not_answer_is_reported_and_retried(run, tmp_path):
    import os
    import tty
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        sink = Sink()
        drv = ZigbeeDriver("zb", {"serial": {"port": os.ttyname(slave)}, **FAST,
                                  "response_timeout_s": 0.3}, sink)
        drv.start()
        try:
            ev = sink.wait_for(lambda _: sink.events("bus.start_failed"))[0]
            assert "no answer to AT SH" in ev.detail["error"] and drv.is_alive()
        finally:
            drv.stop()
        assert not drv.is_alive()
    finally:
        os.close(master)
        os.close(slave)


def test_vanished_port_is_logged_and_reopened(run):
    dev = _dev(14)
    sim, drv, sink = run([dev])
    sink.wait_for(lambda _: sink.readings(dev.meter_id))
    sim.stop()  # the USB dongle is pulled
    sink.wait_for(lambda _: sink.events("bus.port_error"))
    assert drv.is_alive()


def test_unusable_scaling_is_a_diagnostic_and_nothing_is_published(run):
    dev = _dev(15, multiplier=0, reporting={zcl.METERING})
    sim, drv, sink = run([dev], poll_interval_s=0.5)
    ev = sink.wait_for(lambda _: sink.events("meter.bad_scaling"))[0]
    assert ev.meter_id == dev.meter_id and "Multiplier is 0" in ev.detail["problems"]
    sink.wait_for(lambda _: drv.meter_stats()[dev.meter_id].get("held", 0) >= 2)
    assert not sink.readings(dev.meter_id)


def test_malformed_zcl_from_a_device_is_counted_not_fatal(run):
    import random
    from gateway.protocols import xbee
    dev = _dev(16)
    sim, drv, sink = run([dev])
    sink.wait_for(lambda _: sink.readings(dev.meter_id))
    rng = random.Random(5)
    for i in range(60):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 24)))
        cluster = rng.choice([zcl.METERING, zcl.ELECTRICAL_MEASUREMENT, zcl.BASIC, 0x0013])
        profile = 0 if cluster == 0x0013 and i % 2 else 0x0104
        sim.inject(xbee.ExplicitRxIndicator(dev.ieee, dev.nwk, 0 if profile == 0 else 1,
                                            0 if profile == 0 else 1, cluster, profile, 1,
                                            payload))
    sim.inject(b"\x7e\x00\x02\x91\x00\x6e")  # a 0x91 too short to hold its header
    sink.wait_for(lambda _: sink.events("meter.decode_error"))
    n = len(sink.readings(dev.meter_id))
    sink.wait_for(lambda _: len(sink.readings(dev.meter_id)) > n + 2)
    assert drv.is_alive() and not sink.events("driver.crashed")
    assert drv.meter_stats()[dev.meter_id]["decode_errors"] >= 1


def test_devices_that_joined_before_the_gateway_started_are_picked_up():
    """After a gateway reboot the network is already formed: no device announces again, the
    devices just keep reporting. Their first report must be enough to set them up."""
    sim = simxbee.start(n_devices=6, report_interval_s=0.4, preconfigured=True)
    try:
        deadline = time.monotonic() + 10
        while sim.stats["announces"] < 6 and time.monotonic() < deadline:
            time.sleep(0.05)  # every announce happens while nobody listens
        sink = Sink()
        drv = ZigbeeDriver("zb", {"serial": {"port": sim.device, "baud": 9600}, **FAST}, sink)
        drv.start()
        try:
            got = sink.wait_for(lambda recs: {r.meter_id for r in recs if isinstance(r, Reading)
                                              and r.quantity == "1-0:1.8.0"})
            assert got
            assert not sink.events("meter.joined")  # learnt from reports, not announces
        finally:
            drv.stop()
    finally:
        sim.stop()


def test_lqi_of_each_device_from_the_coordinators_neighbor_table(run):
    # Seven devices: the simulator answers 3 neighbors per Mgmt_Lqi_rsp, so the driver
    # must page (0, 3, 6) to learn all of them.
    devices = [_dev(20 + i, lqi=250 - 20 * i) for i in range(7)]
    sim, drv, sink = run(devices, lqi_interval_s=0.5)
    want = {d.meter_id: d.lqi for d in devices}

    def learnt(_: Any) -> bool:
        stats = drv.meter_stats()
        return all(stats.get(m, {}).get("lqi") == v for m, v in want.items())
    sink.wait_for(learnt)
    assert drv.bus_state()["lqi_scans"]["ok"] >= 1
    assert sim.stats["lqi_requests"] >= 3
    devices[0].lqi = 31  # the link degrades: the next scan says so
    sink.wait_for(lambda _: drv.meter_stats()[devices[0].meter_id]["lqi"] == 31)


def test_metering_endpoint_is_discovered_when_not_configured(run):
    """A polled meter with Metering on endpoint 2 (endpoint 1 is an on/off light): the
    driver asks Active_EP_req and Simple_Desc_req, skips endpoint 1 and reads endpoint 2."""
    dev = _dev(40, endpoint=2, other_endpoints=(1,), supports_reporting=False)
    sim, drv, sink = run([dev])
    sink.wait_for(lambda _: len(sink.readings(dev.meter_id, "1-0:1.8.0")) >= 2)
    asked = [(ep, what) for m, ep, what in sim.requests if m == dev.meter_id
             and what in ("active endpoints", "simple descriptor")]
    assert asked[:3] == [(zdo.ACTIVE_EP_REQ, "active endpoints"), (1, "simple descriptor"),
                         (2, "simple descriptor")]
    assert sim.stats["wrong_endpoint"] == 0


def test_a_configured_endpoint_is_not_discovered(run):
    dev = _dev(41, endpoint=2, supports_reporting=False)
    sim, drv, sink = run([dev], devices=[{"ieee": f"{dev.ieee:016x}", "endpoint": 2}])
    sink.wait_for(lambda _: len(sink.readings()) >= 2)
    assert not [r for r in sim.requests if r[2] in ("active endpoints", "simple descriptor")]


def test_polled_device_that_joined_before_the_gateway_is_found_in_the_neighbor_table():
    """A water meter that refuses reporting never speaks unasked: after a gateway reboot
    only the coordinator's neighbor table knows it. It must be found there and polled
    (the demo's sixth device was never read before this)."""
    water = simxbee.default_devices(4)[3]
    assert water.kind == "water_polled"
    sim = simxbee.start([water], report_interval_s=0.4, preconfigured=True)
    try:
        deadline = time.monotonic() + 10
        while sim.stats["announces"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # it announced while nobody listened
        sink = Sink()
        drv = ZigbeeDriver("zb", {"serial": {"port": sim.device, "baud": 9600}, **FAST}, sink)
        drv.start()
        try:
            got = sink.wait_for(lambda recs: [r for r in recs if isinstance(r, Reading)
                                              and r.meter_id == water.meter_id])
            assert got and got[0].unit == "L"  # litres, polled
        finally:
            drv.stop()
    finally:
        sim.stop()


def test_no_reading_is_sent_twice_at_start_up(run):
    # Devices that already report when the gateway starts (their reports are held until the
    # scaling is known) and a polled one: the scale read carries the current values, so a
    # held report of the same attribute, or an immediate first poll, would repeat them.
    devices = simxbee.default_devices(4)  # electric, odd, gas, water (polled)
    sim, drv, sink = run(devices, sim_kw={"preconfigured": True, "report_interval_s": 0.5},
                         poll_interval_s=30, report_min_s=0, report_max_s=30)
    main = {devices[0].meter_id: "1-0:1.8.0", devices[1].meter_id: "1-0:1.8.0",
            devices[2].meter_id: "7-0:3.0.0", devices[3].meter_id: "8-0:1.0.0"}
    sink.wait_for(lambda _: all(sink.readings(m, q) for m, q in main.items())
                  and len(sink.readings(devices[0].meter_id, "1-0:1.8.0")) >= 4)
    water = sink.readings(devices[3].meter_id, "8-0:1.0.0")
    assert len(water) == 1, water  # the next one is a poll interval (30 s) away
    for mid, q in list(main.items())[:3]:
        values = [r.value for r in sink.readings(mid, q)]
        # every report advances the register: an equal value is the same reading twice
        assert len(values) == len(set(values)), (mid, values)
    assert any(s.get("held_superseded") for s in drv.meter_stats().values())


def test_read_now_reads_the_metering_attributes_in_bounded_time(run):
    reporting = _dev(14)
    polled = _dev(15, unit=0x07, device_type=2, divisor=1, summation_fmt=0x30,
                  supports_reporting=False)
    quiet = _dev(16, silent_after_s=2.0)
    sim, drv, sink = run([reporting, polled, quiet], poll_interval_s=30)
    sink.wait_for(lambda _: all(sink.readings(d.meter_id) for d in (reporting, polled, quiet)))
    reads = sim.requests.count((polled.meter_id, zcl.METERING, "read"))
    got = drv.read_now(polled.meter_id)
    [water] = [r for r in got if isinstance(r, Reading) and r.quantity == "8-0:1.0.0"]
    assert (water.unit, water.exponent) == ("L", 0)
    sink.wait_for(lambda _: water in sink.readings(polled.meter_id))  # stored like any other
    assert sim.requests.count((polled.meter_id, zcl.METERING, "read")) == reads + 1
    energy = [r for r in drv.read_now(reporting.meter_id) if isinstance(r, Reading)]
    assert [r.quantity for r in energy if r.quantity == "1-0:1.8.0"] == ["1-0:1.8.0"]
    assert energy[0].unit == "kWh"
    with pytest.raises(KeyError):
        drv.read_now("nosuch")
    sink.wait_for(lambda _: sink.events("meter.silent", quiet.meter_id))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="no answer from .* after 2 attempts"):
        drv.read_now(quiet.meter_id)  # retries 1, 1 s each
    assert time.monotonic() - t0 < 30

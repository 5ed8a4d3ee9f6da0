"""Issue 15 item 1 for the Zigbee driver: whatever a codec raises on a frame (XBee frame
codec, ZCL or ZDO; any exception type), the driver counts a rate-limited
``meter.decode_error`` with the frame's hex and the bus keeps reading. Over a real pty with
the simulated XBee; the codecs are wrapped to raise for frames coming from the devices."""

from __future__ import annotations

import itertools

from gateway.drivers.zigbee import ZigbeeDriver
from gateway.protocols import xbee, zcl
from tests.sinks import Sink
from tools.sim import xbee as simxbee

FAST = {"poll_interval_s": 1, "report_min_s": 0, "report_max_s": 1, "response_timeout_s": 1,
        "retries": 1, "rssi_interval_s": 0.3}

EXCEPTIONS = [TypeError("t"), KeyError("k"), IndexError("i"), ZeroDivisionError("z"),
              AttributeError("a"), RecursionError("r"), AssertionError("boom"),
              UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), OverflowError("o"),
              MemoryError("m"), RuntimeError("rt"), ValueError("v")]


def _start(devices, **kw):
    sim = simxbee.start(devices, report_interval_s=0.2)
    sink = Sink()
    drv = ZigbeeDriver("zb", {"serial": {"port": sim.device, "baud": 9600}, **FAST, **kw}, sink)
    drv.start()
    return sim, drv, sink


def test_codecs_raising_anything_do_not_stop_the_zigbee_bus(monkeypatch):
    dev = simxbee.SimDevice(0x00124B0001C00001, 0x3001)
    sim, drv, sink = _start([dev])
    try:
        sink.wait_for(lambda _: sink.readings(dev.meter_id))
        real_zcl, real_frame = zcl.parse_zcl, xbee.parse_frame
        errors = itertools.cycle(EXCEPTIONS)
        calls = {"zcl": 0, "frame": 0, "zcl_raised": 0, "frame_raised": 0}

        def flaky_zcl(data):
            # frames from a device (server to client); the simulator parses the others
            if data and data[0] & 0x08:
                calls["zcl"] += 1
                if calls["zcl"] % 3 == 0:
                    calls["zcl_raised"] += 1
                    raise next(errors)
            return real_zcl(data)

        def flaky_frame(data):
            if data[:1] == b"\x91":
                calls["frame"] += 1
                if calls["frame"] % 4 == 1:
                    calls["frame_raised"] += 1
                    raise next(errors)  # a bug in the XBee frame codec itself
            return real_frame(data)

        monkeypatch.setattr(zcl, "parse_zcl", flaky_zcl)
        monkeypatch.setattr(xbee, "parse_frame", flaky_frame)
        n = len(sink.readings(dev.meter_id))
        sink.wait_for(lambda _: calls["zcl_raised"] >= 8 and calls["frame_raised"] >= 8
                      and len(sink.readings(dev.meter_id)) > n + 10, timeout=60)
        assert drv.is_alive()
    finally:
        drv.stop()
        sim.stop()
    assert not sink.events("driver.crashed") and not sink.events("bus.frame_not_handled")
    dec = sink.events("meter.decode_error")
    by_meter = {e.meter_id for e in dec}
    assert by_meter <= {dev.meter_id, None} and dev.meter_id in by_meter
    assert len(dec) <= 2  # rate-limited: one a minute per meter (and one for the link)
    z = next(e for e in dec if e.meter_id == dev.meter_id)
    assert z.detail["hex"] and "cluster" in z.detail and ":" in z.detail["error"]
    (link,) = [e for e in dec if e.meter_id is None]
    assert link.detail["hex"].startswith("7e0") and link.detail["layer"] == "xbee"
    assert drv.meter_stats()[dev.meter_id]["decode_errors"] >= 8
    assert drv.decode_errors.total >= 16


def test_a_frame_on_a_non_zcl_profile_is_ignored_not_an_error():
    dev = simxbee.SimDevice(0x00124B0001C00002, 0x3002)
    sim, drv, sink = _start([dev])
    try:
        sink.wait_for(lambda _: sink.readings(dev.meter_id))
        for _ in range(5):  # Digi's 0xC105 profile: "RxData", not a ZCL frame
            sim.inject(xbee.ExplicitRxIndicator(dev.ieee, dev.nwk, 0xE8, 0xE8, 0x0011, 0xC105,
                                                0x01, b"\x00"))
        n = len(sink.readings(dev.meter_id))
        sink.wait_for(lambda _: drv.meter_stats()[dev.meter_id].get("non_zcl_frames", 0) >= 5
                      and len(sink.readings(dev.meter_id)) > n)
    finally:
        drv.stop()
        sim.stop()
    assert not sink.events("meter.decode_error")

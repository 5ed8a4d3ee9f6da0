"""The shared contracts of issue 17: codec stream shape, driver context, bus skeleton."""

from __future__ import annotations

import os
import pickle
import tty

from gateway import events
from gateway.drivers.bus import BusDriver, EventGate, MeterStats, StatsTable
from gateway.drivers.context import DriverContext
from gateway.protocols.stream import (NEED_DATA, BadFrame, BoundedBuffer, NeedData,
                                      RemoteChecksumError, RemoteError)
from tests.sinks import Sink
from tests.waiting import poll_until


def test_need_data_is_one_sentinel():
    assert NeedData() is NEED_DATA and repr(NEED_DATA) == "NEED_DATA"
    assert pickle.loads(pickle.dumps(NEED_DATA)) is NEED_DATA


def test_bounded_buffer_counts_overflow_and_bad_frames():
    buf: BoundedBuffer[bytes] = BoundedBuffer(max_buffer=8)
    buf.receive_data(b"0123456789AB")
    assert buf.buffered == 8 and buf.stats.garbage_bytes == 4
    bad = buf._bad("checksum", b"\x01", RemoteChecksumError("crc"))
    assert bad.event == events.CRC_ERROR
    assert BadFrame("short").event == events.FRAME_ERROR
    assert buf._bad("odd", error=RemoteError("x")).event == events.MALFORMED
    assert buf.stats.as_dict() == {"frames": 0, "bad_frames": 2, "checksum_errors": 1,
                                   "garbage_bytes": 4}
    buf.clear()
    assert buf.buffered == 0 and buf.stats.garbage_bytes == 12


def test_remote_errors_carry_what_identifies_the_meter():
    exc = RemoteError("bad", {"id": "12345678"})
    assert isinstance(exc, ValueError) and exc.meter_id == "12345678"


def test_event_gate_holds_repeats_and_counts_them():
    now = [0.0]
    gate = EventGate("bus1", 60.0, clock=lambda: now[0])
    first = gate.admit(events.CRC_ERROR, "m1", {"n": 1})
    assert first is not None and first.severity == "warning" and first.source == "bus1"
    assert gate.admit(events.CRC_ERROR, "m1") is None
    assert gate.admit(events.CRC_ERROR, "m2") is not None  # another meter is not held
    now[0] = 61.0
    again = gate.admit(events.CRC_ERROR, "m1")
    assert again is not None and again.detail["suppressed"] == 1


def test_stats_table_has_one_shape():
    table = StatsTable()
    row = table["m1"]
    row.ok()
    row.count("retries")
    row.count("profile_rows", 3)
    row.failed("timeout " * 100)
    snap = table.snapshot()["m1"]
    assert snap["success"] == 1 and snap["failures"] == 1 and snap["retries"] == 1
    assert snap["profile_rows"] == 3 and len(snap["last_error"]) == 300
    assert set(MeterStats().as_dict()) >= {"success", "failures", "last_ok_ms", "last_error"}
    assert "m1" in table and list(table) == ["m1"]


class _Cursors(Sink):
    def get_cursor(self, meter_id, name, default=None):
        return {"m1": 7}.get(meter_id, default)


def test_a_bare_sink_is_wrapped_in_a_context():
    sink = _Cursors()
    ctx = DriverContext.of(sink, {"keys_dir": "/tmp/keys"})
    assert ctx.sink is sink and ctx.keys_dir == "/tmp/keys"
    assert ctx.cursors("m1", "x", None) == 7 and ctx.cursors("m2", "x", 0) == 0
    assert DriverContext.of(ctx) is ctx
    assert DriverContext.of(Sink()).cursors("m1", "x", 5) == 5


class _Echo(BusDriver):
    listener = True

    def __init__(self, *a):
        super().__init__(*a)
        self.got = bytearray()

    def on_bytes(self, data: bytes) -> None:
        self.got += data


def test_bus_skeleton_reads_a_real_port_and_backs_off_a_missing_one():
    master, slave = os.openpty()
    tty.setraw(slave)
    sink = Sink()
    drv = _Echo("bus1", {"serial": {"port": os.ttyname(slave)}}, sink)
    missing = _Echo("bus2", {"serial": {"port": "/dev/does-not-exist"}}, sink)
    drv.start()
    missing.start()
    try:
        poll_until(lambda: drv.state, lambda s: s == "open", timeout=10)
        os.write(master, b"hello")
        poll_until(lambda: bytes(drv.got), lambda b: b == b"hello", timeout=10)
        state = poll_until(missing.bus_state, lambda s: s["state"] == "reopening", timeout=10)
        assert "does-not-exist" in state["error"]
    finally:
        drv.stop(5)
        missing.stop(5)
        os.close(master)
        os.close(slave)
    assert not drv.is_alive() and not missing.is_alive()

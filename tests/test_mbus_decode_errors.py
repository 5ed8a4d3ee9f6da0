"""Issue 15 item 1 for the M-Bus buses: whatever a codec raises on a frame, the wired and
the wireless driver count it as ``meter.decode_error`` with the frame's hex, and go on
reading. Codecs that raise arbitrary exception types are injected into drivers running
over real pseudo-terminals with the bus and dongle simulators."""

from __future__ import annotations

import struct
import threading
from typing import Any, Callable, Iterator

import pytest

from gateway.drivers.mbus import MBusDriver
from gateway.drivers.wmbus import WMBusDriver
from tools.sim import mbus as mbus_sim
from tools.sim import wmbus as wmbus_sim
from tests.sinks import Sink
from tests.waiting import wait_for

RAISES: list[Callable[[], BaseException]] = [
    lambda: ValueError("injected"), lambda: IndexError("index out of range"),
    lambda: KeyError(0x7F), lambda: TypeError("unsupported operand"),
    lambda: RuntimeError("injected"), lambda: ZeroDivisionError("division by zero"),
    lambda: AttributeError("'NoneType' object has no attribute 'x'"),
    lambda: struct.error("unpack requires a buffer of 4 bytes"),
    lambda: UnicodeDecodeError("latin-1", b"\xff", 0, 1, "injected"),
    lambda: RecursionError("maximum recursion depth exceeded"),
    lambda: AssertionError("injected"), lambda: OverflowError("injected"),
]


class FaultyCodec:
    """The real codec, except that the first calls raise the given exceptions."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.pending = list(RAISES)
        self.frames: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, frame: Any, key: Any, **kw: Any) -> Any:
        with self.lock:
            raise_now = self.pending.pop(0) if self.pending else None
        if raise_now is not None:
            self.frames.append(bytes(frame) if isinstance(frame, (bytes, bytearray))
                               else frame)
            raise raise_now()
        return self.real(frame, key, **kw)


@pytest.fixture
def bus() -> Iterator[mbus_sim.MBusBusSimulator]:
    s = mbus_sim.start()
    yield s
    s.stop()


def test_wired_bus_keeps_reading_whatever_the_codec_raises(
        bus: mbus_sim.MBusBusSimulator) -> None:
    sink = Sink()
    opts = {"serial": {"port": bus.device, "baud": 2400, "parity": "N", "timeout_ms": 100},
            "interval_s": 0.05, "retries": 0, "response_timeout_ms": 500, "reset": False,
            "event_interval_s": 0, "meters": [{"secondary": "44001122", "name": "water-1"}]}
    drv = MBusDriver("heat-bus", opts, sink)
    faulty = FaultyCodec(drv.codec)
    drv.codec = faulty
    drv.start()
    try:
        assert wait_for(lambda: len(sink.readings("water-1")) >= 2, timeout=60)
        assert drv.is_alive()
    finally:
        drv.stop()
    errors = sink.events("meter.decode_error")
    assert len(errors) == len(RAISES) and drv.decode_errors == len(RAISES)
    kinds = [e.detail["error"].split(":")[0] for e in errors]
    assert kinds == [type(r()).__name__ for r in RAISES]
    for e in errors:
        assert e.meter_id == "water-1" and e.detail["hex"].startswith("68")
        assert e.detail["hex"].endswith("16") and "22110044" in e.detail["hex"]
        assert bytes.fromhex(e.detail["hex"])[6] == 0x72  # the RSP_UD the meter sent
    assert drv.meter_stats()["water-1"]["failures"]["meter.decode_error"] == len(RAISES)


def test_wired_decode_errors_are_rate_limited(bus: mbus_sim.MBusBusSimulator) -> None:
    sink = Sink()
    opts = {"serial": {"port": bus.device, "baud": 2400, "parity": "N", "timeout_ms": 100},
            "interval_s": 0.05, "retries": 0, "response_timeout_ms": 500, "reset": False,
            "event_interval_s": 3600, "meters": [{"secondary": "44001122", "name": "w"}]}
    drv = MBusDriver("heat-bus", opts, sink)
    drv.codec = FaultyCodec(drv.codec)
    drv.start()
    try:
        assert wait_for(lambda: len(sink.readings("w")) >= 1, timeout=60)
    finally:
        drv.stop()
    assert len(sink.events("meter.decode_error")) == 1  # one per hour, the rest counted
    assert drv.decode_errors == len(RAISES)


@pytest.mark.parametrize("dongle", ["im871a", "amb8465"])
def test_radio_keeps_listening_whatever_the_codec_raises(dongle: str) -> None:
    meter = wmbus_sim.SimRadioMeter("44444444", "SEN", 0x68, 0x07, None, "none",
                                    interval_s=0.1)
    sim = wmbus_sim.start(dongle, [meter])
    sink = Sink()
    opts = {"dongle": dongle, "mode": "t1",
            "serial": {"port": sim.device, "baud": 57600 if dongle == "im871a" else 9600,
                       "parity": "N", "timeout_ms": 100},
            "command_timeout_ms": 1000, "duplicate_window_s": 0, "event_interval_s": 0,
            "meters": [{"id": "44444444", "name": "radio-water"}]}
    drv = WMBusDriver("radio", opts, sink)
    faulty = FaultyCodec(drv.codec)
    drv.codec = faulty
    drv.start()
    try:
        assert wait_for(lambda: len(sink.readings("radio-water")) >= 8, timeout=60)
        assert drv.is_alive()
    finally:
        drv.stop()
        sim.stop()
    errors = sink.events("meter.decode_error")
    assert len(errors) == len(RAISES) == drv.decode_errors
    assert [e.detail["hex"] for e in errors] == [f.hex().upper() for f in faulty.frames]
    assert all(e.meter_id == "radio-water" for e in errors)
    assert all(bytes.fromhex(e.detail["hex"])[4:8] == bytes.fromhex("44444444")
               for e in errors)


class FaultyDongleCodec:
    """A dongle decoder that raises on some of its next_event calls."""

    calls = 0

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def next_event(self) -> Any:
        FaultyDongleCodec.calls += 1
        if FaultyDongleCodec.calls in (40, 80, 120):
            raise IndexError("injected into the dongle codec")
        return self.real.next_event()


def test_radio_survives_a_dongle_codec_that_raises() -> None:
    meter = wmbus_sim.SimRadioMeter("44444444", "SEN", 0x68, 0x07, None, "none",
                                    interval_s=0.05)
    sim = wmbus_sim.start("im871a", [meter])
    sink = Sink()
    opts = {"dongle": "im871a", "mode": "t1",
            "serial": {"port": sim.device, "baud": 57600, "parity": "N", "timeout_ms": 100},
            "command_timeout_ms": 1000, "duplicate_window_s": 0, "event_interval_s": 0,
            "meters": [{"id": "44444444"}]}
    drv = WMBusDriver("radio", opts, sink)
    real_factory = drv.adapter.decoder
    drv.adapter.decoder = lambda: FaultyDongleCodec(real_factory())  # type: ignore[method-assign]
    FaultyDongleCodec.calls = 0
    drv.start()
    try:
        assert wait_for(lambda: FaultyDongleCodec.calls > 120, timeout=60)
        n = len(sink.readings("44444444"))
        assert wait_for(lambda: len(sink.readings("44444444")) > n + 4, timeout=60)
        assert drv.is_alive()
    finally:
        drv.stop()
        sim.stop()
    errors = sink.events("meter.decode_error")
    assert len(errors) == 3 and all(e.meter_id is None for e in errors)
    assert all("IndexError" in e.detail["error"] for e in errors)


# ------------------------------------------------------------ compact frames in the driver

class CursorSink(Sink):
    """A sink that keeps cursors like the store does (committed with their records)."""

    def __init__(self, cursors: dict[tuple[str, str], Any] | None = None) -> None:
        super().__init__()
        self.cursors: dict[tuple[str, str], Any] = {} if cursors is None else cursors

    def submit(self, records: Any, cursors: Any = None) -> Any:
        if cursors:
            with self.cond:
                self.cursors.update(cursors)
        return super().submit(records, cursors)

    def get_cursor(self, meter_id: str, name: str, default: Any = None) -> Any:
        return self.cursors.get((meter_id, name), default)


def radio_driver(sim: Any, sink: Sink) -> WMBusDriver:
    opts = {"dongle": "im871a", "mode": "t1",
            "serial": {"port": sim.device, "baud": 57600, "parity": "N", "timeout_ms": 100},
            "command_timeout_ms": 1000, "duplicate_window_s": 0, "event_interval_s": 0,
            "meters": [{"id": "11111111", "name": "flowiq"}]}
    drv = WMBusDriver("radio", opts, sink)
    drv.start()
    return drv


def test_compact_frames_use_the_format_learned_and_kept_across_a_restart() -> None:
    meter = wmbus_sim.SimRadioMeter("11111111", "KAM", 0x1B, 0x16, None, "none",
                                    interval_s=0.05, compact="mixed")
    sim = wmbus_sim.start("im871a", [meter])
    sink = CursorSink()
    drv = radio_driver(sim, sink)
    try:
        assert wait_for(lambda: meter.sent > 12 and len(sink.readings("flowiq")) >= 4 * 10,
                        timeout=60)
    finally:
        drv.stop()
    # compact frames became readings too: more telegrams decoded than full ones sent
    assert drv.meter_stats()["flowiq"]["reads_ok"] > (meter.sent + 7) // 8
    assert ("flowiq", "mbus.compact_formats") in sink.cursors
    # a restarted gateway reads a meter that now sends compact frames only, at once
    meter.compact = "only"
    fresh = CursorSink(dict(sink.cursors))
    drv = radio_driver(sim, fresh)
    try:
        assert wait_for(lambda: len(fresh.readings("flowiq")) >= 8, timeout=60)
    finally:
        drv.stop()
    assert not fresh.events("meter.compact_format_unknown")
    # without the cursor: one event for the meter, however many compact frames it sends
    blank = CursorSink()
    drv = radio_driver(sim, blank)
    try:
        assert wait_for(lambda: drv.meter_stats()["flowiq"]["failures"].get(
            "meter.compact_format_unknown", 0) >= 5, timeout=60)
    finally:
        drv.stop()
        sim.stop()
    unknown = blank.events("meter.compact_format_unknown")
    assert len(unknown) == 1 and unknown[0].meter_id == "flowiq"
    assert len(unknown[0].detail["signature"]) == 4
    assert not blank.readings("flowiq") and not blank.events("meter.unsupported")


def test_compact_formats_survive_a_restart_in_the_real_store(tmp_path: Any) -> None:
    from gateway.store import Store
    meter = wmbus_sim.SimRadioMeter("11111111", "KAM", 0x1B, 0x16, None, "none",
                                    interval_s=0.05, compact="mixed")
    sim = wmbus_sim.start("im871a", [meter])
    path = tmp_path / "store.db"
    try:
        store = Store(path)
        drv = radio_driver(sim, store)  # type: ignore[arg-type]
        try:
            assert wait_for(lambda: drv.meter_stats()["flowiq"]["reads_ok"] >= 10, timeout=60)
        finally:
            drv.stop()
        saved = store.get_cursor("flowiq", "mbus.compact_formats")
        store.close()
        assert saved and list(saved) == ["KAM:11111111"]
        meter.compact = "only"
        store = Store(path)
        drv = radio_driver(sim, store)  # type: ignore[arg-type]
        try:
            assert wait_for(lambda: drv.meter_stats()["flowiq"]["reads_ok"] >= 5, timeout=60)
        finally:
            drv.stop()
            store.close()
        assert "meter.compact_format_unknown" not in drv.meter_stats()["flowiq"]["failures"]
    finally:
        sim.stop()

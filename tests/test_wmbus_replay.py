"""Meter-side replays over the air: a recorded telegram sent again must not count as new
consumption (issue 15). Unit rules, then the real driver over a pty with the simulator
re-sending older telegrams, and the guard surviving a restart through the store cursor."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, strategies as st

from gateway.drivers.wmbus import WMBusDriver
from gateway.drivers.wmbus_replay import REPLAY_CURSOR, judge, telegram_marks
from gateway.model import QUALITY_HISTORIC, Event, Reading
from gateway.protocols.mbus import wireless
from gateway.protocols.mbus import records as rec
from gateway.store import Store
from tools.sim.wmbus import SimRadioMeter, start
from tests.sinks import Sink
from tests.waiting import wait_for

KEY = bytes(range(16))


class StoreSink(Sink):
    """The driver's records go into a real store too: cursors commit with them."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def submit(self, records, cursors=None):  # type: ignore[no-untyped-def]
        self.store.submit(list(records), cursors).result(10)
        return super().submit(records, cursors)

    def get_cursor(self, meter_id: str, name: str, default=None):  # type: ignore[no-untyped-def]
        return self.store.get_cursor(meter_id, name, default)


def _reading(ts: int | None, historic: bool = False) -> Reading:
    return Reading("m", "Volume", 1, 0, "m3", ts, 0, (QUALITY_HISTORIC,) if historic else (), "b")


def test_marks_come_from_afl_ell_and_current_meter_time() -> None:
    marks = telegram_marks({"afl": {"counter": 7}, "ell": {"session": 3}},
                           [_reading(1000), _reading(5000, historic=True), _reading(None)])
    assert marks == {"afl_counter": 7, "ell_session": 3, "meter_ts_ms": 1000}


def test_afl_counter_must_rise_strictly_time_and_session_must_not_fall() -> None:
    last = {"afl_counter": 10, "ell_session": 5, "meter_ts_ms": 60_000}
    assert judge(last, {"afl_counter": 11}).ok
    assert not judge(last, {"afl_counter": 10}).ok
    assert "AFL message counter 9 is not above the last accepted 10" in \
        judge(last, {"afl_counter": 9}).reason
    assert judge(last, {"ell_session": 5, "meter_ts_ms": 60_000}).ok  # same minute: fine
    assert not judge(last, {"meter_ts_ms": 59_999}).ok
    assert not judge(last, {"ell_session": 4}).ok
    assert judge(None, {"afl_counter": 0}).state == {"afl_counter": 0}
    assert judge(last, {}).state is None  # nothing to judge, nothing to store


@given(st.lists(st.integers(0, 2**32), min_size=1, max_size=30))
def test_accepted_afl_counters_strictly_rise(counters: list[int]) -> None:
    state: dict = {}
    accepted = []
    for c in counters:
        v = judge(state, {"afl_counter": c})
        if v.ok:
            accepted.append(c)
            state = v.state or state
    assert accepted == sorted(set(accepted)) and accepted[0] == counters[0]


def _mode7(counter: int, litres: int) -> bytes:
    apl = rec.encode_record(b"\x13", *rec.encode_int(litres, 4))
    return wireless.encode_wmbus("LAS", "33333333", 0x14, 0x07, apl, access=counter & 0xFF,
                                 status=0, key=KEY, mode=7, counter=counter)


def _options(device: str) -> dict:
    return {"dongle": "im871a", "mode": "t1",
            "serial": {"port": device, "baud": 57600, "parity": "N", "timeout_ms": 100},
            "silence_timeout_s": 30, "ping_interval_s": 30, "command_timeout_ms": 1000,
            "duplicate_window_s": 0, "event_interval_s": 0,
            "meters": [{"id": "33333333", "key": KEY}]}


def test_replayed_telegram_gives_no_readings_and_the_guard_survives_a_restart(tmp_path: Path) -> None:
    # The meter sends counters 5 and 6; an attacker then replays 5 (and 6, equal: also old).
    frames = [_mode7(5, 1000), _mode7(6, 1010), _mode7(5, 1000), _mode7(6, 1010)]
    meter = SimRadioMeter("33333333", "LAS", 0x14, 0x07, KEY, "replay", frames=frames)
    meter.interval_s = 0.2
    sim = start("im871a", [meter])
    store = Store(str(tmp_path / "s.db"))
    try:
        sink = StoreSink(store)
        drv = WMBusDriver("radio", _options(sim.device), sink)
        drv.start()
        try:
            replays = wait_for(lambda: [e for e in sink.records if isinstance(e, Event)
                                        and e.kind == "meter.replay_suspected"], timeout=30)
            assert replays and "AFL message counter 5 is not above" in replays[0].detail["error"]
            wait_for(lambda: len([e for e in sink.records if isinstance(e, Event)
                                  and e.kind == "meter.replay_suspected"]) >= 2, timeout=30)
        finally:
            drv.stop()
        values = [r.mantissa for r in sink.records if isinstance(r, Reading)
                  and r.meter_id == "33333333"]
        assert values[:2] == [1000, 1010] and len(values) == 2, values
        store.flush()
        assert store.get_cursor("33333333", REPLAY_CURSOR, None) == {"afl_counter": 6}
        # After a restart the same recording is still refused: the cursor came from disk.
        meter.sent = 0
        sink2 = StoreSink(store)
        drv2 = WMBusDriver("radio", _options(sim.device), sink2)
        drv2.start()
        try:
            wait_for(lambda: len([e for e in sink2.records if isinstance(e, Event)
                                  and e.kind == "meter.replay_suspected"]) >= 2, timeout=30)
        finally:
            drv2.stop()
        assert not [r for r in sink2.records if isinstance(r, Reading)]
    finally:
        sim.stop()
        store.close()

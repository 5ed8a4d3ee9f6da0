"""The dlms driver against gurux-server meters on one pty: a 3-meter poll cycle, HLS-GMAC
with a persisted frame counter, a silent meter, a wrong key, push (plain and ciphered)."""

from __future__ import annotations

import time

from gateway.drivers.dlms import IC_CURSOR, DlmsDriver
from gateway.model import Event, Reading
from gateway.store import Store
from tools.sim.dlms import DEFAULT_AUTH_KEY, DEFAULT_BLOCK_KEY

KEY = DEFAULT_BLOCK_KEY


def _records(store: Store) -> list:
    return [sr.record for sr in store.read_records(0, 100_000)]


def _meter(p: int, security: str = "none", **kw) -> dict:
    return {"id": f"m{p}", "physical": p, "security": security, "password": "12345678",
            "block_key": KEY, "auth_key": DEFAULT_AUTH_KEY, "interval_s": 60,
            "registers": ["1-0:1.8.0", "1-0:32.7.0"], "extended_registers": ["1-0:1.6.0"],
            "profiles": ["1-0:99.1.0"], "event_logs": ["0-0:99.98.0"],
            "profile_backfill_s": 6 * 3600, **kw}


def _drive(tmp_path, sim, meters, until, timeout=30, **opts):
    store = Store(tmp_path / f"store{time.monotonic_ns()}.db")
    d = DlmsDriver("dlms", {"serial": {"port": sim.device}, "reply_timeout_ms": 400,
                            "retries": 1, "meters": meters, **opts}, store)
    d.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(d):
        time.sleep(0.05)
    d.stop()
    return d, store


def _done(d, ids):
    s = d.meter_stats()
    return all(s[i]["success"] + s[i]["failures"] >= 1 for i in ids)


def test_poll_cycle_three_meters_exact_values_profile_and_events(tmp_path):
    from tools.sim.dlms import start
    sim = start(3, period_s=900, history_s=86400)
    try:
        d, store = _drive(tmp_path, sim, [_meter(p) for p in (17, 18, 19)],
                          lambda d: _done(d, ["m17", "m18", "m19"]))
        recs = _records(store)
        cursor = store.get_cursor("m18", "profile:1-0:99.1.0")
        store.close()
    finally:
        sim.stop()
    stats = d.meter_stats()
    assert all(stats[m]["success"] == 1 and stats[m]["failures"] == 0 for m in stats)
    readings = [r for r in recs if isinstance(r, Reading)]
    volts = [r for r in readings if r.quantity == "1-0:32.7.0"]
    assert len(volts) == 3 and all(r.exponent == -1 and r.unit == "V" and 2301 <= r.mantissa <= 2307 for r in volts)
    demand = [r for r in readings if r.quantity == "1-0:1.6.0"]
    assert {(r.mantissa, r.exponent, r.unit) for r in demand} == {(4321, 1, "W")}
    spec = sim.specs[1]
    # the register poll's own 1-0:1.8.0 is stamped with the meter clock, which can fall on a
    # quarter hour exactly: tell it apart by the voltage read in the same poll
    polled = {r.meter_ts_ms for r in readings if r.meter_id == "m18" and r.quantity == "1-0:32.7.0"}
    prof = sorted(r.meter_ts_ms for r in readings if r.meter_id == "m18" and r.quantity == "1-0:1.8.0"
                  and r.meter_ts_ms % (900_000) == 0 and r.meter_ts_ms not in polled)
    assert len(prof) == len(set(prof)) >= 23  # 6 h of 15-min rows, no duplicate
    assert cursor == prof[-1]
    for ts in prof:
        row = next(r for r in readings if r.meter_id == "m18" and r.meter_ts_ms == ts and r.quantity == "1-0:1.8.0")
        assert row.mantissa == spec.energy_wh(ts / 1000) and row.unit == "Wh"
    drift = [r for r in readings if r.quantity == "clock.drift"]
    assert len(drift) == 3 and all(abs(r.mantissa) < 2000 for r in drift)
    events = [r for r in recs if isinstance(r, Event) and r.kind == "meter.event"]
    assert events and {e.detail["code"] for e in events} <= {1, 2}


def test_hls_gmac_frame_counter_persisted_and_clock_set(tmp_path):
    from tools.sim.dlms import start
    sim = start(1, security="hls", drift_s=120, history_s=3600)
    try:
        meters = [_meter(17, "hls", clock_set_threshold_s=30, profiles=[], event_logs=[])]
        d, store = _drive(tmp_path, sim, meters, lambda d: _done(d, ["m17"]))
        reserved = store.get_cursor("m17", IC_CURSOR)
        recs = _records(store)
        store.close()
    finally:
        sim.stop()
    s = d.meter_stats()["m17"]
    assert s["success"] == 1 and s["clock_sets"] == 1 and abs(s["clock_drift_s"] - 120) < 3
    assert sim.server(17).clock_sets == 1 and abs(sim.server(17).clock_offset_s) < 3
    assert reserved and reserved >= 10_000 > d.meters[0].ic_next > 0
    assert any(isinstance(r, Event) and r.kind == "meter.clock_set" for r in recs)
    assert any(isinstance(r, Reading) and r.quantity == "1-0:1.8.0" for r in recs)


def test_silent_meter_and_wrong_key_do_not_stall_the_bus(tmp_path):
    from tools.sim.dlms import MeterSpec, DlmsBusSimulator
    specs = [MeterSpec(17, security="hls"), MeterSpec(18, silent=True),
             MeterSpec(19, security="hls", wrong_key=True), MeterSpec(20)]
    sim = DlmsBusSimulator(specs)
    try:
        meters = [_meter(17, "hls", profiles=[], event_logs=[]),
                  _meter(18, profiles=[], event_logs=[]),
                  _meter(19, "hls", profiles=[], event_logs=[]),
                  _meter(20, profiles=[], event_logs=[])]
        d, store = _drive(tmp_path, sim, meters, lambda d: _done(d, ["m17", "m18", "m19", "m20"]))
        recs = _records(store)
        store.close()
    finally:
        sim.stop()
    s = d.meter_stats()
    assert s["m17"]["success"] == 1 and s["m20"]["success"] == 1
    assert s["m18"]["timeouts"] == 1 and s["m18"]["retries"] >= 1
    assert s["m19"]["auth_failures"] == 1
    kinds = {(e.kind, e.meter_id) for e in recs if isinstance(e, Event)}
    assert ("meter.read_failed", "m18") in kinds and ("meter.auth_failed", "m19") in kinds
    ev = next(e for e in recs if isinstance(e, Event) and e.meter_id == "m19")
    assert KEY.hex() not in str(ev.detail).lower() and "refused" in ev.detail["reason"]


def test_dropped_frames_are_resent(tmp_path):
    from tools.sim.dlms import start
    sim = start(1, drop=0.3, history_s=3600)
    sim.rng.seed(3)
    try:
        d, store = _drive(tmp_path, sim, [_meter(17)], lambda d: _done(d, ["m17"]), retries=5)
        store.close()
    finally:
        sim.stop()
    s = d.meter_stats()["m17"]
    assert s["success"] == 1 and s["retries"] >= 1 and sim.dropped >= 1


def test_push_plain_segmented_and_ciphered_with_wrong_key(tmp_path):
    from tools.sim.dlms_push import start
    for key, wrong in ((None, False), (KEY, False), (KEY, True)):
        sim = start(key=key, interval_s=0.2, segment=48 if key else 0, wrong_key=wrong)
        try:
            d, store = _drive(tmp_path, sim, [{"id": "han", "block_key": key}],
                              lambda d: d.meter_stats()["han"]["notifications"] >= 3
                              or d.meter_stats()["han"]["failures"] >= 2, mode="push")
            recs = _records(store)
            store.close()
        finally:
            sim.stop()
        s = d.meter_stats()["han"]
        if wrong:
            assert s["decrypt_failures"] >= 2 and s["notifications"] == 0
            assert any(isinstance(e, Event) and e.kind == "meter.decrypt_failed" for e in recs)
            continue
        assert s["notifications"] >= 3
        volts = [r for r in recs if isinstance(r, Reading) and r.quantity == "1-0:32.7.0"]
        assert volts and all((r.mantissa, r.exponent, r.unit) == (2301, -1, "V") for r in volts)
        energy = [r for r in recs if isinstance(r, Reading) and r.quantity == "1-0:1.8.0"]
        assert all(r.unit == "Wh" and r.meter_ts_ms is not None for r in energy)

"""The edge stage on a real store: deltas and their state in one commit, restart, clock
trust (unsynced boot, NTP sync, jumps), report by exception, resets, gaps, topic routing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.config import ReportByException, RolloverRule
from gateway.edge import deltas as dl
from gateway.edge.pipeline import CURSOR_REG
from gateway.model import (KIND_DIAG, KIND_EVENT, KIND_GAP, KIND_READING, Diag, Event,
                           Reading, StoredRecord)
from gateway.store import StoreClosed
from gateway.uplink.mqtt import split_messages, topics
from tests.edge_support import (MIN, Q, T0, FakeTime, deltas, diags, events,
                                     make_pipeline, open_store, raw, reading, stored)


def test_deltas_and_state_commit_together_and_survive_a_restart(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    for i in range(4):  # meter stamps on the quarter hours, 12 Wh per quarter
        ft.advance(Q if i else 0)
        fut = pipe.submit([reading("m1", 1000 + 12 * i, T0 + i * Q, ft.w + 300)])
        seqs = fut.result(10)
        assert seqs  # durable: readings, deltas and the state in the same transaction
        st = dl.RegisterState.from_obj(store.get_cursor("m1", CURSOR_REG + "1-0:1.8.0"))
        assert (st.m, st.t) == (1000 + 12 * i, T0 + i * Q)
    recs = stored(store)
    ds = deltas(recs)
    assert [(d.quantity, d.mantissa, d.meter_ts_ms, d.quality) for d in ds] == [
        ("1-0:1.8.0/delta/900s", 12, T0 + i * Q, ()) for i in range(1, 4)]
    store.close()

    # A new process: state comes from the store, the series continues without a seam.
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    ft.advance(Q)
    pipe.submit([reading("m1", 1048, T0 + 4 * Q, ft.w + 300)]).result(10)
    ds = deltas(stored(store))
    assert [(d.mantissa, d.meter_ts_ms) for d in ds[-1:]] == [(12, T0 + 4 * Q)]
    assert len({d.meter_ts_ms for d in ds}) == len(ds) == 4
    store.close()


def test_a_batch_the_store_refused_is_neither_counted_nor_skipped(tmp_path) -> None:
    """Crash between computing and committing: the durable state is the truth, so the
    re-read after restart yields exactly the consumption since the last committed read."""
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    pipe.submit([reading("m1", 100, T0, T0)]).result(10)
    pipe.submit([reading("m1", 110, T0 + Q, T0 + Q)]).result(10)
    store.close()
    with pytest.raises(StoreClosed):  # the "crash": this batch never became durable
        pipe.submit([reading("m1", 120, T0 + 2 * Q, T0 + 2 * Q)]).result(10)
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    pipe.submit([reading("m1", 131, T0 + 3 * Q, T0 + 3 * Q)]).result(10)
    ds = deltas(stored(store))
    assert [(d.mantissa, d.meter_ts_ms) for d in ds] == [(10, T0 + Q), (10, T0 + 2 * Q),
                                                          (11, T0 + 3 * Q)]
    assert sum(d.mantissa for d in ds) == 131 - 100
    assert [d.quality for d in ds] == [(), ("estimated",), ("estimated",)]
    store.close()


def test_unsynced_boot_flags_readings_and_corrects_deltas_once_synced(tmp_path) -> None:
    """A Pi boots in the past (fake-hwclock: 3 days behind) without NTP. Readings stamped by
    the gateway carry clock_unsynced; once NTP steps the clock their deltas are computed from
    monotonic time and land on the true quarter hours."""
    true_t = T0
    behind = 3 * 86_400_000 + 7 * MIN + 1234
    ft = FakeTime(wall=true_t - behind, synced=False)
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    values = [500, 530, 560, 590]
    for i, v in enumerate(values):
        if i:
            ft.advance(Q)
        pipe.submit([reading("m1", v, None, ft.w)]).result(10)
    recs = stored(store)
    assert all("clock_unsynced" in r.quality for r in raw(recs))
    assert deltas(recs) == []  # no interval stamped on a clock known to be wrong
    ft.jump(behind)  # chrony steps the clock...
    ft.synced = True  # ...and the kernel clears STA_UNSYNC
    ft.advance(Q)
    pipe.submit([reading("m1", 620, None, ft.w)]).result(10)
    recs = stored(store)
    jump = events(recs, "gateway.clock_jump")
    synced = events(recs, "gateway.clock_synced")
    assert len(jump) == 1 and jump[0].detail["jump_ms"] == behind
    assert len(synced) == 1 and synced[0].detail["correction_ms"] == behind
    assert synced[0].detail["readings_flagged"] == 4
    ds = deltas(recs)
    # reads at true T0, +Q, +2Q, +3Q (replayed) and +4Q: four intervals of 30 on the grid
    assert [(d.mantissa, d.meter_ts_ms, d.quality) for d in ds] == [
        (30, T0 + i * Q, ()) for i in range(1, 5)]
    assert "clock_unsynced" not in raw(recs)[-1].quality
    store.close()


def test_wall_clock_jump_back_never_gives_negative_or_duplicate_intervals(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    v = 10_000
    for i in range(30):  # a read every 5 minutes, 2.5 h, with the clock set back 1 h at 1 h
        if i == 12:
            ft.jump(-60 * MIN)
        pipe.submit([reading("m1", v, None, ft.w)]).result(10)
        ft.advance(5 * MIN)
        v += 25
    recs = stored(store)
    assert len(events(recs, "gateway.clock_jump")) == 1
    assert events(recs, "gateway.clock_jump")[0].detail["direction"] == "backward"
    ds = deltas(recs)
    ends = [d.meter_ts_ms for d in ds]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    assert all(d.mantissa >= 0 and dl.parse_delta_quantity(d.quantity)[1] > 0 for d in ds)
    st = dl.RegisterState.from_obj(store.get_cursor("m1", CURSOR_REG + "1-0:1.8.0"))
    assert sum(d.mantissa for d in ds) + (st.m - st.a_m) == v - 25 - 10_000
    store.close()


def test_wall_clock_jump_forward_marks_the_interval_estimated(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    pipe.submit([reading("m1", 0, None, ft.w)]).result(10)
    ft.advance(Q)
    pipe.submit([reading("m1", 15, None, ft.w)]).result(10)
    ft.advance(Q)
    ft.jump(20 * MIN)
    pipe.submit([reading("m1", 30, None, ft.w)]).result(10)
    recs = stored(store)
    assert events(recs, "gateway.clock_jump")[0].detail["direction"] == "forward"
    ds = deltas(recs)
    assert [d.quality for d in ds] == [(), ("estimated",), ("estimated",)]
    assert sum(d.mantissa for d in ds) <= 30
    store.close()


def test_report_by_exception_forwards_deltas_and_hourly_values(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    rbe = ReportByException(enabled=True, every_n_intervals=4, deadband=0.05)
    pipe = make_pipeline(store, ft, report_by_exception=rbe)
    power = [1000, 1010, 1040, 990, 1200, 1210, 1190, 0, 0]  # W; 5 % deadband
    for i in range(9):
        pipe.submit([reading("m1", 5000 + 250 * i, T0 + i * Q, T0 + i * Q + 500),
                     reading("m1", 77, T0 + i * Q, T0 + i * Q + 500, q="1-0:2.8.0"),
                     reading("m1", power[i], T0 + i * Q, T0 + i * Q + 500, q="1-0:1.7.0",
                             unit="W")]).result(10)
        ft.advance(Q)
    recs = stored(store)
    energy = [r for r in raw(recs) if r.quantity == "1-0:1.8.0"]
    assert [r.meter_ts_ms for r in energy] == [T0, T0 + 4 * Q, T0 + 8 * Q]  # hourly
    assert [d.mantissa for d in deltas(recs)] == [250] * 8  # every interval
    # the static export register: no zero deltas, its hourly value proves there were none
    assert [r.meter_ts_ms for r in raw(recs) if r.quantity == "1-0:2.8.0"] == \
        [T0, T0 + 4 * Q, T0 + 8 * Q]
    assert pipe.counts["zero_deltas_skipped"] == 8
    forwarded = [r.mantissa for r in raw(recs) if r.quantity == "1-0:1.7.0"]
    # first; 1200 (+20 % of 1000, and a new hour); 0 (-100 %); 0 again as the new hour's
    # heartbeat. 1010, 1040, 990 and 1210, 1190 stay within 5 % of what was forwarded.
    assert forwarded == [1000, 1200, 0, 0]
    assert pipe.counts["readings_suppressed"] == 2 * (9 - 3) + 9 - 4
    store.close()


def test_reset_and_rollover_from_config(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft, rollover=(RolloverRule("8-0:1.0.0", digits=5),))
    seq = [(99_990, 0), (5, 1), (20, 2), (7, 3)]  # wrap, then a meter swap
    for v, i in seq:
        pipe.submit([reading("w1", v, T0 + i * Q, T0 + i * Q, q="8-0:1.0.0", unit="l"),
                     reading("e1", [500, 400, 450, 460][i], T0 + i * Q, T0 + i * Q)]).result(10)
    recs = stored(store)
    assert [d.mantissa for d in deltas(recs, "w1")] == [15, 15]
    resets = events(recs, "meter.register_reset")
    assert [(e.meter_id, e.detail["register"], e.detail["old"], e.detail["new"])
            for e in resets] == [("e1", "1-0:1.8.0", "500", "400"),
                                 ("w1", "8-0:1.0.0", "20", "7")]
    assert all(d.mantissa >= 0 for d in deltas(recs))
    assert [d.mantissa for d in deltas(recs, "e1")] == [50, 10]
    store.close()


def test_gap_event_names_the_span_and_consumption(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft, gap_intervals=2)
    pipe.submit([reading("m1", 0, T0, T0)]).result(10)
    pipe.submit([reading("m1", 300, T0 + 5 * Q, T0 + 5 * Q)]).result(10)
    recs = stored(store)
    (gap,) = events(recs, "meter.gap")
    assert gap.meter_id == "m1" and gap.detail["missing_intervals"] == 5
    assert gap.detail["consumption"] == "300" and gap.detail["from_ms"] == T0
    assert [(d.quantity, d.mantissa) for d in deltas(recs)] == [("1-0:1.8.0/delta/4500s", 300)]
    store.close()


def test_events_pass_through_after_readings_and_cursors_of_drivers_commit(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    ev = Event("meter.status", T0, "bus0", "m1", "info", {"battery_low": False})
    pipe.submit([ev, reading("m1", 1, T0, T0)], {("m1", "fcnt"): 7}).result(10)
    recs = stored(store)
    assert type(recs[0]) is Reading and recs[1] == ev
    assert store.get_cursor("m1", "fcnt") == 7
    store.close()


# --------------------------------------------------------------------------- routing


def test_topics_route_diag_to_up_diag_in_single_topic_runs() -> None:
    t = topics("meters", "gw-1")
    assert t["diag"] == "meters/gw-1/up/diag" and t["readings"] == "meters/gw-1/up/readings"
    # Stored chunks: (first_seq, last_seq, kind, count, time_base_ms, body).
    kinds = [KIND_READING, KIND_READING, KIND_DIAG, KIND_DIAG, KIND_EVENT, KIND_GAP, KIND_DIAG]
    rows = [(q, q, k, 1, 0, b"") for q, k in enumerate(kinds, 1)]
    runs = [[r[0] for r in run] for run in split_messages(rows, 100, None)]
    assert runs == [[1, 2], [3, 4], [5, 6], [7]]


def test_messages_are_bounded_by_records_and_bytes_but_hold_at_least_one_chunk() -> None:
    # (first_seq, last_seq, kind, count, time_base_ms, body)
    rows = [(1, 64, KIND_READING, 64, 0, b"x" * 500), (65, 80, KIND_READING, 16, 0, b"x" * 100),
            (81, 200, KIND_READING, 120, 0, b"x" * 900), (201, 210, KIND_READING, 10, 0,
                                                           b"x" * 100)]
    assert [[r[0] for r in m] for m in split_messages(rows, 64, None)] == \
        [[1], [65], [81], [201]]
    assert [[r[0] for r in m] for m in split_messages(rows, 100, None)] == \
        [[1, 65], [81], [201]]
    assert [[r[0] for r in m] for m in split_messages(rows, 1000, 1000)] == \
        [[1, 65], [81, 201]]
    assert split_messages([], 64, None) == []


def test_verifier_counts_diag_records() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.wire.envelope import encode_envelope
    from tools.headend.verifier import Verifier
    key = Ed25519PrivateKey.generate()
    recs = [StoredRecord(1, Diag(T0, "gateway", None, {"uptime_s": 5})),
            StoredRecord(2, Diag(T0, "meter", "m1", {"reads_ok": 1}))]
    v = Verifier({"gw": key.public_key()})
    res = v.feed("meters/gw/up/diag", encode_envelope("gw", "e", recs, T0, key), T0)
    assert len(res.accepted) == 2
    s = v.summary()
    assert s["diag"] == 2 and s["gateways"]["gw"]["diag"] == 2 and s["gaps"] == 0


def test_delta_reading_carries_source_flags(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    for i in range(2):
        pipe.submit([replace(reading("s1", 10 * i, T0 + i * Q, T0 + i * Q),
                             quality=("simulated", "rssi=-70"))]).result(10)
    (d,) = deltas(stored(store))
    assert d.quality == ("simulated",) and d.unit == "Wh" and d.bus == "bus0"
    assert diags(stored(store)) == []
    store.close()


def test_meter_time_far_from_the_synced_clock_is_flagged(tmp_path) -> None:
    """A current value stamped two days away from our synchronised clock (a replayed
    telegram, a meter clock never set) is flagged meter_time_suspect; a stored value's old
    capture time is not; with the window 0 nothing is flagged; before sync nothing can be
    judged."""
    from gateway.config import ClockTrust
    from gateway.model import QUALITY_HISTORIC, QUALITY_METER_TIME_SUSPECT
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    day = 86_400_000
    pipe.submit([reading("m1", 1000, ft.w - 2 * day, ft.w),
                 reading("m2", 1000, ft.w - 60_000, ft.w),
                 reading("m3", 1000, ft.w - 40 * day, ft.w, quality=(QUALITY_HISTORIC,))]
                ).result(10)
    flags = {r.meter_id: r.quality for r in raw(stored(store))}
    assert QUALITY_METER_TIME_SUSPECT in flags["m1"]
    assert QUALITY_METER_TIME_SUSPECT not in flags["m2"]
    assert QUALITY_METER_TIME_SUSPECT not in flags["m3"]
    assert pipe.counts["meter_time_suspect"] == 1
    store.close()
    store = open_store(tmp_path / "off")
    off = make_pipeline(store, ft, clock=ClockTrust(meter_time_window_s=0))
    off.submit([reading("m1", 1000, ft.w - 2 * day, ft.w)]).result(10)
    assert all(QUALITY_METER_TIME_SUSPECT not in r.quality for r in raw(stored(store)))
    store.close()

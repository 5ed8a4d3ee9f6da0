"""Delta engine: hand-computed interpolation, rollovers, resets, gaps, out-of-order and
duplicate reads, DST, and the conservation property."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.edge import deltas as dl

MIN = 60_000
Q = 15 * MIN  # a quarter hour
S = dl.Settings(interval_ms=Q, gap_intervals=4)


def feed(reads, cfg=S, state=None):
    """reads: (t_ms, mantissa[, exponent]); returns (steps, final state)."""
    steps = []
    for r in reads:
        t, m = r[0], r[1]
        e = r[2] if len(r) > 2 else 0
        res = dl.step(state, m, e, t, cfg)
        steps.append(res)
        state = res.state if res.state is not None else state
    return steps, state


def intervals(steps):
    return [(i.start_ms, i.end_ms, i.mantissa, i.exponent, i.estimated)
            for s in steps for i in s.intervals]


def test_interpolation_matches_hand_computed_values() -> None:
    # 1000 Wh at 00:01:40, 1180 Wh at 00:31:40 -> 6 Wh/min; boundaries 00:15 and 00:30:
    # V(15:00) = 1000 + 180 * 800/1800 = 1080, V(30:00) = 1000 + 180 * 1700/1800 = 1170.
    steps, st_ = feed([(100_000, 1000), (1_900_000, 1180), (2_700_000, 1260),
                       (3_600_000, 1300)])
    assert [s.status for s in steps] == ["first", "ok", "ok", "ok"]
    assert steps[1].delta == (180, 0) and steps[1].elapsed_ms == 1_800_000
    assert intervals(steps) == [
        (100_000, 900_000, 80, 0, True),  # partial first interval of the series
        (900_000, 1_800_000, 90, 0, True),
        (1_800_000, 2_700_000, 90, 0, True),  # exact end, interpolated start: estimated
        (2_700_000, 3_600_000, 40, 0, False),  # both ends real reads on boundaries
    ]
    assert st_.m == 1300 and st_.a_t == 3_600_000


def test_rounding_keeps_the_sum_exact() -> None:
    # 1.000 kWh over three quarter hours: 333.33.., 666.66.. -> 333 and 667 Wh (half-even)
    steps, _ = feed([(0, 0, -3), (3 * Q, 1000, -3)])
    iv = intervals(steps)
    assert [x[2] for x in iv] == [333, 334, 333] and all(x[3] == -3 for x in iv)
    assert [x[4] for x in iv] == [True, True, True]  # the last starts at an estimate


def test_mixed_exponents_are_exact() -> None:
    steps, st_ = feed([(0, 12345, -1), (Q, 1235, 0)])  # 1234.5 -> 1235 = 0.5
    assert steps[1].delta == (5, -1)
    assert intervals(steps) == [(0, Q, 5, -1, False)]


def test_rollover_at_digit_width() -> None:
    cfg = dl.Settings(Q, 4, dl.Modulus.of(digits=5))
    steps, st_ = feed([(0, 99_990), (Q, 5), (2 * Q, 20)], cfg)
    assert [s.status for s in steps] == ["first", "ok", "ok"]
    assert steps[1].delta == (15, 0) and steps[1].rollovers == 1
    assert [x[2] for x in intervals(steps)] == [15, 15]
    assert st_.m == 20


def test_rollover_by_bits_and_wrap_value() -> None:
    bits = dl.Settings(Q, 4, dl.Modulus.of(bits=16, exponent=-2))
    steps, _ = feed([(0, 65_530, -2), (Q, 4, -2)], bits)
    assert steps[1].delta == (10, -2)
    wrap = dl.Settings(Q, 4, dl.Modulus.of(wrap_at="10000"))
    steps, _ = feed([(0, 99_995, -1), (Q, 3, -1)], wrap)  # 9999.5 -> 0.3 kWh on 10000
    assert steps[1].delta == (8, -1) and steps[1].rollovers == 1


def test_decrease_without_rollover_is_a_reset_never_negative() -> None:
    cfg = dl.Settings(Q, 4, dl.Modulus.of(digits=5))
    steps, st_ = feed([(0, 50_000), (Q // 3, 50_010), (Q, 100), (2 * Q, 130)], cfg)
    assert [s.status for s in steps] == ["first", "ok", "reset", "ok"]
    r = steps[2].reset
    assert (r.old_m, r.new_m, r.old_t, r.new_t) == (50_010, 100, Q // 3, Q)
    # the old series is closed at its last read; the new one starts at the reset read
    assert intervals(steps) == [(0, Q // 3, 10, 0, False), (Q, 2 * Q, 30, 0, False)]
    assert st_.series == 1
    assert all(x[2] >= 0 for x in intervals(steps))


def test_out_of_order_and_duplicate_reads_change_nothing() -> None:
    steps, st_ = feed([(0, 100), (Q, 110), (Q, 110), (Q // 2, 105), (Q, 111), (2 * Q, 120)])
    assert [s.status for s in steps] == ["first", "ok", "duplicate", "out_of_order",
                                          "out_of_order", "ok"]
    assert [x[2] for x in intervals(steps)] == [10, 10]
    assert st_.m == 120


def test_gap_is_reported_not_interpolated() -> None:
    # reads at 00:00, 00:20, 02:00, 02:25; gap threshold 4 quarter hours = 1 h
    steps, st_ = feed([(0, 0), (Q + 5 * MIN, 20), (Q + 5 * MIN + 100 * MIN, 220),
                       (3 * Q + 100 * MIN, 240)])
    gap = steps[2].gap
    assert gap is not None and (gap.from_ms, gap.to_ms) == (20 * MIN, 120 * MIN)
    assert gap.missing_intervals == 6 and gap.mantissa == 200  # 00:30 .. 02:00: 6 quarters
    iv = intervals(steps)
    assert iv == [
        (0, Q, 15, 0, True),  # interpolated boundary 00:15
        (Q, 20 * MIN, 5, 0, True),  # closing partial up to the last read before the gap
        (20 * MIN, 120 * MIN, 200, 0, False),  # one exact delta across the gap
        (120 * MIN, 135 * MIN, 12, 0, True),  # afresh from the read after it: 20 * 15/25
    ]


def test_dst_changes_do_not_disturb_utc_intervals() -> None:
    """Meters stamp local time; the driver converts it to UTC (with fold for the repeated
    hour). Across both DST changes of 2024 in Berlin every quarter hour gets exactly one
    interval: 92 on the short night, 100 on the long one."""
    berlin = ZoneInfo("Europe/Berlin")
    for day, expected in ((datetime(2024, 3, 31), 92), (datetime(2024, 10, 27), 100)):
        start = day.replace(tzinfo=berlin)
        end = (day + timedelta(days=1)).replace(tzinfo=berlin)
        t0 = int(start.timestamp() * 1000)
        n = int((end.timestamp() - start.timestamp()) // 900)
        assert n == expected
        reads = [(t0 + i * Q, 1000 + 7 * i) for i in range(n + 1)]
        steps, _ = feed(reads)
        ends = [x[1] for x in intervals(steps)]
        assert len(ends) == expected and len(set(ends)) == expected
        assert all(b - a == Q for a, b in zip(ends, ends[1:]))
        assert all(x[2] == 7 and not x[4] for x in intervals(steps))


def test_local_time_stamped_twice_in_the_fall_back_hour_is_out_of_order() -> None:
    """A meter that stamps naive local time repeats 02:00-03:00 in October: the repeated
    reads are older than what was seen, so they are skipped, never negative deltas and never
    a second interval for the same quarter hour."""
    berlin = ZoneInfo("Europe/Berlin")
    local = datetime(2024, 10, 27, 1, 0)
    reads, v = [], 500
    for i in range(12):  # 01:00 .. 03:45 local, but 02:xx happens twice
        lt = local + timedelta(minutes=15 * i)
        for fold in ((0, 1) if lt.hour == 2 else (0,)):
            naive_utc = lt.replace(tzinfo=berlin, fold=0).astimezone(timezone.utc)  # no fold!
            reads.append((int(naive_utc.timestamp() * 1000), v))
            v += 3
    reads.sort(key=lambda r: r[1])  # arrival order = value order
    steps, _ = feed(reads)
    assert sum(s.status == "out_of_order" for s in steps) == 4
    ends = [x[1] for x in intervals(steps)]
    assert len(ends) == len(set(ends)) and ends == sorted(ends)
    assert all(x[2] >= 0 for x in intervals(steps))


def test_stuck_and_flow_tracking() -> None:
    # constant flow for 3 h at 15-minute reads: flow_since is the first read
    steps, st_ = feed([(i * Q, 10 * i) for i in range(13)])
    assert st_.flow_since == 0 and st_.changed_t == 12 * Q
    # then no change for an hour: a zero-flow hour clears the flow evidence
    steps, st_ = feed([(12 * Q + i * Q, 120) for i in range(1, 5)], state=st_)
    assert st_.flow_since is None and st_.changed_t == 12 * Q and st_.still_since == 12 * Q
    # flow again, but read only every 2 h: a zero-flow hour could hide in there
    steps, st_ = feed([(16 * Q + 8 * Q, 130)], state=st_)
    assert st_.flow_since == 24 * Q


def test_state_round_trips_through_cbor_shape() -> None:
    import cbor2
    _, st_ = feed([(0, 5), (Q, 9)])
    assert dl.RegisterState.from_obj(cbor2.loads(cbor2.dumps(st_.to_obj()))) == st_
    with pytest.raises(ValueError):
        dl.RegisterState.from_obj([9, 1, 2])


def test_quantity_convention() -> None:
    assert dl.delta_quantity("1-0:1.8.0", 900_000) == "1-0:1.8.0/delta/900s"
    assert dl.delta_quantity("8-0:1.0.0", 523_450) == "8-0:1.0.0/delta/523.45s"
    assert dl.parse_delta_quantity("8-0:1.0.0/delta/523.45s") == ("8-0:1.0.0", 523_450)
    assert dl.parse_delta_quantity("1-0:1.8.0") is None
    assert dl.is_cumulative("1-0:1.8.0", "kWh") and not dl.is_cumulative("1-0:1.7.0", "kW")
    assert not dl.is_cumulative("1-0:1.8.0/delta/900s", "kWh")
    assert dl.is_cumulative("x", "W", ["x"]) and not dl.is_cumulative("y", "kWh", ["x"])


# --------------------------------------------------------------------------- property

MOD = 100_000


@st.composite
def read_sequences(draw):
    """Reads of one 5-digit register: growth (sometimes across the wrap), meter resets,
    duplicates and out-of-order reads, at irregular times (some across gaps)."""
    n = draw(st.integers(2, 60))
    t = draw(st.integers(0, 10 * Q))
    v = draw(st.integers(0, MOD - 1))
    reads = [(t, v)]
    for _ in range(n):
        kind = draw(st.sampled_from(["grow"] * 8 + ["reset", "dup", "old", "wrap"]))
        if kind == "dup":
            reads.append(reads[-1])
            continue
        if kind == "old":
            reads.append((reads[-1][0] - draw(st.integers(1, Q)), draw(st.integers(0, MOD - 1))))
            continue
        t += draw(st.integers(1, 6 * Q))
        if kind == "reset":
            v = draw(st.integers(0, 50))
        elif kind == "wrap":
            v = (v + draw(st.integers(1, MOD // 20))) % MOD
        else:
            v = (v + draw(st.integers(0, 500))) % MOD
        reads.append((t, v))
    return reads


@settings(max_examples=300, deadline=None)
@given(read_sequences())
def test_sum_of_deltas_is_last_minus_first_plus_rollovers(reads) -> None:
    cfg = dl.Settings(Q, 4, dl.Modulus.of(digits=5))
    steps, final = feed(reads, cfg)
    # Independently: split the accepted reads into series at each reset.
    total_raw = sum(s.delta[0] for s in steps if s.delta is not None)
    series_sum = 0
    first = last = None
    rolls = 0
    for s, r in zip(steps, reads):
        if s.status in ("first", "reset"):
            if first is not None:
                series_sum += last - first + rolls * MOD
            first = last = r[1]
            rolls = 0
        elif s.status == "ok":
            rolls += s.rollovers
            last = r[1]
    series_sum += last - first + rolls * MOD
    assert total_raw == series_sum
    # Interval deltas: never negative, never the same end twice, and they add up to the raw
    # deltas except the part after the last boundary (still pending in the state).
    iv = intervals(steps)
    assert all(x[2] >= 0 for x in iv)
    ends = [x[1] for x in iv]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    assert all(x[1] > x[0] for x in iv)
    pending = final.m - final.a_m
    assert sum(x[2] for x in iv) + pending == total_raw

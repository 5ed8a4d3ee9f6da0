"""Consumption deltas from cumulative registers: exact, rollover-aware, aligned to intervals.

Pure logic: no clock, no I/O, no threads. The pipeline hands :func:`step` the state of one
(meter, register) and a new read at a position on a trusted timeline (ms); it gets back the
new state (stored in the same transaction as the records produced) and what to emit.

Arithmetic is exact: values are (mantissa, exponent) pairs, brought to a common exponent
and subtracted as integers. Interpolated values at interval boundaries are rounded (half to
even) to the finest resolution of the two reads, and each interval delta is the difference
of two such cumulative values, so the deltas of a series always add up exactly to the change
of the register, whatever the rounding.

Wire convention for deltas (they are ordinary Readings):

* ``quantity = "<register>/delta/<span>s"``, e.g. ``1-0:1.8.0/delta/900s``; the span is the
  elapsed time in seconds (ms resolution: ``523.4s``), so a delta is self-describing;
* ``meter_ts_ms`` is the END of the span, so it covers ``[meter_ts_ms - span, meter_ts_ms]``;
* unit, exponent and bus are those of the register; ``rx_ts_ms`` is that of the read that
  closed it; an interpolated end or start makes it ``estimated``.

Regular interval deltas span exactly ``interval_s`` and end on a boundary (multiples of the
interval since the Unix epoch, i.e. UTC-aligned). Partial spans occur only at the start of a
series (first read ever, after a meter reset, after a gap) and before a reset or gap; a delta
spanning a gap is one exact delta between the two real reads around it (never interpolated).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any, Iterable, Sequence

from ..model import to_decimal

# Units of cumulative quantities: energy, volume, heat (as drivers write them).
CUMULATIVE_UNITS = frozenset({
    "Wh", "kWh", "MWh", "GWh", "varh", "kvarh", "Mvarh", "VAh", "kVAh", "MVAh",
    "J", "kJ", "MJ", "GJ", "cal", "kcal", "Mcal", "Gcal", "BTU", "therm",
    "m3", "m³", "l", "L", "dm3", "ft3", "gal", "Nm3",
})
VOLUME_UNITS = frozenset({"m3", "m³", "l", "L", "dm3", "ft3", "gal", "Nm3"})
DELTA_MARK = "/delta/"
# A decrease is called a rollover only if the wrapped delta is at most this share of the
# register's range: 99990 -> 5 on a 5-digit register is a wrap, 60000 -> 0 is a reset.
ROLLOVER_MAX_FRACTION = Fraction(1, 10)
HOUR_MS = 3_600_000

_DELTA_RE = re.compile(r"(.+)/delta/(\d+(?:\.\d{1,3})?)s")


def delta_quantity(register: str, span_ms: int) -> str:
    """``1-0:1.8.0`` and 900000 -> ``1-0:1.8.0/delta/900s``."""
    s, ms = divmod(span_ms, 1000)
    return f"{register}{DELTA_MARK}{s}s" if not ms else \
        f"{register}{DELTA_MARK}{s}.{ms:03d}".rstrip("0") + "s"


def parse_delta_quantity(quantity: str) -> tuple[str, int] | None:
    """Inverse of :func:`delta_quantity`: (register, span_ms), or None for a plain quantity."""
    m = _DELTA_RE.fullmatch(quantity)
    if m is None:
        return None
    return m[1], int(Decimal(m[2]) * 1000)


def is_delta(quantity: str) -> bool:
    return DELTA_MARK in quantity


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def is_cumulative(quantity: str, unit: str, patterns: Sequence[str] | None = None) -> bool:
    """A register whose value only grows: by the configured patterns, else by its unit."""
    if is_delta(quantity):
        return False
    if patterns is not None:
        return matches(quantity, patterns)
    return unit in CUMULATIVE_UNITS


# --------------------------------------------------------------------------- exact values


def common(m1: int, e1: int, m2: int, e2: int) -> tuple[int, int, int]:
    """Both mantissas at the finer exponent: (a, b, e)."""
    e = min(e1, e2)
    return m1 * 10 ** (e1 - e), m2 * 10 ** (e2 - e), e


def rescale(m: int, e: int, to: int) -> int:
    """m * 10**e as a mantissa at exponent `to` (to <= e)."""
    return m * 10 ** (e - to)


@dataclass(frozen=True, slots=True)
class Modulus:
    """Where a register wraps, as mantissa at exponent."""

    mantissa: int
    exponent: int

    @classmethod
    def of(cls, *, digits: int | None = None, bits: int | None = None,
           wrap_at: str | None = None, exponent: int = 0) -> "Modulus":
        """digits/bits count the register's raw mantissa (at the reading's exponent);
        wrap_at is a value in the register's unit."""
        if digits is not None:
            return cls(10 ** digits, exponent)
        if bits is not None:
            return cls(2 ** bits, exponent)
        if wrap_at is not None:
            sign, digs, exp = Decimal(wrap_at).as_tuple()
            return cls(int("".join(map(str, digs))), int(exp))
        raise ValueError("a modulus needs digits, bits or wrap_at")


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class RegisterState:
    """Everything needed to continue one register's delta series after a restart.

    Stored as a CBOR list in the store's cursors table, in the same transaction as the
    readings it produced. Values are mantissas at exponent ``e``. Treated as immutable
    (step() returns a new one); not frozen only because frozen construction costs a
    third of the edge's time per reading.
    """

    m: int  # last read value
    e: int
    t: int  # its position (ms)
    series: int = 0  # bumped by each meter reset / replacement
    a_t: int = 0  # anchor: where the next emitted delta starts (a boundary or a read)
    a_m: int = 0  # the register value there (same frame as m, may be interpolated)
    a_est: bool = False  # the anchor value was interpolated
    changed_t: int = 0  # last position at which the value changed
    still_since: int | None = None  # start of the current run without change
    flow_since: int | None = None  # start of the current run without a zero-flow hour
    fwd_t: int | None = None  # report by exception: position of the last forwarded value
    fwd_m: int | None = None
    fwd_e: int = 0

    def to_obj(self) -> list[Any]:
        return [1, self.m, self.e, self.t, self.series, self.a_t, self.a_m, self.a_est,
                self.changed_t, self.still_since, self.flow_since, self.fwd_t, self.fwd_m,
                self.fwd_e]

    @classmethod
    def from_obj(cls, o: Any) -> "RegisterState":
        if not isinstance(o, list) or len(o) != 14 or o[0] != 1:
            raise ValueError(f"not a register state: {o!r}")
        return cls(*o[1:])

    @property
    def value(self) -> Decimal:
        return to_decimal(self.m, self.e)


@dataclass(frozen=True, slots=True)
class IntervalDelta:
    start_ms: int
    end_ms: int
    mantissa: int
    exponent: int
    estimated: bool

    @property
    def span_ms(self) -> int:
        return self.end_ms - self.start_ms

    @property
    def value(self) -> Decimal:
        return to_decimal(self.mantissa, self.exponent)


@dataclass(frozen=True, slots=True)
class GapInfo:
    from_ms: int
    to_ms: int
    missing_intervals: int  # whole intervals between the two reads that got no delta
    mantissa: int  # consumption across the gap (exact, from the two real reads)
    exponent: int


@dataclass(frozen=True, slots=True)
class ResetInfo:
    old_m: int
    old_e: int
    old_t: int
    new_m: int
    new_e: int
    new_t: int


# status of a step
FIRST = "first"
OK = "ok"
DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"
RESET = "reset"


@dataclass(frozen=True, slots=True)
class Step:
    state: RegisterState | None  # None: nothing changed (duplicate, out of order)
    status: str
    delta: tuple[int, int] | None = None  # (mantissa, exponent) since the previous read
    elapsed_ms: int | None = None
    rollovers: int = 0
    intervals: tuple[IntervalDelta, ...] = ()
    gap: GapInfo | None = None
    reset: ResetInfo | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    interval_ms: int = 900_000
    gap_intervals: int = 4
    modulus: Modulus | None = None
    # Positions within this read's span come from a clock that jumped: interpolated values
    # across it are only estimates (the pipeline sets this per read).
    estimated: bool = False


def first_state(m: int, e: int, t: int, series: int = 0) -> RegisterState:
    return RegisterState(m, e, t, series, a_t=t, a_m=m, a_est=False, changed_t=t)


def step(state: RegisterState | None, m: int, e: int, t: int, cfg: Settings) -> Step:
    """Advance one register by one read (value m * 10**e at position t)."""
    if state is None:
        return Step(first_state(m, e, t), FIRST)
    old, new, ce = common(state.m, state.e, m, e)
    if t == state.t and old == new:
        return Step(None, DUPLICATE)
    if t <= state.t:  # older, or another value for the same instant: cannot be placed
        return Step(None, OUT_OF_ORDER)
    raw = new - old
    rollovers = 0
    if raw < 0:
        wrapped = _unwrap(old, new, ce, cfg.modulus)
        if wrapped is None:
            return _reset(state, m, e, t, ce, cfg)
        raw, rollovers = wrapped, 1
    elapsed = t - state.t
    anchor_m = rescale(state.a_m, state.e, ce)
    intervals: list[IntervalDelta] = []
    gap: GapInfo | None = None
    I = cfg.interval_ms
    if elapsed > cfg.gap_intervals * I:
        # Not interpolated across: close the series at the last read, one exact delta over
        # the gap, and start afresh at this read.
        if state.t > state.a_t:
            intervals.append(IntervalDelta(state.a_t, state.t, old - anchor_m, ce, state.a_est))
        intervals.append(IntervalDelta(state.t, t, raw, ce, False))
        first_start = -(-state.t // I) * I
        last_end = t // I * I
        gap = GapInfo(state.t, t, max(0, (last_end - first_start) // I), raw, ce)
        a_t, a_m, a_est = t, old + raw, False
    else:
        a_t, a_m, a_est = state.a_t, anchor_m, state.a_est
        b = (state.t // I + 1) * I
        while b <= t:
            exact_end = b == t
            vb = old + (raw if exact_end else round(Fraction(raw * (b - state.t), elapsed)))
            est = a_est or not exact_end or cfg.estimated
            intervals.append(IntervalDelta(a_t, b, vb - a_m, ce, est))
            a_t, a_m, a_est = b, vb, not exact_end or cfg.estimated
            b += I
    # Re-frame the anchor onto the new raw value (after a rollover it lies below zero).
    a_m -= old + raw - new
    changed_t, still_since, flow_since = _flow(state, raw, t)
    ns = RegisterState(new, ce, t, state.series, a_t, a_m, a_est, changed_t, still_since,
                       flow_since, state.fwd_t, state.fwd_m, state.fwd_e)
    return Step(ns, OK, (raw, ce), elapsed, rollovers, tuple(intervals), gap)


def _unwrap(old: int, new: int, e: int, mod: Modulus | None) -> int | None:
    """The delta if old -> new is a rollover of `mod`, else None."""
    if mod is None:
        return None
    if mod.exponent < e:  # the modulus is finer than the values: not representable exactly
        return None
    M = rescale(mod.mantissa, mod.exponent, e)
    if not (0 <= new < M and old < M):
        return None
    wrapped = new + M - old
    if wrapped > M * ROLLOVER_MAX_FRACTION:
        return None
    return wrapped


def _reset(state: RegisterState, m: int, e: int, t: int, ce: int, cfg: Settings) -> Step:
    """A decrease that is not a rollover: close the old series at its last read and start
    a new one here. Never a negative consumption."""
    intervals = ()
    if state.t > state.a_t:
        old, _, ce2 = common(state.m, state.e, m, e)
        a = rescale(state.a_m, state.e, ce2)
        intervals = (IntervalDelta(state.a_t, state.t, old - a, ce2, state.a_est),)
    ns = replace(first_state(m, e, t, state.series + 1), fwd_t=state.fwd_t, fwd_m=state.fwd_m,
                 fwd_e=state.fwd_e)
    return Step(ns, RESET, intervals=intervals,
                reset=ResetInfo(state.m, state.e, state.t, m, e, t))


def _flow(state: RegisterState, raw: int, t: int) -> tuple[int, int | None, int | None]:
    """Track the facts the leak and stuck-register rules need.

    A zero-flow hour is a span of at least an hour with no change. Continuous flow is only
    claimed where reads are at most an hour apart: a longer span with consumption could hide
    a zero-flow hour, so it restarts the evidence instead of extending it.
    """
    if raw == 0:
        still = state.still_since if state.still_since is not None else state.t
        flow = None if t - still >= HOUR_MS else state.flow_since
        return state.changed_t, still, flow
    if t - state.t > HOUR_MS:
        return t, None, t
    return t, None, state.flow_since if state.flow_since is not None else state.t


def forward_due(state: RegisterState | None, t: int, every_ms: int) -> bool:
    """Report by exception for a cumulative register: forward its value at most once per
    `every_ms` grid period (always the first one of a series)."""
    if state is None or state.fwd_t is None:
        return True
    return t // every_ms > state.fwd_t // every_ms


def deadband_exceeded(last_m: int | None, last_e: int, m: int, e: int,
                      deadband: Fraction) -> bool:
    """An instantaneous value moved by more than `deadband` (a fraction) of the last
    forwarded one; from or to zero any change counts."""
    if last_m is None:
        return True
    a, b, _ = common(last_m, last_e, m, e)
    if a == 0:
        return b != 0
    return Fraction(abs(b - a), abs(a)) > deadband


@dataclass
class InstantState:
    """Report by exception for a non-cumulative value: the last one forwarded."""

    m: int
    e: int
    t: int
    quality: tuple[str, ...] = field(default_factory=tuple)

    def to_obj(self) -> list[Any]:
        return [2, self.m, self.e, self.t, list(self.quality)]

    @classmethod
    def from_obj(cls, o: Any) -> "InstantState":
        if not isinstance(o, list) or len(o) != 5 or o[0] != 2:
            raise ValueError(f"not an instant state: {o!r}")
        return cls(o[1], o[2], o[3], tuple(o[4]))

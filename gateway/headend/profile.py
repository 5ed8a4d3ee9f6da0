"""Interval consumption from a cumulative register, aligned to the interval grid.

The register's value at each grid boundary (multiples of the interval since the Unix epoch,
UTC) is the reading taken exactly there, else the linear interpolation between the readings
around it (exact decimal arithmetic, rounded half-even to the finer of their resolutions).
Each interval's consumption is the difference of its two boundary values, so a series adds
up exactly to the register's change. An interval's quality is the worst of its ends:

* ``measured``      both ends are readings, or lie between readings at most one interval apart;
* ``interpolated``  an end lies between readings up to ``gap_intervals`` intervals apart
  (missing intervals of up to that many, as the gateway's edge interpolates);
* ``estimated``     an end lies in a longer gap (or a reading flagged estimated);
* ``missing``       no reading on one side: no value.

A group's profile is the sum of its meters' profiles per interval; its quality is the worst
of theirs, and its value is missing when any meter's is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from fractions import Fraction

QUALITIES = ("measured", "interpolated", "estimated", "missing")
_RANK = {q: i for i, q in enumerate(QUALITIES)}
MAX_TS = 253_402_300_800_000  # year 10000
_UNIT_MS = {"s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


class ProfileError(ValueError):
    """Bad --interval/--from/--to, unknown group, ..."""


def parse_interval(text: str) -> int:
    m = re.fullmatch(r"\s*(\d{1,9})\s*(s|m|min|h|d)\s*", text)
    if not m or int(m.group(1)) <= 0:
        raise ProfileError(f"interval {text!r}: use e.g. 15m, 1h, 900s, 1d")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_time(text: str) -> int:
    """ISO 8601 (naive = UTC, 'Z' allowed) or Unix milliseconds -> ms."""
    t = text.strip()
    bad = ProfileError(f"time {text!r}: use ISO 8601 (2026-12-01T00:00Z) or Unix ms "
                       f"(years 1970-9999)")
    if re.fullmatch(r"\d{10,20}", t):
        ms = int(t)
    else:
        try:
            d = datetime.fromisoformat(t.replace("Z", "+00:00"))
            if d.tzinfo is None:
                d = d.replace(tzinfo=timezone.utc)
            ms = int(d.timestamp() * 1000)
        except (ValueError, OverflowError, OSError):
            raise bad from None
    if not 0 <= ms < MAX_TS:
        raise bad
    return ms


def iso(ms: int) -> str:
    d = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return d.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Interval:
    start_ms: int
    end_ms: int
    value: Decimal | None
    quality: str


def _worse(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


def _interp(t: int, ta: int, va: Decimal, tb: int, vb: Decimal) -> Decimal:
    """va + (vb - va) * (t - ta) / (tb - ta), rounded half-even to the finer exponent."""
    exp = min(va.as_tuple().exponent, vb.as_tuple().exponent)  # type: ignore[type-var]
    q = Decimal(1).scaleb(exp)
    f = Fraction(va) + (Fraction(vb) - Fraction(va)) * Fraction(t - ta, tb - ta)
    return (Decimal(f.numerator) / Decimal(f.denominator)).quantize(q) if f.denominator != 1 \
        else Decimal(f.numerator).quantize(q)


def boundary_values(reads: Sequence[tuple[int, Decimal, bool]], bounds: Sequence[int],
                    interval_ms: int, gap_intervals: int) -> list[tuple[Decimal | None, str]]:
    """(value, quality) of the register at each boundary; reads are (ts, value, estimated)
    in time order (one per ts: the last one wins)."""
    by_ts: dict[int, tuple[Decimal, bool]] = {}
    for t, v, est in reads:
        by_ts[t] = (v, est)
    ts = sorted(by_ts)
    out: list[tuple[Decimal | None, str]] = []
    j = 0  # first read with ts >= boundary
    for b in bounds:
        while j < len(ts) and ts[j] < b:
            j += 1
        if j < len(ts) and ts[j] == b:
            v, est = by_ts[b]
            out.append((v, "estimated" if est else "measured"))
            continue
        if j == 0 or j == len(ts):
            out.append((None, "missing"))
            continue
        ta, tb = ts[j - 1], ts[j]
        (va, ea), (vb, eb) = by_ts[ta], by_ts[tb]
        span = tb - ta
        q = ("measured" if span <= interval_ms else
             "interpolated" if span <= gap_intervals * interval_ms else "estimated")
        if ea or eb:
            q = _worse(q, "estimated")
        out.append((_interp(b, ta, va, tb, vb), q))
    return out


def grid(from_ms: int, to_ms: int, interval_ms: int) -> list[int]:
    if to_ms <= from_ms:
        raise ProfileError("--to must be after --from")
    start = from_ms // interval_ms * interval_ms
    end = -(-to_ms // interval_ms) * interval_ms
    if (end - start) // interval_ms > 1_000_000:
        raise ProfileError("more than 1,000,000 intervals: narrow --from/--to")
    return list(range(start, end + 1, interval_ms))


def meter_profile(reads: Sequence[tuple[int, Decimal, bool]], from_ms: int, to_ms: int,
                  interval_ms: int, gap_intervals: int = 4) -> list[Interval]:
    bounds = grid(from_ms, to_ms, interval_ms)
    vals = boundary_values(reads, bounds, interval_ms, gap_intervals)
    out = []
    for k in range(1, len(bounds)):
        (va, qa), (vb, qb) = vals[k - 1], vals[k]
        q = _worse(qa, qb)
        out.append(Interval(bounds[k - 1], bounds[k],
                            None if va is None or vb is None else vb - va, q))
    return out


def sum_profiles(profiles: Sequence[Sequence[Interval]]) -> list[Interval]:
    if not profiles:
        return []
    out = []
    for ivs in zip(*profiles):
        q = "measured"
        total: Decimal | None = Decimal(0)
        for iv in ivs:
            q = _worse(q, iv.quality)
            total = None if total is None or iv.value is None else total + iv.value
        out.append(Interval(ivs[0].start_ms, ivs[0].end_ms, total, q))
    return out

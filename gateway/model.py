"""The one canonical data model every driver emits and every later stage consumes.

Values are exact: an integer mantissa and a decimal exponent (value = mantissa * 10**exponent).
A billing register must never pass through a float, because 0.1 kWh is not representable
and rounding errors accumulate in deltas and invoices.

Timestamps are integer milliseconds since the Unix epoch (UTC), so records compare and
serialise exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Union


# Quality flags a Reading may carry (free-form strings are allowed; these are the known ones).
QUALITY_ESTIMATED = "estimated"
QUALITY_CLOCK_UNSYNCED = "clock_unsynced"
QUALITY_METER_ERROR = "meter_error"
QUALITY_SIMULATED = "simulated"
# A stored value (a load-profile row, an M-Bus storage number >= 1): its meter_ts is when the
# meter captured it, not the meter's clock now, so it says nothing about clock drift.
QUALITY_HISTORIC = "historic"
# The meter's timestamp on a current value is far from the gateway's synchronised clock
# (edge.clock.meter_time_window_s): a replayed telegram, or a meter clock never set.
QUALITY_METER_TIME_SUSPECT = "meter_time_suspect"
# The meter's security bits say encrypted but the value arrived in clear (a capture stored
# already decrypted, or a meter sending in clear with the flag set): not authenticated.
QUALITY_NOT_ENCRYPTED = "not_encrypted"

SEVERITIES = ("debug", "info", "warning", "error")


def now_ms() -> int:
    """Wall-clock time in integer milliseconds."""
    return time.time_ns() // 1_000_000


def exact(value: Union[int, str, Decimal]) -> tuple[int, int]:
    """Turn an int, a decimal string or a Decimal into (mantissa, exponent) without floats.

    Trailing zeros are kept as given ("12.50" -> (1250, -2)): the meter's resolution is
    information, not noise.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"exact values must not be float or bool, got {value!r}")
    if isinstance(value, int):
        return value, 0
    d = Decimal(value) if isinstance(value, str) else value
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    sign, digits, exp = d.as_tuple()
    mantissa = int("".join(map(str, digits)) or "0")
    return (-mantissa if sign else mantissa), int(exp)


def to_decimal(mantissa: int, exponent: int) -> Decimal:
    """mantissa * 10**exponent as a Decimal, exactly at any length (scaleb would round to
    the context's 28 digits)."""
    return Decimal((1 if mantissa < 0 else 0, tuple(int(c) for c in str(abs(mantissa))),
                    exponent))


@dataclass(frozen=True, slots=True)
class Reading:
    """One value read from one meter register.

    quantity is the OBIS code where one exists (e.g. ``1-0:1.8.0``), else the
    EN 13757 / ZCL description. bus is the name of the driver instance it came from.
    """

    meter_id: str
    quantity: str
    mantissa: int
    exponent: int
    unit: str
    meter_ts_ms: int | None
    rx_ts_ms: int
    quality: tuple[str, ...] = ()
    bus: str = ""

    @property
    def value(self) -> Decimal:
        return to_decimal(self.mantissa, self.exponent)

    def to_obj(self) -> list[Any]:
        return [self.meter_id, self.quantity, self.mantissa, self.exponent, self.unit,
                self.meter_ts_ms, self.rx_ts_ms, list(self.quality), self.bus]

    @classmethod
    def from_obj(cls, o: list[Any]) -> "Reading":
        _check_shape(o, 9, "reading")
        return cls(o[0], o[1], o[2], o[3], o[4], o[5], o[6], tuple(o[7]), o[8])


@dataclass(frozen=True, slots=True)
class Event:
    """A diagnostic or operational event; it is stored and delivered like a reading.

    kind is a dotted name (``meter.crc_error``, ``store.evicted``, ``uplink.connected``);
    detail holds CBOR-serialisable facts (never secrets).
    """

    kind: str
    ts_ms: int
    source: str
    meter_id: str | None = None
    severity: str = "info"
    detail: dict[str, Any] = field(default_factory=dict)

    def to_obj(self) -> list[Any]:
        return [self.kind, self.ts_ms, self.source, self.meter_id, self.severity, self.detail]

    @classmethod
    def from_obj(cls, o: list[Any]) -> "Event":
        _check_shape(o, 6, "event")
        return cls(o[0], o[1], o[2], o[3], o[4], dict(o[5]))


@dataclass(frozen=True, slots=True)
class Gap:
    """Explicit statement that the seq numbers first..last were dropped on the gateway.

    Written by the store in the same transaction that evicts the rows, and delivered like
    any record, so the head-end can tell an accounted loss from a silent one.
    """

    first_seq: int
    last_seq: int
    count: int
    reason: str
    ts_ms: int

    def to_obj(self) -> list[Any]:
        return [self.first_seq, self.last_seq, self.count, self.reason, self.ts_ms]

    @classmethod
    def from_obj(cls, o: list[Any]) -> "Gap":
        _check_shape(o, 5, "gap")
        return cls(o[0], o[1], o[2], o[3], o[4])


@dataclass(frozen=True, slots=True)
class Diag:
    """A diagnostics snapshot: the health figures of the gateway or of one meter.

    scope is ``gateway`` (meter_id None) or ``meter``; metrics holds CBOR-serialisable
    facts (counters, ratios, flags; see gateway.edge.diagnostics). Published on ``up/diag``
    through the store, like readings, so a snapshot taken during an outage is not lost.
    """

    ts_ms: int
    scope: str
    meter_id: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_obj(self) -> list[Any]:
        return [self.ts_ms, self.scope, self.meter_id, self.metrics]

    @classmethod
    def from_obj(cls, o: list[Any]) -> "Diag":
        _check_shape(o, 4, "diag")
        return cls(o[0], o[1], o[2], dict(o[3]))


Record = Union[Reading, Event, Gap, Diag]

# Stable numeric tags used in the store and on the wire.
KIND_READING = 0
KIND_EVENT = 1
KIND_GAP = 2
KIND_DIAG = 3
KIND_OF = {Reading: KIND_READING, Event: KIND_EVENT, Gap: KIND_GAP, Diag: KIND_DIAG}
CLASS_OF: dict[int, Any] = {v: k for k, v in KIND_OF.items()}


def kind_of(record: Record) -> int:
    return KIND_OF[type(record)]


def record_from_obj(kind: int, obj: list[Any]) -> Record:
    try:
        cls = CLASS_OF[kind]
    except KeyError:
        raise ValueError(f"unknown record kind {kind!r}") from None
    return cls.from_obj(obj)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record with the seq number the store gave it."""

    seq: int
    record: Record


def _check_shape(o: Any, n: int, what: str) -> None:
    if not isinstance(o, (list, tuple)) or len(o) != n:
        raise ValueError(f"malformed {what} record: expected a list of {n} items")

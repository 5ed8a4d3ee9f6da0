"""What the runtime has seen go by: the last values and events of every meter, and live feeds.

Drivers call :meth:`Monitor.observe` (through ``Runtime.submit``) on their own threads, so it
must never block: it updates a few dicts under a short lock and offers each record to the
live subscribers with ``put_nowait``. A console that stops reading only fills its own bounded
queue; what does not fit is counted as dropped for that console, never waited for.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Iterable

from ..model import Event, Gap, Reading, Record, to_decimal
from .mainreg import main_quantity

MAX_QUANTITIES_PER_METER = 64
EVENTS_PER_METER = 20
RECENT_EVENTS = 200


def exact_text(mantissa: int, exponent: int) -> str:
    """The exact decimal value as text, never via a float (``1234567, -3`` -> ``1234.567``)."""
    return format(to_decimal(mantissa, exponent), "f")


def record_to_dict(rec: Record) -> dict[str, Any]:
    if isinstance(rec, Reading):
        return {"type": "reading", "meter_id": rec.meter_id, "bus": rec.bus,
                "quantity": rec.quantity, "value": exact_text(rec.mantissa, rec.exponent),
                "unit": rec.unit, "meter_ts_ms": rec.meter_ts_ms, "rx_ts_ms": rec.rx_ts_ms,
                "quality": list(rec.quality)}
    if isinstance(rec, Event):
        return {"type": "event", "kind": rec.kind, "ts_ms": rec.ts_ms, "source": rec.source,
                "meter_id": rec.meter_id, "severity": rec.severity, "detail": rec.detail}
    if isinstance(rec, Gap):
        return {"type": "gap", "first_seq": rec.first_seq, "last_seq": rec.last_seq,
                "count": rec.count, "reason": rec.reason, "ts_ms": rec.ts_ms}
    return {"type": type(rec).__name__}


@dataclass
class MeterSeen:
    bus: str
    last_seen_ms: int = 0
    readings: int = 0
    events: int = 0
    last: dict[str, Reading] = field(default_factory=dict)  # quantity -> latest reading
    recent_events: deque = field(default_factory=lambda: deque(maxlen=EVENTS_PER_METER))
    last_quantity: str | None = None


def _older(new: Reading, old: Reading) -> bool:
    """``new`` was measured before ``old`` (both stamped by the meter)."""
    return new.meter_ts_ms is not None and old.meter_ts_ms is not None \
        and new.meter_ts_ms < old.meter_ts_ms


class Subscription:
    """A console's live feed: a bounded queue plus a count of what it missed."""

    def __init__(self, accept: Callable[[Record], bool], maxsize: int) -> None:
        self.accept = accept
        self.queue: "queue.Queue[Record]" = queue.Queue(maxsize)
        self.dropped = 0

    def offer(self, rec: Record) -> None:
        try:
            self.queue.put_nowait(rec)
        except queue.Full:
            self.dropped += 1


class Monitor:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meters: dict[str, MeterSeen] = {}
        self._events: deque[Event] = deque(maxlen=RECENT_EVENTS)
        self._subs: list[Subscription] = []
        self.records_seen = 0

    def observe(self, records: Iterable[Record]) -> None:
        with self._lock:
            subs = list(self._subs)
            for rec in records:
                self.records_seen += 1
                if isinstance(rec, Reading):
                    m = self._meter(rec.meter_id, rec.bus)
                    m.readings += 1
                    m.last_seen_ms = max(m.last_seen_ms, rec.rx_ts_ms)
                    old = m.last.get(rec.quantity)
                    if old is not None and _older(rec, old):
                        pass  # a value from the meter's past (profile, storage): keep the newer
                    elif old is not None or len(m.last) < MAX_QUANTITIES_PER_METER:
                        m.last[rec.quantity] = rec
                    m.last_quantity = rec.quantity
                elif isinstance(rec, Event):
                    self._events.append(rec)
                    if rec.meter_id:
                        m = self._meter(rec.meter_id, rec.source)
                        m.events += 1
                        m.recent_events.append(rec)
                for sub in subs:
                    if sub.accept(rec):
                        sub.offer(rec)

    def _meter(self, meter_id: str, bus: str) -> MeterSeen:
        m = self._meters.get(meter_id)
        if m is None:
            m = self._meters[meter_id] = MeterSeen(bus)
        elif bus and not m.bus:
            m.bus = bus
        return m

    def meters(self) -> dict[str, dict[str, Any]]:
        """A snapshot per meter: bus, last seen, counts, the latest reading."""
        with self._lock:
            out = {}
            for mid, m in self._meters.items():
                main = main_quantity({q: r.unit for q, r in m.last.items()}) \
                    or m.last_quantity
                last = m.last.get(main) if main else None
                out[mid] = {"bus": m.bus, "last_seen_ms": m.last_seen_ms or None,
                            "readings": m.readings, "events": m.events,
                            "last": record_to_dict(last) if last else None,
                            "last_event": (record_to_dict(m.recent_events[-1])
                                           if m.recent_events else None)}
            return out

    def meter(self, meter_id: str) -> dict[str, Any] | None:
        with self._lock:
            m = self._meters.get(meter_id)
            if m is None:
                return None
            return {"bus": m.bus, "last_seen_ms": m.last_seen_ms or None,
                    "readings_seen": m.readings, "events_seen": m.events,
                    "last_readings": [record_to_dict(r) for _, r in sorted(m.last.items())],
                    "events": [record_to_dict(e) for e in m.recent_events]}

    def recent_events(self, n: int = 20) -> list[Event]:
        with self._lock:
            return list(self._events)[-n:]

    def subscribe(self, accept: Callable[[Record], bool], maxsize: int = 2000) -> Subscription:
        sub = Subscription(accept, maxsize)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

"""What the Zigbee driver knows of each device, and its requests awaiting an answer.

Why apart: the driver's job is to react to frames; the bookkeeping it reacts with (a
device's scaling, schedule and held values; which request a ZCL or ZDO answer is for) is
plain data with no port or thread, easier to read and test on its own.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from ..protocols import xbee, zcl
from .bus import MeterStats
from .zigbee_setup import DeviceSetup
from .zigbee_values import AcScale, MeteringScale

HELD_VALUES_MAX = 32  # values held per device while its scaling is unknown
# MeterStats fields a Zigbee device does not fill: most devices report on their own, so
# there are no reads to count; the console takes reads ok/failed from the edge's count
# (a missed expected reading is a failed one) when a driver's row has none. CRC errors
# are the line's (bus_state), not a device's.
NOT_COUNTED = ("success", "failures", "last_ok_ms", "last_error", "crc_errors")


@dataclass
class Device:
    ieee: int
    meter_id: str
    endpoint: int
    profile: int
    setup: DeviceSetup
    stats: MeterStats
    expected_interval_s: float | None = None
    nwk: int = xbee.UNKNOWN16
    metering: MeteringScale | None = None
    ac: AcScale | None = None
    manufacturer: str | None = None
    model: str | None = None
    busy: bool = False            # a set-up request is in flight
    next_setup_at: float = 0.0
    next_poll_at: float = 0.0
    next_rssi_at: float = 0.0
    last_seen: float = 0.0
    last_seen_ms: int | None = None
    silent: bool = False
    last_status: int | None = None
    held: list[tuple[int, int, zcl.TypedValue, int]] = field(default_factory=list)
    ep_candidates: list[int] = field(default_factory=list)  # endpoints still to describe

    @property
    def ieee_hex(self) -> str:
        return xbee.eui64_hex(self.ieee)

    def restart_setup(self, now: float) -> None:
        """A rejoin or a module reset: forget the scaling and what set-up learnt."""
        self.setup.restart()
        self.metering = self.ac = None
        self.busy = False
        self.next_setup_at = now

    def polled_clusters(self) -> list[int]:
        return self.setup.polled_clusters()

    def hold(self, cluster: int, attr: int, tv: zcl.TypedValue, rx: int) -> None:
        """Keep a value until its cluster's scaling is known (bounded: oldest dropped)."""
        if len(self.held) >= HELD_VALUES_MAX:
            self.held.pop(0)
            self.stats.count("held_dropped")
        self.held.append((cluster, attr, tv, rx))
        self.stats.count("held")

    def take_held(self, fresh: set[tuple[int, int]]) -> list[tuple[int, int, zcl.TypedValue, int]]:
        """The held values to publish now, except those a newer read brought (``fresh``:
        a report held at start-up and the read that follows it would otherwise be the same
        reading twice)."""
        held, self.held = self.held, []
        out = []
        for item in held:
            if (item[0], item[1]) in fresh:
                self.stats.count("held_superseded")
            else:
                out.append(item)
        return out

    def snapshot(self) -> dict[str, Any]:
        """The ``meters``/``diag`` row: the common counters, the bus's own, the device."""
        m = self.metering
        row = self.stats.as_dict()
        for name in NOT_COUNTED:
            del row[name]
        return {**row, "ieee": self.ieee_hex, "nwk": self.nwk,
                "last_seen_ms": self.last_seen_ms, "silent": self.silent,
                "manufacturer": self.manufacturer, "model": self.model,
                "scaling_known": m is not None, "unit": m.units[0] if m else None,
                "multiplier": m.multiplier if m else None,
                "divisor": m.divisor if m else None,
                "reporting": {f"0x{c:04X}": s for c, s in self.setup.reporting.items()}}


@dataclass
class Request:
    """A ZCL or ZDO request awaiting its answer (matched by device and sequence number)."""

    ieee: int
    kind: str
    cluster: int
    zdo: bool
    build: Callable[[int], bytes]  # seq -> payload, so a resend gets a fresh seq
    seq: int = 0
    deadline: float = 0.0
    attempts: int = 0
    future: Future | None = None  # a console `read ID`: its records, or why it failed

    def fail(self, why: str) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(RuntimeError(why))


class Requests:
    """The requests in flight, keyed by (device, sequence number); no clock of its own."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, int], Request] = {}
        self._seq = 0

    def next_seq(self) -> int:
        """A sequence number no request in flight uses (any device: broadcasts share it)."""
        used = {k[1] for k in self._pending}
        for _ in range(256):
            self._seq = (self._seq + 1) & 0xFF
            if self._seq not in used:
                return self._seq
        return self._seq

    def add(self, req: Request) -> None:
        self._pending[(req.ieee, req.seq)] = req

    def answer(self, ieee: int, seq: int, cluster: int, zdo: bool) -> Request | None:
        """The request this answer is for (removed), or None when it answers none: another
        seq, a ZCL answer to a ZDO request, a response cluster that is not the request's."""
        req = self._pending.get((ieee, seq))
        if req is None or req.zdo != zdo:
            return None
        if (req.cluster | 0x8000 if zdo else req.cluster) != cluster:
            return None
        return self._pending.pop((ieee, seq))

    def take(self, ieee: int, seq: int) -> Request | None:
        return self._pending.pop((ieee, seq), None)

    def expired(self, now: float) -> list[Request]:
        gone = [k for k, r in self._pending.items() if r.deadline <= now]
        return [self._pending.pop(k) for k in gone]

    def drop_device(self, ieee: int) -> list[Request]:
        gone = [k for k in self._pending if k[0] == ieee]
        return [self._pending.pop(k) for k in gone]

"""One health snapshot of the running gateway, read by everyone who reports health.

Why one: the console's ``status``/``diag``, the fleet's ``diagnostics`` request, the edge's
gateway metrics and the watchdog each used to collect driver, uplink and store state their
own way (reading private attributes on the way). The wiring module is the one place that
knows the stages; it implements :class:`HealthSource`, and readers depend on that Protocol
only, never on the runtime.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from .driverset import driver_state, meter_stats, safe_call
from .model import now_ms


@dataclass(frozen=True)
class BusHealth:
    name: str
    type: str
    alive: bool                    # the driver thread is running
    state: str                     # driverset.driver_state: "running", "stopped", "dead", ...
    detail: dict[str, Any] = field(default_factory=dict)   # the driver's bus_state()
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)  # meter id -> stats
    refused: int = 0               # batches the store refused (disk full)


@dataclass(frozen=True)
class HealthSnapshot:
    ts_ms: int
    uptime_s: float
    firmware: str
    config_hash: str
    buses: dict[str, BusHealth] = field(default_factory=dict)
    uplink: dict[str, Any] = field(default_factory=dict)   # connected, acked, last_error...
    store: dict[str, Any] = field(default_factory=dict)    # depth, bytes, last_seq, ...
    threads: dict[str, bool] = field(default_factory=dict)  # thread name -> alive
    edge: dict[str, Any] = field(default_factory=dict)     # per-meter alarms and reads

    def dead_threads(self) -> list[str]:
        return sorted(name for name, alive in self.threads.items() if not alive)


class HealthSource(Protocol):
    def health(self) -> HealthSnapshot: ...


def collect(*, firmware: str, config_hash: str, started_mono: float, drivers: Iterable[Any],
            uplink: Any = None, store: Any = None, edge: Any = None) -> HealthSnapshot:
    """Read each stage once through its public API (a broken getter reads as empty)."""
    buses: dict[str, BusHealth] = {}
    threads: dict[str, bool] = {}
    for drv in drivers:
        fn = getattr(drv, "bus_state", None)
        detail = safe_call(fn, {}) if callable(fn) else {}
        buses[drv.bus] = BusHealth(drv.bus, drv.type_name, drv.is_alive(), driver_state(drv),
                                   detail if isinstance(detail, dict) else {}, meter_stats(drv),
                                   getattr(drv, "refused", 0))
        threads[drv.name] = drv.is_alive()
    up: dict[str, Any] = {}
    if uplink is not None:
        up = {**dataclasses.asdict(uplink.state), "alive": uplink.is_alive()}
        threads["uplink"] = up["alive"]
    st: dict[str, Any] = {}
    if store is not None:
        st = {**dataclasses.asdict(store.stats()), "path": store.path,
              "writer_alive": store.writer_alive()}
        threads["store-writer"] = st["writer_alive"]
    ed = safe_call(edge.edge_metrics, {}) if edge is not None else {}
    return HealthSnapshot(now_ms(), time.monotonic() - started_mono, firmware, config_hash,
                          buses, up, st, threads, ed)


def bus_summary(b: BusHealth) -> dict[str, Any]:
    """One bus as the console's ``status`` and the metrics show it."""
    out: dict[str, Any] = {"name": b.name, "type": b.type, "state": b.state,
                           "meters": len(b.meters), "refused": b.refused}
    if b.detail:
        out["bus"] = b.detail
    return out


def uplink_summary(snap: HealthSnapshot, broker: str, client_id: str) -> dict[str, Any]:
    """The uplink as the console's ``status``/``uplink`` and the metrics show it."""
    out: dict[str, Any] = {"broker": broker, "client_id": client_id}
    if not snap.uplink:
        return {**out, "state": "not started", "connected": False}
    up = dict(snap.uplink)
    alive = up.pop("alive")
    extra = up.pop("extra", None) or {}
    out.update(up)
    out["state"] = "connected" if up["connected"] else ("disconnected" if alive else "stopped")
    out["tls_negotiated"] = extra.get("tls_negotiated") if up["connected"] else None
    return out

"""One health snapshot of the running gateway, read by everyone who reports health.

Why one: the console's ``status``/``diag``, the fleet's ``diagnostics`` request, the edge's
gateway metrics and the watchdog each used to collect driver, uplink and store state their
own way (reading private attributes on the way). The wiring module is the one place that
knows the stages; it implements :class:`HealthSource`, and readers depend on that Protocol
only, never on the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class BusHealth:
    name: str
    type: str
    alive: bool                    # the driver thread is running
    state: str                     # "open", "reopening", "stopped", "crashed", ...
    detail: dict[str, Any] = field(default_factory=dict)   # the driver's bus_state()
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)  # meter id -> stats


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

"""Shared pieces of the edge tests (no tests here): a steerable time source and a pipeline
on a real store."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

from gateway.config import EdgeConfig
from gateway.edge.clock import STA_UNSYNC, TIME_ERROR, Clock, KernelClock
from gateway.edge.pipeline import EdgePipeline
from gateway.model import Diag, Event, Reading
from gateway.store import Store

MIN = 60_000
Q = 15 * MIN
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z, a quarter-hour boundary


class FakeTime:
    """Wall and monotonic clocks that tests advance together, or step (a jump), and the
    kernel's sync flag they can flip, as adjtimex would report it."""

    def __init__(self, wall: int = T0, synced: bool = True) -> None:
        self.w = wall
        self.m = 5_000_000
        self.synced = synced

    def wall(self) -> int:
        return self.w

    def mono(self) -> int:
        return self.m

    def kernel(self) -> KernelClock:
        if self.synced:
            return KernelClock(0, 0x2001, 120_000, 1_000)  # TIME_OK, STA_PLL|STA_NANO
        return KernelClock(TIME_ERROR, STA_UNSYNC, 16_000_000, 16_000_000)

    def advance(self, ms: int) -> None:
        self.w += ms
        self.m += ms

    def jump(self, ms: int) -> None:
        self.w += ms


def make_pipeline(store: Store, ft: FakeTime, **cfg: Any) -> EdgePipeline:
    ec = replace(EdgeConfig(), **cfg)
    clock = Clock(wall=ft.wall, mono=ft.mono, kernel=ft.kernel,
                  jump_threshold_ms=ec.clock.jump_threshold_ms)
    return EdgePipeline(ec, store, clock=clock)


def open_store(tmp: Path) -> Store:
    return Store(tmp / "store.db", commit_interval_ms=1)


def stored(store: Store) -> list[Any]:
    store.flush()
    out, after = [], 0
    while True:
        rows = store.read_records(after, 1000)
        if not rows:
            return out
        out += [r.record for r in rows]
        after = rows[-1].seq


def deltas(records: Iterable[Any], meter: str | None = None) -> list[Reading]:
    return [r for r in records if type(r) is Reading and "/delta/" in r.quantity
            and (meter is None or r.meter_id == meter)]


def raw(records: Iterable[Any]) -> list[Reading]:
    return [r for r in records if type(r) is Reading and "/delta/" not in r.quantity]


def events(records: Iterable[Any], prefix: str = "") -> list[Event]:
    return [r for r in records if type(r) is Event and r.kind.startswith(prefix)]


def diags(records: Iterable[Any]) -> list[Diag]:
    return [r for r in records if type(r) is Diag]


def reading(meter: str, value: int, ts: int | None, rx: int, *, q: str = "1-0:1.8.0",
            unit: str = "Wh", e: int = 0, quality: tuple[str, ...] = (),
            bus: str = "bus0") -> Reading:
    return Reading(meter, q, value, e, unit, ts, rx, quality, bus)

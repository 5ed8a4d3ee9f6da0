"""A driver's sink for tests: records what a driver emits (instead of the runtime), and lets a
test wait for a condition rather than for a time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from gateway.model import Event, Reading


class Sink:
    def __init__(self) -> None:
        self.records: list[Any] = []
        self.cond = threading.Condition()
        self.lock = self.cond  # callers that only need mutual exclusion

    def submit(self, records: Any, cursors: Any = None) -> "Future[list[int]]":
        with self.cond:
            self.records.extend(records)
            self.cond.notify_all()
        fut: Future[list[int]] = Future()
        fut.set_result([])
        return fut

    def wait_for(self, pred: Callable[[list[Any]], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = pred(list(self.records))
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = sorted({getattr(r, "kind", getattr(r, "quantity", "?"))
                                    for r in self.records})
                    raise AssertionError(f"condition not met in {timeout} s; got {kinds}")
                self.cond.wait(min(left, 0.2))

    def readings(self, meter: str | None = None, quantity: str | None = None) -> list[Reading]:
        with self.cond:
            return [r for r in self.records if isinstance(r, Reading)
                    and (meter is None or r.meter_id == meter)
                    and (quantity is None or r.quantity == quantity)]

    def events(self, kind: str | None = None, meter: str | None = None) -> list[Event]:
        with self.cond:
            return [r for r in self.records if isinstance(r, Event)
                    and (kind is None or r.kind == kind)
                    and (meter is None or r.meter_id == meter)]

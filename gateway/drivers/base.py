"""What every bus driver shares: a thread, a stop flag, and a sink for its records.

The runtime uses one concurrency model: threads. pyserial is blocking, and a thread per bus
keeps one stuck meter or port from stalling another bus.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any, Iterable, Mapping, Protocol

from ..logs import RateLimitedLog
from ..model import Event, Record, now_ms


class RecordSink(Protocol):
    """Where drivers hand their records: the edge stage, then the store."""

    def submit(self, records: Iterable[Record],
               cursors: Mapping[tuple[str, str], Any] | None = None) -> "Future[list[int]]": ...


class Driver(threading.Thread):
    """Base for one bus: subclasses implement :meth:`loop` and poll ``self.stopping``."""

    type_name = ""

    def __init__(self, name: str, options: Mapping[str, Any], sink: RecordSink) -> None:
        super().__init__(name=f"driver-{name}", daemon=True)
        self.bus = name
        self.options = dict(options)
        self.sink = sink
        self.stopping = threading.Event()
        self.log = logging.getLogger(f"gateway.driver.{name}")
        self.refused = 0  # records the store refused (disk full); counted, logged
        self._refused_log = RateLimitedLog(self.log, 60.0)

    def run(self) -> None:
        try:
            self.loop()
        except Exception:
            # A driver bug is logged with its traceback and reported; the runtime goes on.
            self.log.exception("driver %s crashed", self.bus)
            self.emit([Event("driver.crashed", now_ms(), self.bus, severity="error")])

    def loop(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)

    def emit(self, records: Iterable[Record],
             cursors: Mapping[tuple[str, str], Any] | None = None) -> "Future[list[int]]":
        fut = self.sink.submit(records, cursors)
        fut.add_done_callback(self._check_stored)
        return fut

    def _check_stored(self, fut: "Future[list[int]]") -> None:
        exc = fut.exception()
        if exc is not None:
            self.refused += 1
            self._refused_log.error("driver %s: records not stored: %s", self.bus, exc)

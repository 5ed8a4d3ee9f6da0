"""What every bus driver shares: a thread, a stop flag, and a sink for its records.

The runtime uses one concurrency model: threads. pyserial is blocking, and a thread per bus
keeps one stuck meter or port from stalling another bus.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Mapping, Protocol

from .. import events
from ..logs import RateLimitedLog
from ..model import Record, now_ms
from .context import DriverContext, RecordSink

__all__ = ["Driver", "DriverContext", "RecordSink", "ConsoleCapabilities"]


class Driver(threading.Thread):
    """Base for one bus: subclasses implement :meth:`loop` and poll ``self.stopping``."""

    type_name = ""

    def __init__(self, name: str, options: Mapping[str, Any],
                 ctx: DriverContext | RecordSink) -> None:
        super().__init__(name=f"driver-{name}", daemon=True)
        self.bus = name
        self.options = dict(options)
        # the wiring hands a DriverContext; a bare sink (a test, a tool) is wrapped
        self.ctx = DriverContext.of(ctx, self.options)
        self.sink = self.ctx.sink
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
            self.emit([events.event(events.DRIVER_CRASHED, now_ms(), self.bus)])

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


class ConsoleCapabilities(Protocol):
    """Optional driver methods the field-tech console (``gateway console``) uses.

    A driver is NOT required to have any of them and must not inherit stubs: the control
    server looks each one up with ``getattr(driver, name, None)`` and, when it is missing,
    answers "``COMMAND`` is not supported by driver NAME (type TYPE)". Every method is called
    from a control-connection thread, never from the driver's own thread, so it must be
    thread-safe: a driver that owns a serial port typically queues the request for its loop
    and waits for the answer, bounded by its own reply timeouts. None may block for ever;
    the console gives up waiting after a while, but the call's thread keeps running.
    :class:`gateway.drivers.handoff.WorkQueue` is that queue (the dlms, iec62056-21, mbus
    and wmbus drivers service it between two meters and in their idle waits).
    """

    def meter_stats(self) -> dict[str, dict[str, Any]]:
        """Per-meter counters (``success``, ``failures``, ``retries``, ``crc_errors``,
        ``rssi_dbm``, ``lqi``, ``last_ok_ms``, ...) for ``meters``/``meter ID``/``diag``.
        Its keys are also how the console finds which bus a meter belongs to."""
        ...

    def bus_state(self) -> dict[str, Any]:
        """Bus-level state for ``status``: ``{"state": "open" | "reopening" | ..., "port":
        ..., "error": ...}``; free-form, JSON-serialisable, no secrets."""
        ...

    def read_now(self, meter_id: str) -> list[Record]:
        """``read ID``: read this meter now and return what was read. The readings are
        real: the driver also emits them as usual, so they are stored and delivered.
        Raise KeyError for a meter it does not have, any other exception for a failed read
        (its message is shown to the technician). Meters that send on their own (wM-Bus,
        DLMS push) cannot be asked: their last decoded values are returned (stored when
        they came, not again), or the next ones if none came yet."""
        ...

    def listen(self, seconds: float, callback: Callable[[dict[str, Any]], Any]) -> None:
        """``listen wmbus [SECONDS]``: call ``callback`` with a dict for every telegram heard
        during ``seconds`` (``{"manufacturer", "id", "version", "device_type", "rssi_dbm",
        "known": bool, "hex"?...}``), including meters that are not configured, then return.
        ``callback`` never blocks; it returns False when the console has gone, and the
        driver should then return early."""
        ...

    def scan(self, progress: Callable[[dict[str, Any]], Any] | None = None) -> list[dict[str, Any]]:
        """``scan mbus``: search the bus (primary and/or secondary addresses) and return one
        dict per device found (``{"address", "secondary", "manufacturer", "medium", ...}``).
        ``progress``, if given, is called with each device as it is found and with
        ``{"progress": "...", ...}`` updates; a False return means the console has gone."""
        ...

    def permit_join(self, seconds: int) -> dict[str, Any] | None:
        """``zigbee permit-join SECONDS``: open the network for joining (0 closes it); returns
        what the coordinator answered. A state change: the console audits it."""
        ...

    def set_key(self, meter_id: str, key: bytes) -> None:
        """``keys set METER``: use this key for the meter from now on. The key has already
        been written to ``control.keys_dir/<meter_id>.key`` (hex, mode 0600), where the
        driver should also look for it at start-up (it then wins over the config's key; the
        driver finds the directory with :func:`gateway.drivers.handoff.keys_dir_of`).
        Raise ValueError for a key of the wrong size. M-Bus/wM-Bus: 16 bytes. DLMS:
        16 bytes = the block (encryption) key, 32 = the block key then the authentication
        key. A meter that failed with the old key is retried at once. Never log the key."""
        ...

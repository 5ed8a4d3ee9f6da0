"""The bus skeleton every serial driver extends: port supervisor, work queue, event gate,
per-meter stats.

Why one skeleton: the DLMS/IEC drivers, the M-Bus and wM-Bus open loops and the Zigbee
loop each had their own port life-cycle, hand-off and stats shape, so a fix to one (a USB
adapter unplugged, a console read while the port is down) had to be made four times. A
driver now says only what is particular to its bus:

* a master (it asks, meters answer) implements :meth:`BusDriver.poll_once`: one pass over
  the meters that are due, returning how long it may idle;
* a listener (meters or a dongle send on their own) implements :meth:`BusDriver.on_bytes`
  and the base reads the port for it.

Both may override :meth:`BusDriver.on_open` (dongle set-up, a first poll) and
:meth:`BusDriver.port_baud`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from .. import events
from ..model import Event, now_ms
from .backoff import Backoff
from .base import Driver
from .context import DriverContext, RecordSink
from .handoff import WorkQueue
from .serialport import SerialPortError, open_serial

READ_NOW_TIMEOUT_S = 55.0  # below the console's 60 s, so the technician sees why
READ_CHUNK = 256
PORT_READ_TIMEOUT_S = 0.05  # short: the driver keeps its own deadlines


class ReadFailed(Exception):
    """One meter's read failed; ``kind`` is the catalogued event kind to report."""

    def __init__(self, message: str, kind: str = events.READ_FAILED, **detail: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail


@dataclass
class MeterStats:
    """One meter's counters, the same shape on every bus (``meters``/``diag``/metrics).

    ``counters`` holds the bus-specific ones (``profile_rows``, ``telegrams``, ...), flat
    beside the common ones in :meth:`as_dict`."""

    success: int = 0
    failures: int = 0
    retries: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    decode_errors: int = 0
    last_ok_ms: int | None = None
    last_error: str | None = None
    rssi_dbm: float | None = None
    lqi: int | None = None
    counters: dict[str, Any] = field(default_factory=dict)

    def ok(self) -> None:
        self.success += 1
        self.last_ok_ms = now_ms()
        self.last_error = None

    def failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error[:300]

    def count(self, name: str, n: int = 1) -> None:
        if name in _COMMON:
            setattr(self, name, getattr(self, name) + n)
        else:
            self.counters[name] = self.counters.get(name, 0) + n

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        out.update(self.counters)
        return out


_FIELDS = ("success", "failures", "retries", "timeouts", "crc_errors", "decode_errors",
           "last_ok_ms", "last_error", "rssi_dbm", "lqi")
_COMMON = frozenset(("success", "failures", "retries", "timeouts", "crc_errors",
                     "decode_errors"))


class StatsTable:
    """The per-meter stats of one bus; thread-safe to read from a console thread."""

    def __init__(self) -> None:
        self._rows: dict[str, MeterStats] = {}
        self._lock = threading.Lock()

    def __getitem__(self, meter_id: str) -> MeterStats:
        with self._lock:
            row = self._rows.get(meter_id)
            if row is None:
                row = self._rows[meter_id] = MeterStats()
            return row

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._rows))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {mid: row.as_dict() for mid, row in self._rows.items()}


class EventGate:
    """Rate limit per (meter, kind): the first event at once, then one per interval with the
    count of the ones held back (``suppressed``). A meter sending garbage every second must
    not fill the outbox with identical events."""

    def __init__(self, source: str, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str | None, str], float] = {}
        self._held: dict[tuple[str | None, str], int] = {}

    def admit(self, kind: str, meter_id: str | None, detail: dict[str, Any] | None = None,
              severity: str | None = None) -> Event | None:
        key = (meter_id, kind)
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        info = dict(detail or {})
        held = self._held.pop(key, 0)
        if held:
            info["suppressed"] = held
        return events.event(kind, now_ms(), self.source, meter_id, info, severity)


class BusDriver(Driver):
    """A driver thread that owns one serial port. Subclasses implement :meth:`poll_once`
    (masters) or :meth:`on_bytes` (listeners)."""

    listener = False           # True: the base reads the port and calls on_bytes
    default_baud = 9600
    idle_max_s = 1.0           # longest idle wait between two polls (console work wakes it)

    def __init__(self, name: str, options: Mapping[str, Any],
                 ctx: DriverContext | RecordSink) -> None:
        super().__init__(name, options, ctx)
        self.serial_opts: Mapping[str, Any] = dict(self.options.get("serial") or {})
        self.port_backoff = Backoff(min_s=1.0, max_s=30.0)
        self.ser: Any = None
        self.state = "closed"
        self.last_port_error: str | None = None
        self.cycles = 0
        self.work = WorkQueue(self, self.stopping)
        self.stats = StatsTable()
        self.gate = EventGate(name)

    # ------------------------------------------------------------------ to override
    def port_baud(self) -> int:
        return int(self.serial_opts.get("baud", self.default_baud))

    def on_open(self) -> None:
        """Called once the port is open (set a dongle up, send a first request)."""

    def poll_once(self) -> float:
        """One pass over the meters that are due; return how long the bus may idle."""
        raise NotImplementedError

    def on_bytes(self, data: bytes) -> None:
        """Bytes read from the port (listeners)."""
        raise NotImplementedError

    def on_idle(self) -> None:
        """Called by listeners when a read returned nothing (watch for silence)."""

    def on_open_failed(self, exc: SerialPortError) -> None:
        """Called when the port could not be opened, before the backoff wait (report it)."""

    # ------------------------------------------------------------------ the skeleton
    def loop(self) -> None:
        try:
            while not self.stopping.is_set():
                if not self.open_or_back_off():
                    continue
                try:
                    if self.listener:
                        self._read_once()
                    else:
                        wait = self.poll_once()
                        self.cycles += 1
                        self.work.service()
                        if self.ser is not None:
                            self.work.wait(max(0.0, min(wait, self.idle_max_s)))
                except (OSError, SerialPortError) as exc:  # the port vanished (USB unplugged)
                    self.port_failed(exc)
        finally:
            self.close_port()
            self.work.close()

    def _read_once(self) -> None:
        data = self.ser.read(max(1, min(READ_CHUNK, self.ser.in_waiting or 1)))
        if data:
            self.on_bytes(bytes(data))
        else:
            self.on_idle()
        self.work.service()

    def open_or_back_off(self) -> bool:
        """True once the port is open. If opening fails: say why, wait the backoff (console
        work still runs, a read then says the port is down) and return False."""
        if self.ser is not None:
            return True
        try:
            self.ser = open_serial(self.serial_opts, baud=self.port_baud(),
                                   timeout_s=PORT_READ_TIMEOUT_S)
        except SerialPortError as exc:
            delay = self.port_backoff.fail()
            self.state, self.last_port_error = "reopening", str(exc)
            self.log.error("%s; retrying in %.1f s", exc, delay)
            self.on_open_failed(exc)
            self.work.idle(delay)
            return False
        self.port_backoff.ok()
        self.state = "open"
        self.on_open()
        return True

    def port_failed(self, exc: BaseException) -> None:
        self.log.error("port %s failed: %s; reopening", self.serial_opts.get("port"), exc)
        self.last_port_error = str(exc)
        ev = self.gate.admit(events.PORT_ERROR, None, {"error": str(exc)[:300],
                                                       "port": self.serial_opts.get("port")})
        if ev is not None:
            self.emit([ev])
        self.close_port()

    def close_port(self) -> None:
        if self.ser is not None:
            self.state = "reopening"
            try:
                self.ser.close()
            except OSError:
                pass
            self.ser = None

    # ------------------------------------------------------------------ shared services
    def report(self, kind: str, meter_id: str | None, detail: dict[str, Any] | None = None,
               severity: str | None = None) -> None:
        """Emit one catalogued event through the rate-limit gate."""
        ev = self.gate.admit(kind, meter_id, detail, severity)
        if ev is not None:
            self.emit([ev])

    def on_driver_thread(self, what: str, fn: Callable[[], Any],
                         timeout_s: float = READ_NOW_TIMEOUT_S) -> Any:
        """Run console work on the thread that owns the port, bounded in time."""
        return self.work.call(what, fn, timeout_s)

    def meter_stats(self) -> dict[str, dict[str, Any]]:
        return self.stats.snapshot()

    def bus_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "port": self.serial_opts.get("port"),
                               "cycles": self.cycles}
        if self.state != "open" and self.last_port_error:
            out["error"] = self.last_port_error
        return out

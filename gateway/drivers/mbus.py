"""Wired M-Bus master on RS-485 (through an M-Bus level converter): ``type: mbus``.

Each cycle reads every configured meter: by primary address (SND_NKE, then REQ_UD2) or by
secondary address (select with SND_UD CI 0x52 to address 253, then REQ_UD2 to 253).
REQ_UD2 toggles the FCB after each good answer and repeats it unchanged after a timeout or
a damaged answer, so the slave resends the same telegram instead of skipping one; a
telegram ending in DIF 0x1F asks for the next one (multi-telegram readout).

A meter that fails is reported (``meter.read_failed`` or the codec's event kind) and tried
again next cycle like any other; a vanished port is closed, backed off and reopened.

    drivers:
      - type: mbus
        name: heat-bus
        serial: {port: /dev/ttyUSB0, baud: 2400, parity: E}
        interval_s: 900
        meters:
          - {primary: 5, name: flat-12-heat}
          - {secondary: "12345678"}
          - {secondary: "87654321", key: 000102030405060708090A0B0C0D0E0F}

``MBusMaster`` (the request/response engine on an open port) is also what
``gateway scan mbus`` uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ..config import (
    ID, PATH, REQUIRED, FieldSpec, Schema, SERIAL_SCHEMA, boolean, hex_bytes, integer, list_of, mapping,
    number, one_of_keys, text,
)
from ..model import QUALITY_METER_ERROR, Event, Reading, now_ms
from .backoff import Backoff
from .keys import key_from
from .base import Driver, RecordSink

SECONDARY_PATTERN = r"[0-9A-Fa-f]{8}|[0-9A-Fa-f]{16}"

METER_SCHEMA = Schema((
    FieldSpec("primary", integer(0, 250), None, help="primary address 0-250"),
    FieldSpec("secondary", text("a secondary address: 8 id digits, or 16 hex digits "
                                "IIIIIIIIMMMMVVDD", SECONDARY_PATTERN), None,
              help="secondary address (id, optionally manufacturer/version/medium)"),
    FieldSpec("name", ID, None, help="meter id used in readings (default: the meter's id)"),
    FieldSpec("key", hex_bytes(16), None, secret=True,
              help="AES-128 key if the meter encrypts (security mode 5)"),
    FieldSpec("key_file", PATH, None, secret=True, path=True, must_exist=True,
              help="file holding the AES-128 key (hex), instead of key"),
), check=(one_of_keys("primary", "secondary", required=True), one_of_keys("key", "key_file")),
   help="one meter on the bus")

SCHEMA = Schema((
    FieldSpec("serial", mapping(SERIAL_SCHEMA), help="the M-Bus level converter's port; M-Bus "
              "uses 300, 2400 or 9600 baud, 8E1"),
    FieldSpec("interval_s", number(gt=0, what="a number of seconds"), 900,
              help="seconds between readouts of the whole bus"),
    FieldSpec("retries", integer(0, 10), 2, help="repeats of a request without a valid answer"),
    FieldSpec("response_timeout_ms", integer(50, 30000), None,
              help="wait for an answer (default: from the baud rate)"),
    FieldSpec("max_telegrams", integer(1, 64), 16,
              help="bound on the telegrams of one multi-telegram readout"),
    FieldSpec("reset", boolean(), True, help="send SND_NKE before reading a primary address"),
    FieldSpec("event_interval_s", number(ge=0, what="a number of seconds"), 60,
              help="at most one failure event per meter and kind in this time"),
    FieldSpec("meters", list_of(METER_SCHEMA, min_items=1), REQUIRED, help="the meters to read"),
), help="wired M-Bus master (EN 13757-2/-3)")


def default_timeout_s(baud: int) -> float:
    """A full 261-byte long frame at 11 bits per byte, plus the slave's 330-bit-time
    (+50 ms) response delay and margin for USB converters."""
    return 261 * 11 / baud + (330 / baud + 0.05) + 0.3


def open_port(opts: Mapping[str, Any]) -> Any:
    from .serialport import open_serial
    return open_serial(opts)


# --------------------------------------------------------------------------- the master


class NoAnswer(Exception):
    """No (valid) answer after all retries; ``kind`` is the event to report."""

    def __init__(self, message: str, kind: str = "meter.read_failed") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class LinkStats:
    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    garbled: int = 0


class MBusMaster:
    """Request/response on an open pyserial port. Single-threaded; owns the FCB state."""

    def __init__(self, ser: Any, opts: Mapping[str, Any], *, timeout_s: float,
                 retries: int = 2, write: Callable[[Any, bytes, Mapping[str, Any]], None] | None
                 = None) -> None:
        from ..protocols.mbus.wired import FrameDecoder
        self.ser = ser
        self.opts = opts
        self.timeout_s = timeout_s
        self.retries = retries
        self.decoder = FrameDecoder()
        self.stats = LinkStats()
        self._last_crc = False
        if write is None:
            from .serialport import write_frame
            write = write_frame
        self._write = write
        ser.timeout = 0.02  # set once: every change is a tcsetattr; deadlines are ours
        baud = int(getattr(ser, "baudrate", 2400) or 2400)
        self.gap_s = max(0.02, 22 * 11 / baud)  # quiet time that ends an answer

    # -- raw exchange

    def send(self, data: bytes) -> None:
        self.ser.reset_input_buffer()
        self.decoder.clear()
        self.stats.requests += 1
        self._write(self.ser, data, self.opts)

    def read_frame(self, timeout_s: float | None = None) -> Any:
        """The next frame, or None after the timeout. Damaged frames are counted and skipped."""
        from ..protocols.mbus.wired import NeedData
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        errors_before = self.decoder.errors
        crc_before = self.decoder.crc_errors
        while True:
            ev = self.decoder.next_event()
            if not isinstance(ev, NeedData):
                return ev
            left = deadline - time.monotonic()
            if left <= 0:
                if self.decoder.crc_errors > crc_before:
                    self.stats.crc_errors += 1
                elif self.decoder.errors > errors_before:
                    self.stats.garbled += 1
                else:
                    self.stats.timeouts += 1
                return None
            chunk = self.ser.read(max(1, self.ser.in_waiting or 1))
            if chunk:
                self.decoder.receive_data(chunk)

    def read_raw(self, timeout_s: float) -> bytes:
        """Everything that arrives until ``gap_s`` of silence after the first byte."""
        deadline = time.monotonic() + timeout_s
        out = bytearray()
        last = None
        while True:
            now = time.monotonic()
            if last is not None and now - last >= self.gap_s:
                break
            if last is None and now >= deadline:
                break
            chunk = self.ser.read(max(1, self.ser.in_waiting or 1))
            if chunk:
                out += chunk
                last = time.monotonic()
        return bytes(out)

    def request(self, data: bytes, accept: Callable[[Any], bool], what: str) -> Any:
        """Send ``data`` until an accepted frame comes back (1 + retries attempts)."""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
            self.send(data)
            crc_before = self.stats.crc_errors
            frame = self.read_frame()
            if frame is not None and accept(frame):
                return frame
            self._last_crc = self.stats.crc_errors > crc_before
        crc = self._last_crc
        raise NoAnswer(f"no valid answer to {what} after {self.retries + 1} attempts"
                       + (f" (last error: {self.decoder.last_error})"
                          if self.decoder.last_error else ""),
                       "meter.crc_error" if crc else "meter.read_failed")

    # -- M-Bus operations

    def snd_nke(self, address: int) -> None:
        from ..protocols.mbus.wired import Ack, snd_nke
        self.request(snd_nke(address), lambda f: isinstance(f, Ack), f"SND_NKE to {address}")

    def select(self, mask: Any) -> str:
        """Select by secondary address/mask: "none", "single" or "collision"."""
        from ..protocols.mbus.wired import ACK_BYTE, select_secondary
        self.send(select_secondary(mask))
        raw = self.read_raw(self.timeout_s)
        if not raw:
            return "none"
        if raw == bytes((ACK_BYTE,)):
            return "single"
        return "collision"

    def read_telegrams(self, address: int, *, key: bytes | None = None,
                       max_telegrams: int = 16, first_only: bool = False) -> list[Any]:
        """REQ_UD2 with FCB toggling until a telegram without "more records follow"
        (``first_only``: just the first telegram, e.g. to learn a meter's address)."""
        from ..protocols.mbus.wired import LongFrame, decode_rsp_ud, req_ud2
        telegrams = []
        fcb = True
        for _ in range(max_telegrams):
            frame = self.request(req_ud2(address, fcb),
                                 lambda f: isinstance(f, LongFrame) and f.is_rsp_ud,
                                 f"REQ_UD2 to {address}")
            telegrams.append(decode_rsp_ud(frame, key))  # MBusError propagates
            fcb = not fcb
            if first_only or not telegrams[-1].more_records_follow:
                return telegrams
        raise NoAnswer(f"meter at {address} still had more records after {max_telegrams} "
                       "telegrams", "meter.read_failed")

    # -- installation scans

    def scan_primary(self, addresses: Iterable[int],
                     progress: Callable[[int], None] | None = None) -> list[Any]:
        """REQ_UD2 to each address once (after SND_NKE); the meters that answer."""
        found = []
        saved = self.retries
        self.retries = 0
        try:
            for a in addresses:
                if progress:
                    progress(a)
                try:
                    self.snd_nke(a)
                    found.append(self.read_telegrams(a, first_only=True)[0])
                except NoAnswer:
                    continue
                except ValueError:  # MBusError: it answered, but with a broken telegram
                    found.append(("error", a))
        finally:
            self.retries = saved
        return found

    def scan_secondary(self, mask: Any = None,
                       progress: Callable[[Any, str], None] | None = None) -> list[Any]:
        """Wildcard search (EN 13757-3 Annex... / libmbus style): select a mask; on a single
        answer read the meter; on a collision fix the next id digit to 0..9 and recurse."""
        from ..protocols.mbus.wired import ADDRESS_BROADCAST, ADDRESS_NETWORK_LAYER, \
            SecondaryMask, encode, ShortFrame, C_SND_NKE
        if mask is None:
            mask = SecondaryMask()
        found: list[Any] = []
        # deselect everyone first (SND_NKE to 253 and to broadcast, no answers expected)
        self.send(encode(ShortFrame(C_SND_NKE, ADDRESS_NETWORK_LAYER)))
        self.read_raw(min(self.timeout_s, 0.3))
        self.send(encode(ShortFrame(C_SND_NKE, ADDRESS_BROADCAST)))
        self.read_raw(0.05)
        self._walk(mask, found, progress, depth=0)
        return found

    def _walk(self, mask: Any, found: list[Any], progress: Any, depth: int) -> None:
        from dataclasses import replace

        from ..protocols.mbus.wired import ADDRESS_NETWORK_LAYER
        result = self.select(mask)
        if progress:
            progress(mask, result)
        if result == "none":
            return
        if result == "single":
            try:
                t = self.read_telegrams(ADDRESS_NETWORK_LAYER, first_only=True)[0]
                found.append(t)
            except (NoAnswer, ValueError) as exc:
                found.append(("error", str(mask), str(exc)))
            return
        ident = mask.id.upper()
        pos = ident.find("F")
        if pos < 0 or depth > 8:
            found.append(("collision", str(mask), "more than one meter has this address"))
            return
        for digit in "0123456789":
            self._walk(replace(mask, id=ident[:pos] + digit + ident[pos + 1:]), found, progress,
                       depth + 1)


# --------------------------------------------------------------------------- shared by mbus and wmbus


@dataclass
class MeterStats:
    """Per-meter counters for diagnostics (``driver.meter_stats()``)."""

    reads_ok: int = 0
    reads_failed: int = 0
    retries: int = 0
    crc_errors: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    consecutive_failures: int = 0
    last_ok_ms: int | None = None
    last_error: str | None = None
    status_flags: list[str] = field(default_factory=list)
    rssi_dbm: int | None = None
    telegrams: int = 0
    duplicates: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                for k, v in self.__dict__.items()}


def telegram_readings(t: Any, meter_id: str, bus: str, rx_ms: int) -> list[Reading]:
    """Numeric records as Readings: quantity = the record key (quantity plus function,
    storage, tariff, subunit when not the defaults), value exact."""
    s = t.status or 0
    # application error / abnormal condition (bits 0-1 = 2, 3), permanent or temporary error
    quality = (QUALITY_METER_ERROR,) if (s & 0x18 or s & 0x03 >= 2) else ()
    return [Reading(meter_id, r.key, r.value, r.exponent, r.unit, None, rx_ms, quality, bus)
            for r in t.records
            if r.value is not None and r.error is None and (r.kind == "number"
                                                           or r.kind == "flags")]


class EventGate:
    """At most one event per (meter, kind) per interval; the next one carries how many
    were held back, so a meter failing every 10 s does not flood the outbox."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def allow(self, meter: str, kind: str) -> int | None:
        """None to hold the event back; else the number held back before it."""
        k = (meter, kind)
        now = time.monotonic()
        if now - self._last.get(k, -1e18) >= self.interval_s:
            self._last[k] = now
            return self._held.pop(k, 0)
        self._held[k] = self._held.get(k, 0) + 1
        return None


# --------------------------------------------------------------------------- the driver


@dataclass
class WiredMeter:
    name: str | None
    primary: int | None
    secondary: Any  # SecondaryMask | None
    key: bytes | None
    stats: MeterStats = field(default_factory=MeterStats)
    last_flags: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.secondary is not None:
            return self.secondary.id
        return f"primary-{self.primary}"


class MBusDriver(Driver):
    type_name = "mbus"

    def __init__(self, name: str, options: Mapping[str, Any], sink: RecordSink) -> None:
        super().__init__(name, options, sink)
        from ..protocols.mbus.wired import SecondaryMask
        self.serial_opts = dict(options["serial"])
        self.interval_s = float(options.get("interval_s", 900))
        self.retries = int(options.get("retries", 2))
        self.max_telegrams = int(options.get("max_telegrams", 16))
        self.reset = bool(options.get("reset", True))
        baud = int(self.serial_opts.get("baud", 2400))
        t = options.get("response_timeout_ms")
        self.timeout_s = int(t) / 1000 if t else default_timeout_s(baud)
        self.meters = [WiredMeter(m.get("name"), m.get("primary"),
                                  SecondaryMask.parse(m["secondary"]) if m.get("secondary")
                                  else None, key_from(m.get("key"), m.get("key_file")))
                       for m in options["meters"]]
        self.events = EventGate(float(options.get("event_interval_s", 60)))
        self.cycles = 0
        self.port_errors = 0
        self.link = LinkStats()

    def meter_stats(self) -> dict[str, dict[str, Any]]:
        return {m.label: m.stats.as_dict() for m in self.meters}

    # -- loop

    def loop(self) -> None:
        from .serialport import SerialPortError
        backoff = Backoff(min_s=1.0, max_s=60.0)
        ser = None
        next_cycle = time.monotonic()
        while not self.stopping.is_set():
            if ser is None:
                try:
                    ser = open_port(self.serial_opts)
                    self.log.info("M-Bus %s: opened %s at %s baud, %d meters", self.bus,
                                  self.serial_opts["port"], self.serial_opts.get("baud"),
                                  len(self.meters))
                    backoff.ok()
                except SerialPortError as exc:
                    self._port_problem(str(exc), backoff)
                    continue
            wait = next_cycle - time.monotonic()
            if wait > 0 and self.stopping.wait(wait):
                break
            next_cycle = time.monotonic() + self.interval_s
            try:
                self.read_all(ser)
            except OSError as exc:  # serial.SerialException is an OSError
                self._port_problem(f"{self.serial_opts['port']}: {exc}", backoff)
                try:
                    ser.close()
                except OSError:
                    pass
                ser = None
                next_cycle = time.monotonic()
        if ser is not None:
            ser.close()

    def _port_problem(self, message: str, backoff: Backoff) -> None:
        self.port_errors += 1
        delay = backoff.fail()
        self.log.warning("M-Bus %s: %s; retrying in %.1f s", self.bus, message, delay)
        self.emit([Event("bus.port_error", now_ms(), self.bus, severity="warning",
                         detail={"port": self.serial_opts["port"], "error": message})])
        self.stopping.wait(delay)

    def read_all(self, ser: Any) -> None:
        master = MBusMaster(ser, self.serial_opts, timeout_s=self.timeout_s,
                            retries=self.retries)
        for meter in self.meters:
            if self.stopping.is_set():
                break
            self.read_meter(master, meter)
        self.cycles += 1
        for k in self.link.__dict__:
            setattr(self.link, k, getattr(self.link, k) + getattr(master.stats, k))

    def read_meter(self, master: MBusMaster, meter: WiredMeter) -> None:
        from ..protocols.mbus.errors import MBusError
        from ..protocols.mbus.wired import ADDRESS_NETWORK_LAYER
        st = meter.stats
        before = (master.stats.retries, master.stats.crc_errors)
        try:
            if meter.secondary is not None:
                sel = master.select(meter.secondary)
                if sel != "single":
                    raise NoAnswer(f"selection of secondary address {meter.secondary} got "
                                   + ("no answer" if sel == "none" else "a collision"))
                address = ADDRESS_NETWORK_LAYER
            else:
                address = meter.primary
                if self.reset:
                    master.snd_nke(address)
            telegrams = master.read_telegrams(address, key=meter.key,
                                              max_telegrams=self.max_telegrams)
        except NoAnswer as exc:
            self._failed(meter, exc.kind, str(exc), {})
            return
        except MBusError as exc:
            self._failed(meter, exc.event, str(exc), exc.header)
            return
        finally:
            st.retries += master.stats.retries - before[0]
            st.crc_errors += master.stats.crc_errors - before[1]
        self._succeeded(meter, telegrams)

    def _failed(self, meter: WiredMeter, kind: str, message: str,
                header: Mapping[str, Any]) -> None:
        st = meter.stats
        st.reads_failed += 1
        st.consecutive_failures += 1
        st.failures[kind] = st.failures.get(kind, 0) + 1
        st.last_error = message
        self.log.warning("M-Bus %s: meter %s: %s", self.bus, meter.label, message)
        held = self.events.allow(meter.label, kind)
        if held is not None:
            detail: dict[str, Any] = {"error": message, "consecutive": st.consecutive_failures}
            if meter.primary is not None:
                detail["primary"] = meter.primary
            if meter.secondary is not None:
                detail["secondary"] = str(meter.secondary)
            if held:
                detail["held_back"] = held
            detail.update({k: v for k, v in header.items() if k in ("id", "manufacturer")})
            self.emit([Event(kind, now_ms(), self.bus, meter.label, "warning", detail)])

    def _succeeded(self, meter: WiredMeter, telegrams: list[Any]) -> None:
        st = meter.stats
        rx = now_ms()
        first = telegrams[0]
        meter_id = meter.name or (first.id if first.id else meter.label)
        records: list[Any] = []
        for t in telegrams:
            records.extend(telegram_readings(t, meter_id, self.bus, rx))
        events: list[Any] = []
        if st.consecutive_failures:
            events.append(Event("meter.recovered", rx, self.bus, meter_id, "info",
                                {"after_failures": st.consecutive_failures}))
        flags = tuple(first.status_flags)
        if flags != meter.last_flags:
            events.append(Event("meter.status", rx, self.bus, meter_id,
                                "warning" if flags else "info",
                                {"flags": list(flags), "status": first.status,
                                 "previous": list(meter.last_flags)}))
            meter.last_flags = flags
        st.reads_ok += 1
        st.telegrams += len(telegrams)
        st.consecutive_failures = 0
        st.last_ok_ms = rx
        st.status_flags = list(flags)
        self.emit(events + records)


DRIVER = MBusDriver

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
from zoneinfo import ZoneInfo
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..config import (
    ID, PATH, REQUIRED, Check, FieldSpec, Schema, SERIAL_SCHEMA, boolean, hex_bytes, integer,
    list_of, mapping, number, one_of_keys, text, time_zone,
)
from ..model import Event, now_ms
from .backoff import Backoff
from .keys import key_from
from .base import Driver, RecordSink
from .handoff import WorkQueue, stored_key
from .. import events as kinds
from .mbus_mapping import (UTC, decode_error_detail, describe_device, local_ms,  # noqa: F401
                           meter_times, read_ok_events, telegram_readings)

SECONDARY_PATTERN = r"[0-9A-Fa-f]{8}|[0-9A-Fa-f]{16}"


def meter_key() -> Check:
    """A meter key: 32 hex digits (AES-128) or 16 (DES, security modes 2/3)."""
    aes, des = hex_bytes(16), hex_bytes(8)

    def convert(v: Any) -> bytes:
        if isinstance(v, str) and len(v) == 16:
            return des.convert(v)
        return aes.convert(v)

    return Check("32 hex digits (a 16-byte AES key) or 16 (an 8-byte DES key)", convert,
                 as_text=True)
TZ_HELP = ("time zone of the meters' clocks: M-Bus date/time records carry none, and the "
           "readings' meter timestamps are read in it")

METER_SCHEMA = Schema((
    FieldSpec("primary", integer(0, 250), None, help="primary address 0-250"),
    FieldSpec("secondary", text("a secondary address: 8 id digits, or 16 hex digits "
                                "IIIIIIIIMMMMVVDD", SECONDARY_PATTERN), None,
              help="secondary address (id, optionally manufacturer/version/medium)"),
    FieldSpec("name", ID, None, help="meter id used in readings (default: the meter's id)"),
    FieldSpec("key", meter_key(), None, secret=True,
              help="AES-128 key if the meter encrypts (security mode 5); 8 bytes for DES "
                   "(modes 2/3)"),
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
    FieldSpec("default_tz", time_zone(), "UTC", help=TZ_HELP),
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

    def __init__(self, message: str, kind: str = kinds.READ_FAILED) -> None:
        super().__init__(message)
        self.kind = kind


class CodecCrash(Exception):
    """The codec raised something other than its own MBusError on a frame: a bug the
    hostile or broken bytes found. Reported as ``meter.decode_error`` with the frame's
    hex, and the bus goes on (issue 15)."""

    def __init__(self, exc: BaseException, frame: bytes) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.frame = bytes(frame)


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
                 = None, codec: Callable[..., Any] | None = None) -> None:
        from ..protocols.mbus.wired import FrameDecoder, decode_rsp_ud
        self.codec = codec or decode_rsp_ud  # frame, key -> Telegram (tests inject faults)
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
            try:
                ev = self.decoder.next_event()
            except Exception as exc:  # a framing bug must not stop the bus
                held = bytes(self.decoder._buf)
                self.decoder = type(self.decoder)()
                raise CodecCrash(exc, held) from exc
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
                       kinds.CRC_ERROR if crc else kinds.READ_FAILED)

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
                       max_telegrams: int = 16, first_only: bool = False,
                       formats: Any = None) -> list[Any]:
        """REQ_UD2 with FCB toggling until a telegram without "more records follow"
        (``first_only``: just the first telegram, e.g. to learn a meter's address)."""
        from ..protocols.mbus.errors import MBusError
        from ..protocols.mbus.wired import LongFrame, encode, req_ud2
        telegrams = []
        fcb = True
        for _ in range(max_telegrams):
            frame = self.request(req_ud2(address, fcb),
                                 lambda f: isinstance(f, LongFrame) and f.is_rsp_ud,
                                 f"REQ_UD2 to {address}")
            try:
                kw = {} if formats is None else {"formats": formats}
                telegrams.append(self.codec(frame, key, **kw))  # MBusError propagates
            except MBusError:
                raise
            except Exception as exc:
                raise CodecCrash(exc, encode(frame)) from exc
            fcb = not fcb
            if first_only or not telegrams[-1].more_records_follow:
                return telegrams
        raise NoAnswer(f"meter at {address} still had more records after {max_telegrams} "
                       "telegrams", kinds.READ_FAILED)

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
                except (ValueError, CodecCrash):  # it answered, with a broken telegram
                    found.append(("error", a))
        finally:
            self.retries = saved
        return found

    def scan_secondary(self, mask: Any = None,
                       progress: Callable[[Any, str], None] | None = None) -> list[Any]:
        """Wildcard search (EN 13757-3 Annex... / libmbus style): select a mask; on a single
        answer read the meter; on a collision fix the next id digit to 0..9 and recurse."""
        found: list[Any] = []
        for mask_, result, item in self.walk_secondary(mask):
            if progress:
                progress(mask_, result)
            if item is not None:
                found.append(item)
        return found

    def walk_secondary(self, mask: Any = None) -> Iterator[tuple[Any, str, Any]]:
        """The secondary scan one selection at a time: each step yields ``(mask, result,
        found)`` where ``found`` is the telegram read after a single answer, a
        ``("error"|"collision", mask, detail)`` tuple, or None. Between two steps the
        caller may use the bus for something else (each step selects afresh)."""
        from dataclasses import replace

        from ..protocols.mbus.wired import ADDRESS_BROADCAST, ADDRESS_NETWORK_LAYER, \
            SecondaryMask, encode, ShortFrame, C_SND_NKE
        if mask is None:
            mask = SecondaryMask()
        # deselect everyone first (SND_NKE to 253 and to broadcast, no answers expected)
        self.send(encode(ShortFrame(C_SND_NKE, ADDRESS_NETWORK_LAYER)))
        self.read_raw(min(self.timeout_s, 0.3))
        self.send(encode(ShortFrame(C_SND_NKE, ADDRESS_BROADCAST)))
        self.read_raw(0.05)
        stack: list[tuple[Any, int]] = [(mask, 0)]
        while stack:
            m, depth = stack.pop()
            result = self.select(m)
            item: Any = None
            if result == "single":
                try:
                    item = self.read_telegrams(ADDRESS_NETWORK_LAYER, first_only=True)[0]
                except (NoAnswer, ValueError, CodecCrash) as exc:
                    item = ("error", str(m), str(exc))
            elif result == "collision":
                ident = m.id.upper()
                pos = ident.find("F")
                if pos < 0 or depth > 8:
                    item = ("collision", str(m), "more than one meter has this address")
                else:  # pushed in reverse: digits are tried 0..9, depth first
                    for digit in "9876543210":
                        stack.append((replace(m, id=ident[:pos] + digit + ident[pos + 1:]),
                                      depth + 1))
            yield m, result, item


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


COMPACT_CURSOR = "mbus.compact_formats"  # per-meter store cursor: learned compact formats


def stored_cursor(sink: Any, meter_id: str, name: str, default: Any = None) -> Any:
    """A cursor from the store behind the sink (None-safe: test sinks have none)."""
    get = getattr(sink, "get_cursor", None)
    if get is None:
        get = getattr(getattr(sink, "store", None), "get_cursor", None)
    if get is None:
        return default
    try:
        return get(meter_id, name, default)
    except Exception:  # a damaged cursor must not stop the bus; the formats are relearned
        return default


class CompactFormats:
    """The compact-frame formats a driver learned, per configured meter, with what goes
    into the store: loaded from the meter's cursor when first needed, saved with the
    readings of the full frame that taught a new one (so a restart keeps them)."""

    def __init__(self, sink: Any) -> None:
        from ..protocols.mbus.compact import Formats
        self.sink = sink
        self.formats = Formats()
        self.loaded: set[str] = set()
        self.owner: dict[str, str] = {}  # formats key -> meter label (whose cursor)

    def load(self, label: str) -> Any:
        if label not in self.loaded:
            self.loaded.add(label)
            saved = stored_cursor(self.sink, label, COMPACT_CURSOR)
            if isinstance(saved, dict):
                for k, v in saved.items():
                    self.formats.load(str(k), v)
                    self.owner[str(k)] = label
        return self.formats

    def cursors(self, label: str, header_key: str | None) -> dict[tuple[str, str], Any] | None:
        """The cursor update for ``label`` if its formats changed, else None."""
        f = self.formats
        if header_key is not None:
            self.owner.setdefault(header_key, label)
        mine = [k for k, o in self.owner.items() if o == label]
        if not any(k in f.changed for k in mine):
            return None
        f.changed.difference_update(mine)
        return {(label, COMPACT_CURSOR): {k: f.export(k) for k in mine}}


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
    reading_id: str | None = None  # the meter id its readings carry (name or its own id)
    device_id: str | None = None  # the id the meter reports in its telegrams
    compact_unknown_sent: bool = False  # meter.compact_format_unknown said, until learned

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.secondary is not None:
            return self.secondary.id
        return f"primary-{self.primary}"

    def known_as(self, meter_id: str) -> bool:
        return meter_id in (self.label, self.name, self.reading_id, self.device_id,
                            self.secondary.id if self.secondary is not None else None)


@dataclass
class ScanJob:
    """A console ``scan``: walked one selection per step between the polls."""

    progress: Callable[[dict[str, Any]], Any] | None
    deadline: float
    done: Any  # concurrent.futures.Future of the devices found
    steps: Iterator[tuple[Any, str, Any]] | None = None
    master: Any = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    selections: int = 0


SCAN_MAX_S = 1800.0  # a full wildcard walk of a big bus at 300 baud fits; then it gives up
READ_NOW_TIMEOUT_S = 55.0  # below the console's 60 s, so the technician sees why


class MBusDriver(Driver):
    type_name = "mbus"

    def __init__(self, name: str, options: Mapping[str, Any], sink: RecordSink) -> None:
        super().__init__(name, options, sink)
        from ..protocols.mbus.wired import SecondaryMask
        self.serial_opts = dict(options["serial"])
        self.interval_s = float(options.get("interval_s", 900))
        self.retries = int(options.get("retries", 2))
        self.max_telegrams = int(options.get("max_telegrams", 16))
        self.tz = ZoneInfo(str(options.get("default_tz", "UTC")))
        self.reset = bool(options.get("reset", True))
        baud = int(self.serial_opts.get("baud", 2400))
        t = options.get("response_timeout_ms")
        self.timeout_s = int(t) / 1000 if t else default_timeout_s(baud)
        self.meters = [WiredMeter(m.get("name"), m.get("primary"),
                                  SecondaryMask.parse(m["secondary"]) if m.get("secondary")
                                  else None, key_from(m.get("key"), m.get("key_file")))
                       for m in options["meters"]]
        self.keys_dir = self.ctx.keys_dir  # options["keys_dir"] wins (DriverContext.of)
        for meter in self.meters:
            stored = stored_key(self.keys_dir, (meter.name, meter.label), (16,), self.log)
            if stored is not None:  # set with `keys set` after the config was written
                meter.key = stored[0]
                self.log.info("M-Bus %s: meter %s uses the key stored in %s", self.bus,
                              meter.label, stored[1])
        self.events = EventGate(float(options.get("event_interval_s", 60)))
        self.cycles = 0
        self.port_errors = 0
        self.link = LinkStats()
        self.work = WorkQueue(self, self.stopping)
        self.state = "opening"  # opening | open | reopening (for the console)
        self.last_port_error: str | None = None
        self._ser: Any = None
        self._scan: ScanJob | None = None
        self._read_soon: list[WiredMeter] = []  # failing meters given a new key
        from ..protocols.mbus.wired import decode_rsp_ud
        self.codec: Callable[..., Any] = decode_rsp_ud  # frame, key, formats= -> Telegram
        self.decode_errors = 0
        self.compact = CompactFormats(sink)

    def meter_stats(self) -> dict[str, dict[str, Any]]:
        # keyed by the id the meter's readings carry once it has answered, so the console
        # shows one row per meter (not "primary-5" beside its real id)
        return {(m.reading_id or m.label): m.stats.as_dict() for m in self.meters}

    # -- console capabilities (drivers.base.ConsoleCapabilities); any thread

    def bus_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "port": self.serial_opts.get("port"),
                               "baud": self.serial_opts.get("baud"), "cycles": self.cycles,
                               "port_errors": self.port_errors}
        if self.state != "open" and self.last_port_error:
            out["error"] = self.last_port_error
        if self._scan is not None:
            out["scanning"] = True
        return out

    def read_now(self, meter_id: str) -> list[Any]:
        """Read this meter now (between two polls of the bus); the readings are emitted as
        usual and returned. A failed read raises with the reason."""
        meter = self._find(meter_id)

        def read() -> list[Any]:
            if self._ser is None:
                raise RuntimeError(f"port {self.serial_opts['port']} is not open "
                                   f"({self.last_port_error or self.state})")
            master = self._master(self._ser)
            try:
                records = self.read_meter(master, meter)
            finally:
                self._add_link(master)
            if records is None:
                raise RuntimeError(meter.stats.last_error or "no answer")
            return records

        return self.work.call(f"read {meter.label}", read, READ_NOW_TIMEOUT_S)

    def set_key(self, meter_id: str, key: bytes) -> None:
        """Use ``key`` for this meter from now on; a meter whose last read failed is read
        again at once with it."""
        meter = self._find(meter_id)
        if len(key) != 16:  # the console sets AES keys; a DES key goes in the config
            raise ValueError(f"an M-Bus key is 16 bytes (32 hex digits), got {len(key)}")

        def apply() -> None:
            meter.key = bytes(key)
            self.log.info("M-Bus %s: meter %s: new key set from the console", self.bus,
                          meter.label)
            if meter.stats.consecutive_failures and meter not in self._read_soon:
                self._read_soon.append(meter)

        if self.is_alive():
            self.work.call(f"set key of {meter.label}", apply, 20.0)
        else:
            meter.key = bytes(key)

    def scan(self, progress: Callable[[dict[str, Any]], Any] | None = None) -> list[dict[str, Any]]:
        """Secondary-address wildcard search of the bus while it is being polled: one
        selection at a time, the polls due in between still run. Calls ``progress`` with
        each device found and a line per selection; returns the devices."""
        from concurrent.futures import Future
        fut: Future = Future()
        job = ScanJob(progress, time.monotonic() + SCAN_MAX_S, fut)

        def begin() -> None:
            if self._scan is not None:
                raise RuntimeError("a scan of this bus is already running")
            if self._ser is None:
                raise RuntimeError(f"port {self.serial_opts['port']} is not open "
                                   f"({self.last_port_error or self.state})")
            self._scan = job

        self.work.call("scan", begin, READ_NOW_TIMEOUT_S)
        return fut.result(SCAN_MAX_S + 60)

    def _find(self, meter_id: str) -> WiredMeter:
        for m in self.meters:
            if m.known_as(meter_id):
                return m
        raise KeyError(meter_id)

    # -- loop

    def loop(self) -> None:
        try:
            self._loop()
        finally:
            self._end_scan("the driver stopped")
            self.work.close()

    def _loop(self) -> None:
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
                    self._ser = ser
                    self.state = "open"
                except SerialPortError as exc:
                    self._port_problem(str(exc), backoff)
                    continue
            try:
                self.work.service()
                if self._read_soon:
                    self._read_listed(ser)
                if self._scan is not None:
                    self._scan_step(ser)
                    if time.monotonic() < next_cycle:
                        continue
                wait = next_cycle - time.monotonic()
                if wait > 0:
                    if self.work.wait(wait):
                        break
                    if time.monotonic() < next_cycle:
                        continue  # woken for console work
                next_cycle = time.monotonic() + self.interval_s
                self.read_all(ser)
            except OSError as exc:  # serial.SerialException is an OSError
                self._ser = None
                self._end_scan(f"port failed: {exc}")
                self._port_problem(f"{self.serial_opts['port']}: {exc}", backoff)
                try:
                    ser.close()
                except OSError:
                    pass
                ser = None
                next_cycle = time.monotonic()
        self._ser = None
        if ser is not None:
            ser.close()

    def _port_problem(self, message: str, backoff: Backoff) -> None:
        self.port_errors += 1
        self.state = "reopening"
        self.last_port_error = message
        delay = backoff.fail()
        self.log.warning("M-Bus %s: %s; retrying in %.1f s", self.bus, message, delay)
        self.emit([Event(kinds.PORT_ERROR, now_ms(), self.bus, severity="warning",
                         detail={"port": self.serial_opts["port"], "error": message})])
        self.work.idle(delay)  # set_key works with the port down; reads say it is not open

    def _master(self, ser: Any) -> MBusMaster:
        return MBusMaster(ser, self.serial_opts, timeout_s=self.timeout_s, retries=self.retries,
                          codec=self.codec)

    def _add_link(self, master: MBusMaster) -> None:
        for k in self.link.__dict__:
            setattr(self.link, k, getattr(self.link, k) + getattr(master.stats, k))

    def read_all(self, ser: Any) -> None:
        master = self._master(ser)
        for meter in self.meters:
            if self.stopping.is_set():
                break
            self.read_meter(master, meter)
            self.work.service()  # a console read waits one meter at most
        self.cycles += 1
        self._add_link(master)

    def _read_listed(self, ser: Any) -> None:
        master = self._master(ser)
        while self._read_soon and not self.stopping.is_set():
            self.read_meter(master, self._read_soon.pop(0))
        self._add_link(master)

    # -- console scan, one selection per step

    def _scan_step(self, ser: Any) -> None:
        from ..protocols.mbus.errors import MBusError
        job = self._scan
        assert job is not None
        if time.monotonic() > job.deadline:
            self._end_scan(f"not finished within {SCAN_MAX_S:g} s")
            return
        if job.steps is None:
            job.master = MBusMaster(ser, self.serial_opts, timeout_s=self.timeout_s, retries=0)
            job.steps = job.master.walk_secondary()
            self.log.info("M-Bus %s: secondary address scan started from the console",
                          self.bus)
        try:
            mask, result, item = next(job.steps)
        except StopIteration:
            self.log.info("M-Bus %s: scan done: %d devices", self.bus, len(job.devices))
            self._end_scan(None)
            return
        except (MBusError, CodecCrash) as exc:
            self._end_scan(f"{type(exc).__name__}: {exc}")
            return
        job.selections += 1
        found: dict[str, Any] | None = None
        if isinstance(item, tuple):
            found = {"problem": item[0], "mask": item[1], "detail": item[2]}
        elif item is not None:
            found = describe_device(item)
            found["configured"] = any(m.known_as(item.id) for m in self.meters)
        if found is not None:
            job.devices.append(found)
        if job.progress is not None:
            alive = job.progress({"progress": f"{mask.id}: {result}",
                                  "selections": job.selections}) is not False
            if found is not None:
                alive = job.progress(found) is not False and alive
            if not alive:  # the console has gone: stop using the bus for it
                self._end_scan(None)

    def _end_scan(self, error: str | None) -> None:
        job, self._scan = self._scan, None
        if job is None:
            return
        if job.master is not None:
            self._add_link(job.master)
        if error is None:
            job.done.set_result(job.devices)
        else:
            job.done.set_exception(RuntimeError(f"scan stopped: {error}"))

    # -- reading one meter

    def read_meter(self, master: MBusMaster, meter: WiredMeter) -> list[Any] | None:
        """Read one meter and emit what it said; its records, or None when it failed (the
        failure is counted and reported)."""
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
                                              max_telegrams=self.max_telegrams,
                                              formats=self.compact.load(meter.label))
        except NoAnswer as exc:
            self._failed(meter, exc.kind, str(exc), {})
            return None
        except MBusError as exc:
            if exc.event == kinds.COMPACT_FORMAT_UNKNOWN and meter.compact_unknown_sent:
                st.failures[exc.event] = st.failures.get(exc.event, 0) + 1  # said once
                return None
            meter.compact_unknown_sent = exc.event == kinds.COMPACT_FORMAT_UNKNOWN
            self._failed(meter, exc.event, str(exc), exc.header, getattr(exc, "detail", None))
            return None
        except CodecCrash as exc:
            self.decode_errors += 1
            self._failed(meter, kinds.DECODE_ERROR, str(exc), {},
                         decode_error_detail(str(exc), exc.frame))
            return None
        finally:
            st.retries += master.stats.retries - before[0]
            st.crc_errors += master.stats.crc_errors - before[1]
        return self._succeeded(meter, telegrams)

    def _failed(self, meter: WiredMeter, kind: str, message: str,
                header: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> None:
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
            if extra:
                detail.update(extra)
            self.emit([Event(kind, now_ms(), self.bus, meter.label, "warning", detail)])

    def _succeeded(self, meter: WiredMeter, telegrams: list[Any]) -> list[Any]:
        st = meter.stats
        rx = now_ms()
        first = telegrams[0]
        meter_id = meter.name or (first.id if first.id else meter.label)
        meter.reading_id = meter_id
        meter.device_id = first.id or None
        records: list[Any] = []
        for t in telegrams:
            records.extend(telegram_readings(t, meter_id, self.bus, rx, self.tz))
        flags = tuple(first.status_flags)
        events = read_ok_events(st.consecutive_failures, meter.last_flags, flags,
                                first.status, self.bus, meter_id, rx)
        meter.last_flags = flags
        st.reads_ok += 1
        st.telegrams += len(telegrams)
        st.consecutive_failures = 0
        st.last_ok_ms = rx
        st.status_flags = list(flags)
        cursors = self.compact.cursors(meter.label, f"{first.manufacturer}:{first.id}")
        if cursors is not None:
            meter.compact_unknown_sent = False
        self.emit(events + records, cursors)
        return events + records


DRIVER = MBusDriver

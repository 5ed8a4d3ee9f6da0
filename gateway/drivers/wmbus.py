"""Wireless M-Bus through a USB/serial radio dongle: ``type: wmbus``.

The dongle (IMST iM871A or Amber AMB8465) is put in the configured link mode at start
(T1, C1 or S1) and then delivers every telegram it hears. Telegrams from configured meters
are decrypted with their keys and become Readings; the same telegram heard twice gives one
reading; telegrams from other meters are counted and listed (``unknown_meters()``), never
forwarded. Every failure is its own event for that meter -- no key, wrong key, MAC failed,
unsupported security, truncated, CRC damaged, malformed -- and the meter's next telegram
is decoded afresh (nothing is blacklisted). Manufacturer-specific payloads are read by the
meter profiles (``gateway/protocols/mbus/profiles``); a meter whose format no profile
reads is one ``meter.unsupported_format`` event (manufacturer, version, device type, CI),
then only counted. ``listen`` shows for every meter heard the profile that reads it.

A dongle that goes silent (no telegram for ``silence_timeout_s`` while meters are
expected, or no answer to the periodic ping) is re-initialised; if that fails its port is
closed and reopened. Each step is an event (``dongle.silent``, ``dongle.ping_failed``,
``dongle.reinitialised``, ``dongle.reopen``).

    drivers:
      - type: wmbus
        name: radio
        dongle: im871a
        mode: t1
        serial: {port: /dev/ttyUSB1, baud: 57600}
        meters:
          - {id: "76348799", key: 28F64A24988064A079AA2C807D6102AE, name: kitchen-water}
          - {id: "33225544", manufacturer: SEN}
"""

from __future__ import annotations

import threading
import time
from zoneinfo import ZoneInfo
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..config import (
    ID, PATH, REQUIRED, FieldSpec, Schema, SERIAL_SCHEMA, integer, list_of, mapping,
    number, one_of, one_of_keys, text, time_zone,
)
from ..model import Event, now_ms
from .backoff import Backoff
from .keys import key_from
from .base import Driver, RecordSink
from .handoff import Listeners, WorkQueue, stored_key
from .wmbus_replay import REPLAY_CURSOR, judge, telegram_marks
from .mbus import TZ_HELP, CompactFormats, EventGate, MeterStats, meter_key, open_port, \
    stored_cursor
from .mbus_mapping import decode_error_detail, read_ok_events, telegram_readings
from .. import events as kinds

METER_SCHEMA = Schema((
    FieldSpec("id", text("the 8-digit meter id", r"[0-9A-Fa-f]{8}"),
              help="meter id (on its label; Diehl IZAR ids also use A-F)"),
    FieldSpec("manufacturer", text("a three-letter manufacturer code", r"[A-Z]{3}"), None,
              help="manufacturer code, e.g. KAM; default: any"),
    FieldSpec("name", ID, None, help="meter id used in readings (default: the id)"),
    FieldSpec("key", meter_key(), None, secret=True,
              help="AES-128 key (security mode 5/7, ELL); 8 bytes for DES (modes 2/3)"),
    FieldSpec("key_file", PATH, None, secret=True, path=True, must_exist=True,
              help="file holding the AES-128 key (hex), instead of key"),
), check=one_of_keys("key", "key_file"), help="one wireless meter")

SCHEMA = Schema((
    FieldSpec("dongle", one_of("im871a", "amb8465"), help="the radio dongle"),
    FieldSpec("mode", one_of("t1", "c1", "s1"), "t1", help="wM-Bus link mode to listen to"),
    FieldSpec("serial", mapping(SERIAL_SCHEMA),
              help="the dongle's port; baud 57600 for iM871A, 9600 for AMB8465"),
    FieldSpec("silence_timeout_s", number(gt=0, what="a number of seconds"), 600,
              help="re-initialise the dongle after this long without a telegram"),
    FieldSpec("ping_interval_s", number(gt=0, what="a number of seconds"), 60,
              help="ping the dongle this often"),
    FieldSpec("command_timeout_ms", integer(50, 30000), 2000,
              help="wait for the dongle's answer to a command"),
    FieldSpec("duplicate_window_s", number(ge=0, what="a number of seconds"), 120,
              help="a telegram repeated within this time is one reading"),
    FieldSpec("event_interval_s", number(ge=0, what="a number of seconds"), 60,
              help="at most one failure event per meter and kind in this time"),
    FieldSpec("rssi", one_of("on", "off"), "on", help="the dongle appends RSSI to telegrams"),
    FieldSpec("frame_format", one_of("none", "auto", "a", "b"), "none",
              help="block CRCs in delivered telegrams: none (stripped, as dongles deliver "
                   "them), a, b, or auto (guess)"),
    FieldSpec("default_tz", time_zone(), "UTC", help=TZ_HELP),
    FieldSpec("meters", list_of(METER_SCHEMA, min_items=0, unique_key="id"), REQUIRED,
              help="the meters to receive"),
), help="wireless M-Bus receiver (EN 13757-4) through an iM871A or AMB8465 dongle")


# --------------------------------------------------------------------------- dongle adapters


class DongleAdapter:
    """What the driver needs from a dongle type, built on the sans-I/O codecs."""

    name = ""

    def decoder(self) -> Any: ...
    def init_request(self, mode: str) -> bytes: ...
    def init_ok(self, msg: Any) -> bool | None: ...  # None: not the answer to init
    def ping_request(self) -> bytes: ...
    def is_ping_answer(self, msg: Any) -> bool: ...


class IM871A(DongleAdapter):
    name = "im871a"

    def __init__(self, rssi: bool = True) -> None:
        from ..protocols.mbus import im871a
        self.m = im871a
        self.rssi = rssi

    def decoder(self) -> Any:
        return self.m.HciDecoder()

    def init_request(self, mode: str) -> bytes:
        return self.m.set_mode(mode, rssi=self.rssi, timestamp=True)

    def init_ok(self, msg: Any) -> bool | None:
        if msg.endpoint == self.m.DEVMGMT and msg.msg_id == self.m.SET_CONFIG_RSP:
            return not msg.payload or msg.payload[0] == 0
        return None

    def ping_request(self) -> bytes:
        return self.m.ping()

    def is_ping_answer(self, msg: Any) -> bool:
        return msg.endpoint == self.m.DEVMGMT and msg.msg_id == self.m.PING_RSP


class AMB8465(DongleAdapter):
    name = "amb8465"

    def __init__(self, rssi: bool = True) -> None:
        from ..protocols.mbus import amb8465
        self.m = amb8465
        self.rssi = rssi

    def decoder(self) -> Any:
        return self.m.AmberDecoder(rssi=self.rssi)

    def init_request(self, mode: str) -> bytes:
        return self.m.set_mode(mode)

    def init_ok(self, msg: Any) -> bool | None:
        if msg.cmd == self.m.CMD_SET_MODE_REQ | self.m.CNF:
            return not msg.payload or msg.payload[0] == 0
        return None

    def ping_request(self) -> bytes:
        return self.m.ping()

    def is_ping_answer(self, msg: Any) -> bool:
        return msg.cmd == self.m.CMD_SERIALNO_REQ | self.m.CNF


ADAPTERS = {"im871a": IM871A, "amb8465": AMB8465}


# --------------------------------------------------------------------------- the driver


@dataclass
class RadioMeter:
    ident: str
    manufacturer: str | None
    name: str | None
    key: bytes | None
    stats: MeterStats = field(default_factory=MeterStats)
    recent: "OrderedDict[bytes, float]" = field(default_factory=OrderedDict)
    last_flags: tuple[str, ...] = ()
    last_readings: list[Any] = field(default_factory=list)  # of the last decoded telegram
    failed: tuple[bytes, int | None, int] | None = None  # last undecodable (frame, rssi, rx)
    profile: str | None = None  # the meter profile that read its last telegram
    unsupported_reported: bool = False  # meter.unsupported_format is said once per meter
    compact_unknown_sent: bool = False  # meter.compact_format_unknown said, until learned
    guard: dict[str, int] | None = None  # last accepted replay marks (None: not loaded yet)

    @property
    def label(self) -> str:
        return self.name or self.ident


class DongleError(Exception):
    pass


class WMBusDriver(Driver):
    type_name = "wmbus"

    def __init__(self, name: str, options: Mapping[str, Any], sink: RecordSink) -> None:
        super().__init__(name, options, sink)
        self.dongle_type = str(options["dongle"])
        self.adapter: DongleAdapter = ADAPTERS[self.dongle_type](
            str(options.get("rssi", "on")) == "on")
        self.mode = str(options.get("mode", "t1")).upper()
        self.serial_opts = dict(options["serial"])  # baud: 57600 iM871A, 9600 AMB8465
        self.silence_s = float(options.get("silence_timeout_s", 600))
        self.ping_s = float(options.get("ping_interval_s", 60))
        self.command_timeout_s = int(options.get("command_timeout_ms", 2000)) / 1000
        self.dup_window_s = float(options.get("duplicate_window_s", 120))
        fmt = str(options.get("frame_format", "none"))
        self.frame_format = fmt.upper() if fmt in ("a", "b") else fmt
        self.events = EventGate(float(options.get("event_interval_s", 60)))
        self.meters: dict[str, list[RadioMeter]] = {}
        self.keys_dir = self.ctx.keys_dir  # options["keys_dir"] wins (DriverContext.of)
        self.tz = ZoneInfo(str(self.options.get("default_tz", "UTC")))
        for m in options.get("meters") or []:
            rm = RadioMeter(str(m["id"]).upper(), m.get("manufacturer"), m.get("name"),
                            key_from(m.get("key"), m.get("key_file")))
            stored = stored_key(self.keys_dir, (rm.name, rm.ident), (16,), self.log)
            if stored is not None:  # set with `keys set` after the config was written
                rm.key = stored[0]
                self.log.info("wM-Bus %s: meter %s uses the key stored in %s", self.bus,
                              rm.label, stored[1])
            self.meters.setdefault(rm.ident, []).append(rm)
        self.work = WorkQueue(self, self.stopping)
        self.listeners = Listeners()
        self._decoded = threading.Condition()  # read_now waits here for a first telegram
        self.unknown: dict[tuple[str, str], dict[str, Any]] = {}
        self.unknown_telegrams = 0
        self.dongle_stats = {"inits": 0, "init_failures": 0, "reopens": 0, "silences": 0,
                             "ping_failures": 0, "frame_errors": 0, "crc_errors": 0,
                             "telegrams": 0}
        from ..protocols.mbus.wireless import decode_wmbus
        self.codec: Callable[..., Any] = decode_wmbus  # frame, key, fmt=, formats= -> Telegram
        self.compact = CompactFormats(sink)
        self.decode_errors = 0
        self._ser: Any = None
        self._decoder: Any = None
        self.state = "opening"  # opening | initialising | listening (for diagnostics)
        self._last_telegram = time.monotonic()

    # -- diagnostics

    def meter_stats(self) -> dict[str, dict[str, Any]]:
        return {m.label: m.stats.as_dict() for ms in self.meters.values() for m in ms}

    def unknown_meters(self) -> list[dict[str, Any]]:
        """Meters heard but not configured, for installation: most heard first."""
        return sorted(({"manufacturer": k[0], "id": k[1], **v} for k, v in self.unknown.items()),
                      key=lambda d: -d["count"])

    # -- console capabilities (drivers.base.ConsoleCapabilities); any thread

    def bus_state(self) -> dict[str, Any]:
        return {"state": self.state, "port": self.serial_opts.get("port"),
                "dongle": self.dongle_type, "mode": self.mode,
                "telegrams": self.dongle_stats["telegrams"],
                "unknown_meters": len(self.unknown), "reopens": self.dongle_stats["reopens"]}

    def listen(self, seconds: float, callback: Callable[[dict[str, Any]], Any]) -> None:
        """Every telegram heard for ``seconds``, configured meter or not (the installer's
        tool). The driver thread calls ``callback`` as telegrams arrive; the port is not
        touched from here."""
        if not self.is_alive():
            raise RuntimeError(f"wM-Bus {self.bus}: the driver is not running")
        self.listeners.add(callback)
        deadline = time.monotonic() + float(seconds)
        try:
            while time.monotonic() < deadline and not self.stopping.is_set():
                if self.stopping.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
                    break
                if callback not in self.listeners:  # dropped: its console has gone
                    break
        finally:
            self.listeners.remove(callback)

    def read_now(self, meter_id: str, wait_s: float = 45.0) -> list[Any]:
        """A radio meter cannot be asked: the readings of its last decoded telegram (they
        were stored when it was heard), or of the next one within ``wait_s``."""
        meter = self._find(meter_id)
        deadline = time.monotonic() + wait_s
        with self._decoded:
            while not meter.last_readings:
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping.is_set() or not self.is_alive():
                    why = meter.stats.last_error or "nothing heard from it"
                    raise TimeoutError(f"no telegram from {meter.label} decoded yet "
                                       f"({why}); a radio meter sends on its own schedule")
                self._decoded.wait(min(left, 0.5))
            return list(meter.last_readings)

    def set_key(self, meter_id: str, key: bytes) -> None:
        """Use ``key`` for this meter at once; its last undecodable telegram is decoded
        again with it (so a meter that sends every 15 min need not be waited for)."""
        meter = self._find(meter_id)
        if len(key) != 16:  # the console sets AES keys; a DES key goes in the config
            raise ValueError(f"a wM-Bus key is 16 bytes (32 hex digits), got {len(key)}")

        def apply() -> None:
            meter.key = bytes(key)
            meter.recent.clear()  # a repeat of a telegram that failed is decoded again
            meter.guard = {}  # a re-keyed meter is usually a new one: its counters restart
            self.log.info("wM-Bus %s: meter %s: new key set from the console", self.bus,
                          meter.label)
            if meter.failed is not None:
                frame, rssi, rx = meter.failed
                meter.failed = None
                self._decode(meter, frame, rssi, rx, retry=True)

        if self.is_alive():
            self.work.call(f"set key of {meter.label}", apply, 20.0)
        else:
            meter.key = bytes(key)

    def _find(self, meter_id: str) -> RadioMeter:
        for ms in self.meters.values():
            for m in ms:
                if meter_id in (m.label, m.ident, m.name):
                    return m
        raise KeyError(meter_id)

    # -- loop

    def loop(self) -> None:
        from .serialport import SerialPortError
        backoff = Backoff(min_s=1.0, max_s=60.0)
        while not self.stopping.is_set():
            self.state = "opening"
            try:
                self._ser = open_port(self.serial_opts)
            except SerialPortError as exc:
                self._dongle_event(kinds.DONGLE_PORT_ERROR, "warning", {"error": str(exc)})
                if self.work.idle(backoff.fail()):
                    break
                continue
            self._ser.timeout = 0.05  # set once: every change is a tcsetattr
            self._decoder = self.adapter.decoder()
            try:
                if not self._initialise():
                    self.dongle_stats["init_failures"] += 1
                    self._dongle_event(kinds.DONGLE_INIT_FAILED, "warning",
                                       {"mode": self.mode, "dongle": self.dongle_type})
                    self._reopen("initialisation failed")
                    if self.work.idle(backoff.fail()):
                        break
                    continue
                backoff.ok()
                self._listen()
            except (OSError, DongleError) as exc:
                self._dongle_event(kinds.DONGLE_PORT_ERROR, "warning", {"error": str(exc)})
                self._close()
                if self.work.idle(backoff.fail()):
                    break
                continue
        self._close()
        self.work.close()

    def _close(self) -> None:
        if self._ser is not None:
            try:
                self._ser.close()
            except OSError:
                pass
            self._ser = None

    def _reopen(self, why: str) -> None:
        self.dongle_stats["reopens"] += 1
        self._dongle_event(kinds.DONGLE_REOPEN, "warning", {"reason": why,
                                                        "port": self.serial_opts["port"]})
        self._close()

    def _dongle_event(self, kind: str, severity: str, detail: dict[str, Any]) -> None:
        self.log.warning("wM-Bus %s: %s %s", self.bus, kind, detail) if severity != "info" \
            else self.log.info("wM-Bus %s: %s %s", self.bus, kind, detail)
        self.emit([Event(kind, now_ms(), self.bus, None, severity,
                         {"dongle": self.dongle_type, **detail})])

    def _write(self, data: bytes) -> None:
        self._ser.write(data)
        self._ser.flush()

    def _pump(self, timeout_s: float) -> list[Any]:
        """Read what arrives within timeout_s; handle telegrams, return other messages."""
        chunk = self._ser.read(max(1, self._ser.in_waiting or 1))
        others = []
        if chunk:
            self._decoder.receive_data(chunk)
        crc_before = self._decoder.crc_errors
        err_before = self._decoder.errors  # framing errors = errors - crc_errors
        while True:
            try:
                msg = self._decoder.next_event()
            except Exception as exc:  # a dongle-framing bug must not stop the radio
                self._dongle_decode_error(exc, chunk)
                break
            if msg is None:
                break
            if msg.damaged is not None:
                self._on_damaged(msg)
            elif msg.is_telegram:
                try:
                    frame = msg.telegram()
                except Exception as exc:
                    self._dongle_decode_error(exc, bytes(getattr(msg, "payload", b"")))
                    continue
                self._on_telegram(frame, msg.rssi_dbm)
            else:
                others.append(msg)
        if self._decoder.errors - self._decoder.crc_errors > err_before - crc_before:
            self.dongle_stats["frame_errors"] += 1
            held = self.events.allow("<dongle>", kinds.DONGLE_FRAME_ERROR)
            if held is not None:
                self._dongle_event(kinds.DONGLE_FRAME_ERROR, "warning",
                                   {"error": str(self._decoder.last_error), "held_back": held})
        return others

    def _dongle_decode_error(self, exc: Exception, data: bytes) -> None:
        """The dongle's codec raised on what arrived: count it, start a fresh decoder (its
        buffer may be what it choked on) and go on listening."""
        self.decode_errors += 1
        self.dongle_stats["frame_errors"] += 1
        self._decoder = self.adapter.decoder()
        held = self.events.allow("<dongle>", kinds.DECODE_ERROR)
        if held is not None:
            detail = decode_error_detail(f"{type(exc).__name__}: {exc}", data)
            if held:
                detail["held_back"] = held
            self._dongle_event(kinds.DECODE_ERROR, "warning", detail)

    def _on_damaged(self, msg: Any) -> None:
        """A message whose dongle CRC/checksum failed: a damaged telegram is reported for
        the meter its header names (if configured), never decoded."""
        from ..protocols.mbus.wireless import dll_header
        self.dongle_stats["crc_errors"] += 1
        meter = None
        if msg.is_telegram and len(msg.payload) >= 10:
            hdr = dll_header(msg.telegram())
            meter = next((m for m in self.meters.get(hdr["id"], ())
                          if m.manufacturer in (None, hdr["manufacturer"])), None)
            self._heard(hdr, msg.telegram(), msg.rssi_dbm, meter,
                        f"damaged in transfer: {msg.damaged}")
        if meter is not None:
            meter.stats.telegrams += 1
            if msg.rssi_dbm is not None:
                meter.stats.rssi_dbm = msg.rssi_dbm
            self._failed(meter, kinds.CRC_ERROR, f"telegram damaged in transfer: {msg.damaged}",
                         msg.rssi_dbm)
            return
        held = self.events.allow("<dongle>", kinds.DONGLE_CRC_ERROR)
        if held is not None:
            self._dongle_event(kinds.DONGLE_CRC_ERROR, "warning", {"error": msg.damaged,
                                                              "held_back": held})

    def _command(self, request: bytes, answered: Any) -> bool:
        """Send a command; wait for the answer while still handling telegrams."""
        self._write(request)
        deadline = time.monotonic() + self.command_timeout_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            for msg in self._pump(min(0.05, max(0.0, deadline - time.monotonic()))):
                r = answered(msg)
                if r is not None:
                    return bool(r)
        return False

    def _initialise(self, attempts: int = 2) -> bool:
        """Set the link mode; a lost answer is asked for once more before giving up."""
        self.state = "initialising"
        self.dongle_stats["inits"] += 1
        ok = False
        for _ in range(attempts):
            ok = self._command(self.adapter.init_request(self.mode), self.adapter.init_ok)
            if ok or self.stopping.is_set():
                break
        if ok:
            self.state = "listening"
            self.log.info("wM-Bus %s: %s on %s listening in mode %s", self.bus, self.dongle_type,
                          self.serial_opts["port"], self.mode)
            self._last_telegram = time.monotonic()
        return ok

    def _ping(self) -> bool:
        return self._command(self.adapter.ping_request(),
                             lambda m: True if self.adapter.is_ping_answer(m) else None)

    def _listen(self) -> None:
        next_ping = time.monotonic() + self.ping_s
        while not self.stopping.is_set():
            self._pump(0.1)
            self.work.service()
            now = time.monotonic()
            problem = None
            if self.meters and now - self._last_telegram > self.silence_s:
                self.dongle_stats["silences"] += 1
                problem = (kinds.DONGLE_SILENT, {"seconds": round(now - self._last_telegram, 1)})
            elif now >= next_ping:
                next_ping = now + self.ping_s
                if not self._ping():
                    self.dongle_stats["ping_failures"] += 1
                    problem = (kinds.DONGLE_PING_FAILED, {})
            if problem is None:
                continue
            self._dongle_event(problem[0], "warning", problem[1])
            if self._initialise():
                self._dongle_event(kinds.DONGLE_REINITIALISED, "info", {"mode": self.mode})
                next_ping = time.monotonic() + self.ping_s
                continue
            self.dongle_stats["init_failures"] += 1
            self._reopen(f"no answer to re-initialisation after {problem[0]}")
            return

    # -- telegrams

    def _on_telegram(self, frame: bytes, rssi_dbm: int | None) -> None:
        from ..protocols.mbus.wireless import dll_header
        self._last_telegram = time.monotonic()
        self.dongle_stats["telegrams"] += 1
        if len(frame) < 11:
            self.dongle_stats["frame_errors"] += 1
            if self.listeners:
                self.listeners.notify({"ts_ms": now_ms(), "rssi_dbm": rssi_dbm, "known": False,
                                       "result": "too short", "hex": frame.hex()})
            return
        hdr = dll_header(frame)
        meter = next((m for m in self.meters.get(hdr["id"], ())
                      if m.manufacturer in (None, hdr["manufacturer"])), None)
        if meter is None:
            from ..protocols.mbus.profiles import meter_address
            own = meter_address(frame)  # e.g. a Diehl PRIOS meter's id is in A[2:6]
            if own is not None:
                hdr = own
                meter = next((m for m in self.meters.get(hdr["id"], ())
                              if m.manufacturer in (None, hdr["manufacturer"])), None)
        if meter is None:
            self._unknown(hdr, rssi_dbm, frame)
            self._heard(hdr, frame, rssi_dbm, None, "not configured")
            return
        st = meter.stats
        st.telegrams += 1
        if rssi_dbm is not None:
            st.rssi_dbm = rssi_dbm
        if self._duplicate(meter, frame):
            st.duplicates += 1
            self._heard(hdr, frame, rssi_dbm, meter, "duplicate")
            return
        result = self._decode(meter, frame, rssi_dbm, now_ms())
        self._heard(hdr, frame, rssi_dbm, meter, result)

    def _heard(self, hdr: dict[str, Any], frame: bytes, rssi_dbm: int | None,
               meter: RadioMeter | None, result: str) -> None:
        """Tell console ``listen`` sessions (if any) what was heard and what became of it."""
        if not self.listeners:
            return
        from ..protocols.mbus.tables import device_type_name
        item: dict[str, Any] = {
            "ts_ms": now_ms(), "manufacturer": hdr["manufacturer"], "id": hdr["id"],
            "version": hdr["version"], "device_type": device_type_name(hdr["device_type"]),
            "rssi_dbm": rssi_dbm, "known": meter is not None, "result": result,
            "length": len(frame), "hex": frame.hex()}
        if meter is not None:
            item["meter"] = meter.label
        if meter is not None and result == "ok":
            item["profile"] = meter.profile or "standard"
        else:
            from ..protocols.mbus.profiles import identify
            item["profile"] = identify(frame)
        self.listeners.notify(item)

    def _decode(self, meter: RadioMeter, frame: bytes, rssi_dbm: int | None, rx: int,
                retry: bool = False) -> str:
        """Decode a configured meter's telegram and emit its readings; "ok" or the error
        event kind."""
        from ..protocols.mbus.errors import MBusError
        st = meter.stats
        try:
            t = self.codec(frame, meter.key, fmt=self.frame_format,
                           formats=self.compact.load(meter.label))
        except MBusError as exc:
            if exc.event == kinds.UNSUPPORTED_FORMAT:
                self._unsupported_format(meter, exc, rssi_dbm)
                return exc.event
            if exc.event == kinds.COMPACT_FORMAT_UNKNOWN:
                return self._compact_unknown(meter, exc, rssi_dbm)
            meter.failed = (frame, rssi_dbm, rx)
            self._failed(meter, exc.event, str(exc), rssi_dbm, getattr(exc, "detail", None))
            return exc.event
        except Exception as exc:  # a codec bug: count it with the frame, keep listening
            self.decode_errors += 1
            message = f"{type(exc).__name__}: {exc}"
            self._failed(meter, kinds.DECODE_ERROR, message, rssi_dbm,
                         decode_error_detail(message, frame))
            return kinds.DECODE_ERROR
        meter.failed = None
        meter.profile = t.extra.get("profile")
        meter_id = meter.name or t.id
        readings = telegram_readings(t, meter_id, self.bus, rx, self.tz)
        marks = telegram_marks(t.extra, readings)
        if meter.guard is None:
            meter.guard = stored_cursor(self.sink, meter.label, REPLAY_CURSOR) or {}
        verdict = judge(meter.guard, marks)
        if not verdict.ok:  # a recorded telegram sent again: no readings from it
            self._failed(meter, kinds.REPLAY_SUSPECTED, f"replay suspected: {verdict.reason}",
                         rssi_dbm, {"marks": marks, "hex": frame.hex().upper()})
            return kinds.REPLAY_SUSPECTED
        flags = tuple(t.status_flags)
        events = read_ok_events(st.consecutive_failures, meter.last_flags, flags, t.status,
                                self.bus, meter_id, rx,
                                **({"retried_with_new_key": True} if retry else {}))
        meter.last_flags = flags
        st.reads_ok += 1
        st.consecutive_failures = 0
        st.last_ok_ms = max(rx, st.last_ok_ms or 0)
        st.status_flags = list(flags)
        cursors = self.compact.cursors(meter.label, f"{t.manufacturer}:{t.id}")
        if cursors is not None:  # a new format: say its compact frames again if unknown
            meter.compact_unknown_sent = False
        if verdict.state is not None:  # committed with the readings it lets through
            meter.guard = verdict.state
            cursors = {**(cursors or {}), (meter.label, REPLAY_CURSOR): verdict.state}
        self.emit(events + readings, cursors)
        with self._decoded:
            meter.last_readings = readings
            self._decoded.notify_all()
        return "ok"

    def _unsupported_format(self, meter: RadioMeter, exc: Any, rssi: int | None) -> None:
        """A payload no meter profile reads: one event for the meter (what it is, so a
        profile can be added), then only counted -- it is not a failing meter."""
        st = meter.stats
        kind = kinds.UNSUPPORTED_FORMAT
        st.failures[kind] = st.failures.get(kind, 0) + 1
        st.last_error = str(exc)
        meter.profile = None
        if meter.unsupported_reported:
            return
        meter.unsupported_reported = True
        h = exc.header
        detail: dict[str, Any] = {
            "id": meter.ident, "manufacturer": h.get("manufacturer"), "version": h.get("version"),
            "device_type": h.get("device_type"),
            "ci": None if h.get("ci") is None else f"0x{h['ci']:02X}", "rssi_dbm": rssi,
            "error": str(exc)}
        self.log.warning("wM-Bus %s: meter %s: %s", self.bus, meter.label, exc)
        self.emit([Event(kind, now_ms(), self.bus, meter.name or meter.ident, "warning",
                         detail)])

    def _compact_unknown(self, meter: RadioMeter, exc: Any, rssi: int | None) -> str:
        """A compact frame before any full frame taught its format: one event per meter
        until the format is known (a Kamstrup meter sends mostly compact frames, and each
        one is not an error), the rest counted."""
        st = meter.stats
        st.failures[exc.event] = st.failures.get(exc.event, 0) + 1
        st.last_error = str(exc)
        if not meter.compact_unknown_sent:
            meter.compact_unknown_sent = True
            self.log.info("wM-Bus %s: meter %s: %s", self.bus, meter.label, exc)
            self.emit([Event(exc.event, now_ms(), self.bus, meter.name or meter.ident, "info",
                             {"error": str(exc), "id": meter.ident, "rssi_dbm": rssi,
                              **getattr(exc, "detail", {})})])
        return exc.event

    def _duplicate(self, meter: RadioMeter, frame: bytes) -> bool:
        now = time.monotonic()
        recent = meter.recent
        while recent:
            k, ts = next(iter(recent.items()))
            if now - ts <= self.dup_window_s and len(recent) <= 64:
                break
            recent.popitem(last=False)
        if frame in recent:
            return True
        recent[frame] = now
        return False

    def _failed(self, meter: RadioMeter, kind: str, message: str, rssi: int | None,
                extra: Mapping[str, Any] | None = None) -> None:
        st = meter.stats
        st.reads_failed += 1
        st.consecutive_failures += 1
        st.failures[kind] = st.failures.get(kind, 0) + 1
        if kind == kinds.CRC_ERROR:
            st.crc_errors += 1
        st.last_error = message
        held = self.events.allow(meter.label, kind)
        if held is None:
            return
        self.log.warning("wM-Bus %s: meter %s: %s", self.bus, meter.label, message)
        detail: dict[str, Any] = {"error": message, "id": meter.ident, "rssi_dbm": rssi,
                                  "consecutive": st.consecutive_failures}
        if held:
            detail["held_back"] = held
        if extra:
            detail.update(extra)
        self.emit([Event(kind, now_ms(), self.bus, meter.name or meter.ident, "warning",
                         detail)])

    def _unknown(self, hdr: dict[str, Any], rssi: int | None, frame: bytes = b"") -> None:
        from ..protocols.mbus.profiles import identify
        from ..protocols.mbus.tables import device_type_name
        self.unknown_telegrams += 1
        key = (hdr["manufacturer"], hdr["id"])
        entry = self.unknown.get(key)
        if entry is None:
            if len(self.unknown) >= 1000:
                return
            entry = self.unknown[key] = {"count": 0, "version": hdr["version"],
                                         "device_type": device_type_name(hdr["device_type"]),
                                         "profile": identify(frame)}  # would read it
            self.log.info("wM-Bus %s: heard %s %s (%s), not configured: ignored", self.bus,
                          key[0], key[1], entry["device_type"])
        entry["count"] += 1
        entry["rssi_dbm"] = rssi
        entry["last_seen_ms"] = now_ms()


DRIVER = WMBusDriver

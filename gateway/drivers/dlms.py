"""Driver ``type: dlms``: DLMS/COSEM meters over HDLC on one serial port (RS-485 bus or
HAN port). gurux-dlms does the DLMS; this module does the bus.

``mode: poll`` - several meters by HDLC server address (logical/physical), read one after
another, each on its own schedule. Per meter: association (none / low / HLS-GMAC suite 0),
clock (drift recorded, optionally corrected), registers and extended registers with exact
scaler and unit, profile generics read by range from a per-meter cursor that is committed in
the same store transaction as the rows it produced (a crash resumes exactly there: no
duplicate, no hole), event logs as diagnostic events. The HLS frame counter is persisted
across restarts in reserved blocks, so a counter value is never used twice even after a
SIGKILL.

``mode: push`` - listen to unsolicited Data-Notifications (HAN ports): the port's bytes go
to the one sans-I/O :class:`~gateway.protocols.dlms.notification.PushDecoder` (HDLC, or bare
glo-ciphered APDUs with ``framing: apdu``; segments and General-Block-Transfer blocks
joined), general-glo-ciphered ones decrypted with the meter's key (picked by system title),
OBIS values mapped to Readings. The GCM invocation counter of each system title must rise
(a durable cursor): a replay gives ``meter.replay_suspected`` and no readings. Whatever a
codec raises on a frame is counted as ``meter.decode_error`` (with the frame's hex,
rate-limited) and the port is read on.

A meter that never answers costs one bounded timeout per try and is backed off; it never
stalls the others. Timeouts, CRC errors, wrong keys and refused associations are counted
per meter and reported as diagnostic events with the reason (never with a key).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import (PATH, SERIAL_SCHEMA, Check, FieldSpec, Schema, any_mapping, boolean,
                      hex_bytes, integer, list_of, mapping, number, one_of, one_of_ints,
                      one_of_keys, text, time_zone)
from ..model import QUALITY_HISTORIC, Event, Reading, now_ms
from .backoff import Backoff
from .bus import BusDriver, MeterStats
from .context import DriverContext, RecordSink
from .keys import key_from
from .handoff import keys_dir_of, stored_key
from .dlms_push import HEX_MAX, PUSH_IC_CURSOR, PushListener  # noqa: F401 (re-exported)
from .. import events as kinds

TYPE = "dlms"
IC_CURSOR = "dlms.invocation_counter"
IC_BLOCK = 10_000  # frame counters reserved (persisted) ahead of use
PUSH_WAIT_S = 30.0  # read_now in push mode: wait this long for a first notification

_OBIS = text("an OBIS code such as 1-0:1.8.0", r"\d{1,3}-\d{1,3}:\d{1,3}\.\d{1,3}\.\d{1,3}(\*\d{1,3})?")


def _system_title(v: Any) -> bytes:
    if not isinstance(v, str):
        raise TypeError()
    if len(v) == 8 and v.isascii():
        return v.encode("ascii")
    if len(v) == 16:
        return bytes.fromhex(v)
    raise ValueError()

SYSTEM_TITLE = Check("8 ASCII characters or 16 hex digits", _system_title, as_text=True)

METER_SCHEMA = Schema((
    FieldSpec("id", text("a meter id of 1-64 characters", r"[A-Za-z0-9._:-]{1,64}"),
              help="meter id used in readings"),
    FieldSpec("logical", integer(0, 16383), 1, help="HDLC logical device address (upper)"),
    FieldSpec("physical", integer(0, 16383), None,
              help="HDLC physical address (lower), e.g. the last digits of the serial number"),
    FieldSpec("address_size", one_of_ints(1, 2, 4), 2,
              help="server address bytes: 1, 2 or 4"),
    FieldSpec("client_address", integer(1, 127), None,
              help="client SAP; default 16 (none), 32 (low), 1 (hls)"),
    FieldSpec("interval_s", number(gt=0, what="a number of seconds"), 60,
              help="seconds between polls of this meter"),
    FieldSpec("security", one_of("none", "low", "hls"), "none",
              help="association security: none, low (password), hls (HLS-GMAC suite 0)"),
    FieldSpec("password", text("a password of 1-64 characters", r".{1,64}"), None, secret=True,
              help="LLS password (security: low)"),
    FieldSpec("block_key", hex_bytes(16, "block cipher key"), None, secret=True,
              help="AES-128 block cipher key (global unicast encryption key), inline"),
    FieldSpec("block_key_file", PATH, None, secret=True, path=True, must_exist=True,
              help="file holding the block cipher key in hex"),
    FieldSpec("auth_key", hex_bytes(16, "authentication key"), None, secret=True,
              help="AES-128 authentication key, inline; defaults to the block key in push mode"),
    FieldSpec("auth_key_file", PATH, None, secret=True, path=True, must_exist=True,
              help="file holding the authentication key in hex"),
    FieldSpec("system_title", SYSTEM_TITLE, None,
              help="poll: the gateway's client system title (default GATEWAY1); "
                   "push: the meter's, to tell meters apart"),
    FieldSpec("clock", boolean(), True, help="read the clock and record its drift"),
    FieldSpec("clock_set_threshold_s", number(gt=0, what="a number of seconds"), None,
              help="set the meter clock when |drift| exceeds this (off by default)"),
    FieldSpec("registers", list_of(_OBIS), [], help="Register (class 3) OBIS codes"),
    FieldSpec("extended_registers", list_of(_OBIS), [], help="Extended Register (class 4) OBIS codes"),
    FieldSpec("profiles", list_of(_OBIS), [], help="profile generics read by range "
                                                  "(e.g. 1-0:99.1.0, 0-0:98.2.0)"),
    FieldSpec("profile_backfill_s", integer(0), 86400,
              help="how far back the first profile read goes"),
    FieldSpec("profile_span_s", integer(60), 21600,
              help="longest time range asked for in one request (committed per request)"),
    FieldSpec("event_logs", list_of(_OBIS), [], help="event log profile generics "
                                                    "(e.g. 0-0:99.98.0), delivered as events"),
    FieldSpec("scalers", any_mapping(integer(-128, 127), "a mapping of OBIS code to scaler"), {},
              help="push: scaler of values sent without one"),
    FieldSpec("positional", list_of(_OBIS), [],
              help="push: OBIS code of each position of a list without OBIS codes"),
), check=(one_of_keys("block_key", "block_key_file"), one_of_keys("auth_key", "auth_key_file")))

SCHEMA = Schema((
    FieldSpec("serial", mapping(SERIAL_SCHEMA), help="the serial port"),
    FieldSpec("mode", one_of("poll", "push"), "poll",
              help="poll the meters, or listen to pushed Data-Notifications"),
    FieldSpec("framing", one_of("hdlc", "apdu", "mbus"), "hdlc",
              help="push: HDLC frames; bare general-glo-ciphering APDUs without HDLC "
                   "(apdu: the Luxembourg Smarty P1 port); or M-Bus long frames "
                   "(mbus: Austrian Kaifa MA309)"),
    FieldSpec("reply_timeout_ms", integer(50, 60000), 2000, help="HDLC reply timeout"),
    FieldSpec("retries", integer(0, 10), 2, help="resends of a frame that got no reply"),
    FieldSpec("backoff_max_s", number(gt=0, what="a number of seconds"), 300,
              help="longest wait before retrying a failing meter"),
    FieldSpec("max_info", integer(32, 2030), 128, help="HDLC max information field length"),
    FieldSpec("default_tz", time_zone(), "UTC",
              help="time zone of meter times sent without deviation"),
    FieldSpec("meters", list_of(METER_SCHEMA, min_items=1, unique_key="id"),
              help="the meters on this port"),
), help="DLMS/COSEM over HDLC (RS-485 poll, or HAN push)")


# the bus-specific counters shown beside MeterStats' common ones (clock_drift_s: a gauge)
DLMS_COUNTERS: dict[str, Any] = {
    "auth_failures": 0, "decrypt_failures": 0, "readings": 0, "profile_rows": 0,
    "events": 0, "clock_drift_s": None, "clock_sets": 0, "notifications": 0,
    "frame_errors": 0, "replays": 0}


@dataclass
class DlmsMeter:
    """One configured meter: its options (keys resolved), schedule, HLS frame counter and
    push state; its counters are the bus's StatsTable row."""

    opts: dict[str, Any]
    backoff: Backoff
    stats: MeterStats
    next_due: float = 0.0
    ic_reserved: int = 0
    ic_next: int = 0
    parser: Any = None
    last_readings: list[Any] = field(default_factory=list)  # push: of the last notification
    push_ic: dict[str, int] = field(default_factory=dict)  # push: last invocation counters
    last_rx_hex: str = ""  # poll: the last frame from this meter
    event_gate: dict[str, list[Any]] = field(default_factory=dict)  # push: rate limit

    @property
    def id(self) -> str:
        return self.opts["id"]


class SerialTransport:
    """Sends HDLC frames to one meter and returns its reply frames (the driver's I/O half
    of the sans-I/O session). Frames from other addresses are skipped, lost replies are
    resent ``retries`` times, CRC errors are counted."""

    def __init__(self, drv: "DlmsDriver", m: DlmsMeter) -> None:
        from ..protocols.hdlc import HdlcDecoder
        self.drv = drv
        self.m = m
        self.decoder = HdlcDecoder()
        self.last: bytes | None = None
        self.physical = m.opts.get("physical")
        self.logical = m.opts.get("logical", 1)

    def send(self, frame: bytes) -> None:
        from .serialport import write_frame
        self.last = frame
        self.decoder.clear()
        self.drv.ser.reset_input_buffer()
        write_frame(self.drv.ser, frame, self.drv.serial_opts)

    def receive(self) -> bytes:
        from ..protocols.hdlc import NEED_DATA
        d = self.drv
        tries = 0
        deadline = time.monotonic() + d.timeout_s
        crc_before = self.decoder.stats.crc_errors
        while True:
            ev = self.decoder.next_event()
            if ev is not NEED_DATA:
                if ev.src.upper == self.logical and (ev.src.lower in (None, self.physical)):
                    self.m.stats.count("crc_errors", self.decoder.stats.crc_errors - crc_before)
                    raw = ev.serialize()
                    self.m.last_rx_hex = raw.hex().upper()
                    return raw
                continue  # another meter's (late) frame
            if d.stopping.is_set():
                raise TimeoutError("driver stopping")
            if time.monotonic() > deadline:
                self.m.stats.count("crc_errors", self.decoder.stats.crc_errors - crc_before)
                crc_before = self.decoder.stats.crc_errors
                if tries >= d.retries or self.last is None:
                    self.m.stats.count("timeouts")
                    raise TimeoutError(f"no reply within {d.timeout_s:.1f} s "
                                       f"({tries + 1} tries)")
                tries += 1
                self.m.stats.count("retries")
                self.send(self.last)
                deadline = time.monotonic() + d.timeout_s
                continue
            data = d.ser.read(max(1, d.ser.in_waiting))
            if data:
                self.decoder.receive_data(data)


class DlmsDriver(PushListener, BusDriver):
    type_name = TYPE

    def __init__(self, name: str, options: Mapping[str, Any],
                 ctx: DriverContext | RecordSink) -> None:
        super().__init__(name, options, ctx)
        self.serial_opts = dict(self.options["serial"])
        self.mode = self.options.get("mode", "poll")
        self.listener = self.mode == "push"
        self.timeout_s = int(self.options.get("reply_timeout_ms", 2000)) / 1000
        self.retries = int(self.options.get("retries", 2))
        self.max_info = int(self.options.get("max_info", 128))
        self.tz = str(self.options.get("default_tz", "UTC"))
        bmax = float(self.options.get("backoff_max_s", 300))
        self.meters = [DlmsMeter(dict(m), Backoff(min_s=min(5.0, bmax), max_s=bmax),
                                 self.stats[m["id"]]) for m in self.options["meters"]]
        self.port_backoff = Backoff(min_s=1, max_s=60)
        self.keys_dir = keys_dir_of(self.options, self.ctx)
        for m in self.meters:
            m.stats.counters.update(DLMS_COUNTERS)
            m.opts["block_key"] = key_from(m.opts.get("block_key"), m.opts.get("block_key_file"))
            m.opts["auth_key"] = key_from(m.opts.get("auth_key"), m.opts.get("auth_key_file"))
            stored = stored_key(self.keys_dir, (m.id,), (16, 32), self.log)
            if stored is not None:  # set with `keys set` after the config was written
                self._use_key(m, stored[0])
                self.log.info("meter %s: using the key(s) stored in %s", m.id, stored[1])
        self.state = "opening"  # opening | open | reopening (for the console)

    # ------------------------------------------------------------------ console capabilities
    # (drivers.base.ConsoleCapabilities); called from other threads, the port work is
    # handed to the driver thread.

    def bus_state(self) -> dict[str, Any]:
        return {"mode": self.mode, **super().bus_state()}

    def read_now(self, meter_id: str) -> list[Any]:
        """poll: associate and read the clock and the registers now (between two meters of
        the cycle), emitted as usual and returned; profiles follow at the next poll.
        push: the meter cannot be asked; the values of its last notification (stored when
        it came), or of the next one within PUSH_WAIT_S."""
        m = self._meter(meter_id)
        if self.mode == "push":
            deadline = time.monotonic() + PUSH_WAIT_S
            while not m.last_readings:
                if time.monotonic() > deadline or self.stopping.is_set() or not self.is_alive():
                    raise TimeoutError(f"no notification from {m.id} decoded yet "
                                       f"({m.stats.last_error or 'nothing received'}); a push meter "
                                       "sends on its own schedule")
                self.stopping.wait(0.1)
            return list(m.last_readings)

        def read() -> list[Any]:
            if self.ser is None:
                raise RuntimeError(f"port {self.serial_opts['port']} is not open "
                                   f"({self.last_port_error or self.state})")
            records = self._poll(m, manual=True)
            if records is None:
                raise RuntimeError(m.stats.last_error or "no answer")
            return records

        return self.on_driver_thread(f"read {m.id}", read)

    def set_key(self, meter_id: str, key: bytes) -> None:
        """``keys set METER``: 16 bytes = the block cipher key (global unicast encryption
        key; the authentication key stays as configured, in push mode it defaults to the
        block key), 32 bytes = the block key followed by the authentication key. Used from
        the next association/notification on; a meter backed off after a refused
        association or a failed decryption is tried again at once."""
        m = self._meter(meter_id)
        if len(key) not in (16, 32):
            raise ValueError("a DLMS key is 16 bytes (block key) or 32 (block key then "
                             f"authentication key), got {len(key)}")

        def apply() -> None:
            self._use_key(m, key)
            self._reset_replay_guard(m)
            self.log.info("meter %s: new key(s) set from the console", m.id)
            if m.backoff.failures:
                m.backoff.ok()
                m.next_due = 0.0

        if self.is_alive():
            self.work.call(f"set key of {m.id}", apply, 20.0)
        else:
            apply()

    def _meter(self, meter_id: str) -> DlmsMeter:
        m = next((m for m in self.meters if m.id == meter_id), None)
        if m is None:
            raise KeyError(meter_id)
        return m

    def _use_key(self, m: DlmsMeter, key: bytes) -> None:
        m.opts["block_key"] = bytes(key[:16])
        if len(key) == 32:
            m.opts["auth_key"] = bytes(key[16:])
        if m.parser is not None:  # push: decrypt the next notification with it
            from ..protocols.dlms.notification import PushParser
            bk = m.opts["block_key"]
            m.parser = PushParser(bk, m.opts.get("auth_key") or bk, self.tz)

    # ------------------------------------------------------------------ store access
    def _cursor(self, meter_id: str, name: str, default: Any = None) -> Any:
        get = getattr(self.sink, "get_cursor", None)
        if get is None:
            store = getattr(self.sink, "store", None)
            get = getattr(store, "get_cursor", None)
        return default if get is None else get(meter_id, name, default)

    def _commit(self, records: list[Any], cursors: Mapping[tuple[str, str], Any]) -> None:
        """Emit and wait until durable: a cursor must never run ahead of its rows."""
        self.emit(records, cursors).result(timeout=60)

    # ------------------------------------------------------------------ the bus skeleton
    def loop(self) -> None:
        if self.mode == "poll":
            from ..protocols.dlms import load_gurux
            load_gurux()  # here, not at import: the registry stays cheap; push needs no gurux
        self.log.info("dlms bus %s (%s): %d meters on %s", self.bus, self.mode,
                      len(self.meters), self.serial_opts["port"])
        super().loop()

    def port_failed(self, exc: BaseException) -> None:
        """Logged and reopened; this bus never reported a port failure as an event."""
        self.log.error("port %s failed: %s; reopening", self.serial_opts["port"], exc)
        self.last_port_error = str(exc)
        self.close_port()

    # ------------------------------------------------------------------ poll
    def poll_once(self) -> float:
        now = time.monotonic()
        for m in self.meters:
            if self.stopping.is_set() or self.ser is None:
                break
            if m.next_due <= now:
                self._poll(m)
                self.work.service()  # a console read waits one meter at most
        return min(m.next_due for m in self.meters) - time.monotonic()

    def _poll(self, m: DlmsMeter, manual: bool = False) -> list[Any] | None:
        """Read one meter; its clock and register records, or None when it failed (counted,
        reported). ``manual``: a console read -- clock and registers only, a working
        meter's schedule is left alone, a failing one's backoff ends when it succeeds."""
        from ..protocols.dlms import DlmsError
        from ..protocols.dlms.client import AssociationRefused
        session = None
        records: list[Any] | None = None
        try:
            session = self._session(m)
            session.connect()
            records = self._read_meter(m, session, profiles=not manual)
        except AssociationRefused as exc:
            m.stats.count("auth_failures")
            self._failed(m, kinds.AUTH_FAILED, str(exc), permanent=True, manual=manual)
        except TimeoutError as exc:
            self._failed(m, kinds.READ_FAILED, str(exc), manual=manual)
        except (DlmsError, ValueError) as exc:
            self._failed(m, kinds.READ_FAILED, f"{type(exc).__name__}: {exc}", manual=manual)
        except OSError:
            raise  # the port: the loop reopens it
        except Exception as exc:  # noqa: BLE001 - a codec (gurux) bug costs a read, not the bus
            m.stats.count("decode_errors")
            self._failed(m, kinds.DECODE_ERROR, f"{type(exc).__name__}: {exc}"[:300],
                         manual=manual, frame_hex=m.last_rx_hex)
        else:
            was_failing = m.backoff.failures > 0
            m.backoff.ok()
            m.stats.ok()
            if not manual:
                m.next_due = time.monotonic() + float(m.opts.get("interval_s", 60))
            elif was_failing:
                m.next_due = 0.0  # it answers again: the full poll (profiles) follows
        finally:
            if session is not None:
                if not self.stopping.is_set() and self.ser is not None:
                    session.close()
                self._note_counter(m, session)
        return records

    def _failed(self, m: DlmsMeter, kind: str, reason: str, permanent: bool = False,
                manual: bool = False, frame_hex: str = "") -> None:
        m.stats.last_error = reason
        if self.stopping.is_set():
            return
        m.stats.failures += 1
        if manual:  # a console read: reported, the poll schedule stays as it is
            self.log.warning("meter %s: %s (read from the console)", m.id, reason)
        else:
            delay = m.backoff.fail(permanent=permanent)
            m.next_due = time.monotonic() + delay
            self.log.warning("meter %s: %s (next try in %.0f s)", m.id, reason, delay)
        detail = {"reason": reason, "address": f"{m.opts.get('logical', 1)}/{m.opts.get('physical')}",
                  "failures": m.stats.failures, "crc_errors": m.stats.crc_errors}
        if frame_hex:  # the last frame the meter sent (a decode error's evidence)
            detail["frame"] = frame_hex[:HEX_MAX] + ("..." if len(frame_hex) > HEX_MAX else "")
        self.emit([Event(kind, now_ms(), self.bus, m.id, "warning", detail)])

    def _session(self, m: DlmsMeter) -> Any:
        from ..protocols.dlms.client import DlmsSession, SecurityConfig
        o = m.opts
        level = o.get("security", "none")
        client = o.get("client_address") or {"none": 16, "low": 32, "hls": 1}[level]
        sec = SecurityConfig(level, o.get("password"), o.get("block_key"), o.get("auth_key"),
                             o.get("system_title") or b"GATEWAY1")
        ic = 0
        if level == "hls":
            ic = self._reserve_counter(m)
        return DlmsSession(SerialTransport(self, m), logical=int(o.get("logical", 1)),
                           physical=int(o.get("physical") or 0), client_address=client,
                           address_size=int(o.get("address_size", 2)), security=sec,
                           invocation_counter=ic, default_tz=self.tz, max_info=self.max_info)

    def _reserve_counter(self, m: DlmsMeter) -> int:
        """The frame counter to start from, with a block ahead of it persisted first."""
        if m.ic_reserved == 0:
            m.ic_reserved = int(self._cursor(m.id, IC_CURSOR, 0) or 0)
            m.ic_next = m.ic_reserved  # after a restart, skip whatever may have been used
        if m.ic_next + IC_BLOCK // 2 > m.ic_reserved:
            m.ic_reserved = m.ic_next + IC_BLOCK
            self._commit([], {(m.id, IC_CURSOR): m.ic_reserved})
        return m.ic_next

    def _note_counter(self, m: DlmsMeter, session: Any) -> None:
        if m.opts.get("security") == "hls":
            m.ic_next = max(m.ic_next, session.invocation_counter)

    def _read_meter(self, m: DlmsMeter, s: Any, profiles: bool = True) -> list[Any]:
        o = m.opts
        rx = now_ms()
        meter_ts = None
        records: list[Any] = []
        if o.get("clock", True):
            t0 = now_ms()
            meter_ts = s.read_clock()
            t1 = now_ms()
            if meter_ts is not None:
                drift_ms = meter_ts - (t0 + t1) // 2
                m.stats.counters["clock_drift_s"] = drift_ms / 1000
                records.append(Reading(m.id, kinds.CLOCK_DRIFT, drift_ms, -3, "s", meter_ts, t1, (),
                                       self.bus))
                limit = o.get("clock_set_threshold_s")
                if limit is not None and abs(drift_ms) > float(limit) * 1000:
                    s.set_clock(now_ms())
                    m.stats.count("clock_sets")
                    records.append(Event(kinds.CLOCK_SET, now_ms(), self.bus, m.id, "info",
                                         {"drift_s": drift_ms / 1000, "threshold_s": limit}))
                    self.log.info("meter %s: clock off by %.1f s, set", m.id, drift_ms / 1000)
        for obis in o.get("registers") or []:
            v, _ = s.read_register(obis, 3)
            records.append(Reading(m.id, obis, v.mantissa, v.exponent, v.unit, meter_ts, rx,
                                   (), self.bus))
        for obis in o.get("extended_registers") or []:
            v, captured = s.read_register(obis, 4)
            records.append(Reading(m.id, obis, v.mantissa, v.exponent, v.unit,
                                   captured if captured is not None else meter_ts, rx, (),
                                   self.bus))
        m.stats.count("readings", sum(1 for r in records if isinstance(r, Reading)))
        if records:
            self._commit(records, {})
        if not profiles:
            return records
        meter_now = meter_ts if meter_ts is not None else now_ms()
        for obis in o.get("profiles") or []:
            self._read_profile(m, s, obis, meter_now, events=False)
        for obis in o.get("event_logs") or []:
            self._read_profile(m, s, obis, meter_now, events=True)
        return records

    def _read_profile(self, m: DlmsMeter, s: Any, obis: str, meter_now: int,
                      events: bool) -> None:
        """Read rows after the cursor, one span per request; each span's rows and the new
        cursor are committed together and durably before the next request."""
        from ..protocols.dlms.values import datetime_ms, scaled
        key = (m.id, ("events:" if events else "profile:") + obis)
        cursor = self._cursor(*key)
        if cursor is None:
            cursor = meter_now - int(m.opts.get("profile_backfill_s", 86400)) * 1000
        span = int(m.opts.get("profile_span_s", 21600)) * 1000
        columns = s.profile_columns(obis)
        scalers = s.column_scalers(obis)
        for _ in range(10_000):  # bounded: at most this many spans per poll
            if self.stopping.is_set() or cursor >= meter_now:
                return
            end = min(cursor + span, meter_now)
            rows = s.read_profile_range(obis, cursor + 1000 - cursor % 1000, end)
            rx = now_ms()
            records: list[Any] = []
            newest = cursor
            for row in rows:
                ts = datetime_ms(row[0], self.tz) if row else None
                if ts is None or ts <= cursor:
                    continue  # a meter may include the boundary row: never deliver it twice
                newest = max(newest, ts)
                if events:
                    detail = {"log": obis, "code": _plain(row[1]) if len(row) > 1 else None}
                    records.append(Event(kinds.METER_EVENT, ts, self.bus, m.id, "info", detail))
                    continue
                for (cls, col, attr), su, value in zip(columns[1:], scalers[1:], row[1:]):
                    if su is None:
                        continue
                    ex = scaled(value, su[0])
                    if ex is not None:
                        records.append(Reading(m.id, col, ex[0], ex[1], su[1], ts, rx,
                                               (QUALITY_HISTORIC,), self.bus))
            if not rows or newest == cursor:
                # nothing after the cursor in this span: move past it once it is safely in
                # the past (rows cannot appear there later), else wait for the next poll
                if end >= meter_now:
                    return
                newest = end
            self._commit(records, {key: newest})
            if events:
                m.stats.count("events", len(records))
            else:
                m.stats.count("profile_rows", len({r.meter_ts_ms for r in records}))
                m.stats.count("readings", len(records))
            cursor = newest


def _plain(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    try:
        return int(v)
    except (TypeError, ValueError):
        return str(v)


DRIVER = DlmsDriver

"""Driver ``type: iec62056-21``: meters read with IEC 62056-21 (modes A, B, C) on one port,
or a meter that pushes its data unasked (mode D, P1-like telegrams) listened to.

Each cycle reads every meter in turn: sign-on at 300 baud 7E1 with the meter's address,
identification, then (mode C) an option select to the agreed baud rate and either a data
readout or, when a P1 password is configured, programming mode with R1 reads of the
configured registers. A silent meter costs one bounded timeout and is backed off, so it
never stalls the others on the bus. Values stay exact decimal text until they become
Readings (mantissa, exponent).

Mode D: the port is opened at its configured baud and only listened to; each telegram
(``/ident ... !`` with an optional CRC16, or ``/ident ... STX data ETX BCC``) becomes
readings, stamped with the telegram's own time (``0-0:1.0.0``); a value that carries its
own capture time (DSMR gas ``0-n:24.2.1``, Fluvius peaks) gets that time and the
``historic`` flag. ``interval_s`` is then the meter's push interval: three missed pushes
raise one ``meter.read_failed``; a telegram failing its check is counted
(``meter.crc_error`` at most once a minute).

Whatever a codec raises on a frame (a bug in it, not just bad bytes), the driver counts a
``meter.decode_error`` with the frame's hex (rate-limited, see decode_errors) and goes on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

from ..config import (SERIAL_SCHEMA, FieldSpec, Schema, integer, list_of, mapping, number,
                      one_of, one_of_ints, text)
from ..model import QUALITY_HISTORIC, Event, Reading, now_ms
from .backoff import Backoff
from .bus import READ_NOW_TIMEOUT_S, BusDriver, MeterStats, ReadFailed
from .context import DriverContext, RecordSink
from .decode_errors import DecodeErrors
from .. import events as kinds

TYPE = "iec62056-21"

METER_SCHEMA = Schema((
    FieldSpec("id", text("a meter id of 1-64 characters", r"[A-Za-z0-9._:-]{1,64}"),
              help="meter id used in readings"),
    FieldSpec("address", text("a device address of 0-32 characters", r"[A-Za-z0-9 ._-]{0,32}"),
              "", help="device address sent in the sign-on /?address!; empty = point to point"),
    FieldSpec("mode", one_of("a", "b", "c", "d"), "c",
              help="protocol mode: C (baud switch), A or B; D: the meter pushes (listen only, "
                   "alone on its port, at serial.baud)"),
    FieldSpec("max_baud", one_of_ints(300, 600, 1200, 2400, 4800, 9600, 19200), 9600,
              help="highest baud rate to switch to in mode C"),
    FieldSpec("password", text("a password of 1-32 characters", r"[ -~]{1,32}"), None,
              secret=True, help="P1 password: read `registers` in programming mode"),
    FieldSpec("registers", list_of(text("an address such as 1.8.0")), [],
              help="addresses read with R1 when a password is set"),
    FieldSpec("obis_prefix", text("an OBIS A-B prefix such as 1-0:", r"(\d{1,3}-\d{1,3}:)?"),
              "1-0:", help="prefix for short C.D.E addresses"),
))


def _mode_d_alone(v: dict[str, Any]) -> list[tuple[str, str]]:
    meters = v.get("meters") or []
    if len(meters) > 1 and any(m.get("mode") == "d" for m in meters):
        return [("meters", "a mode D meter pushes unasked: it must be the only meter on its "
                           f"port, got {len(meters)} meters")]
    return []


SCHEMA = Schema((
    FieldSpec("serial", mapping(SERIAL_SCHEMA), help="the serial port (sign-on is always "
              "300 baud; bytesize/parity are taken from data_format)"),
    FieldSpec("data_format", one_of("7e1", "8n1"), "7e1",
              help="character format: 7E1 as the standard says, 8N1 for odd adapters"),
    FieldSpec("interval_s", number(gt=0, what="a number of seconds"), 60,
              help="seconds between two readouts of the same meter (mode D: the meter's "
                   "push interval)"),
    FieldSpec("reply_timeout_ms", integer(50, 60000), 2000,
              help="longest wait for a meter's reply"),
    FieldSpec("retries", integer(0, 10), 2, help="NAK retries of a block with a bad BCC"),
    FieldSpec("baud_switch_delay_ms", integer(0, 2000), 300,
              help="pause after the option select before switching baud (§6.3.14: 200-1500 ms)"),
    FieldSpec("backoff_max_s", number(gt=0, what="a number of seconds"), 300,
              help="longest wait before retrying a failing meter"),
    FieldSpec("meters", list_of(METER_SCHEMA, min_items=1, unique_key="id"),
              help="the meters on this port"),
), check=_mode_d_alone, help="IEC 62056-21 meters (optical head or RS-485)")



IEC_COUNTERS = ("bcc_errors", "auth_failures", "parity_errors", "readings")


@dataclass
class IecMeter:
    """One configured meter and its poll schedule; its counters are the bus's StatsTable row."""

    opts: dict[str, Any]
    backoff: Backoff
    stats: MeterStats
    next_due: float = 0.0

    @property
    def id(self) -> str:
        return self.opts["id"]


class Iec62056Driver(BusDriver):
    type_name = TYPE
    default_baud = 2400  # mode D: the meter's push baud; polling signs on at 300

    def __init__(self, name: str, options: Mapping[str, Any],
                 ctx: DriverContext | RecordSink) -> None:
        super().__init__(name, options, ctx)
        self.serial_opts = dict(self.options["serial"])
        # 7E1 is sent as 8N1 with the parity bit computed here (see add_even_parity): the
        # same bits on the wire, and it works on UARTs and ptys that refuse CS7|PARENB.
        self.soft_parity = self.options.get("data_format", "7e1") == "7e1"
        self.serial_opts.update(bytesize=8, parity="N")
        self.interval_s = float(self.options.get("interval_s", 60))
        self.timeout_s = int(self.options.get("reply_timeout_ms", 2000)) / 1000
        self.retries = int(self.options.get("retries", 2))
        self.switch_delay_s = int(self.options.get("baud_switch_delay_ms", 300)) / 1000
        bmax = float(self.options.get("backoff_max_s", 300))
        self.meters = [IecMeter(dict(m), Backoff(min_s=min(5.0, bmax), max_s=bmax),
                                self.stats[m["id"]]) for m in self.options["meters"]]
        for m in self.meters:
            m.stats.counters.update(dict.fromkeys(IEC_COUNTERS, 0))
        self.port_backoff = Backoff(min_s=1, max_s=60)
        self.state = "opening"  # opening | open | reopening (for the console)
        self.listener = self.meters[0].opts.get("mode") == "d"  # alone on its port (schema)
        self.gate.interval_s = 60.0  # mode D check failures: a meter pushing every second...
        self._pushed = threading.Condition()
        self._push_count = 0
        self._push_readings: list[Reading] = []
        self._silent_reported = False
        self._split: Any = None  # mode D: the PushSplitter of the open port
        self._last_push_ok = 0.0
        self.decode_errors = DecodeErrors(self.bus)
        self._rx_log = bytearray()  # what the meter sent in the current exchange (for hex)

    @property
    def listen(self) -> bool:
        """Mode D: the meter pushes, the port is only listened to."""
        return self.listener

    # -- console capabilities (drivers.base.ConsoleCapabilities); any thread

    def read_now(self, meter_id: str) -> list[Reading]:
        """Read this meter now, between two meters of the cycle; the readings are emitted
        as usual and returned. A failed read raises with the reason."""
        m = next((m for m in self.meters if m.id == meter_id), None)
        if m is None:
            raise KeyError(meter_id)
        if self.listen:
            return self._next_push(m)

        def read() -> list[Reading]:
            if self.ser is None:
                raise RuntimeError(f"port {self.serial_opts['port']} is not open "
                                   f"({self.last_port_error or self.state})")
            try:
                records = self._poll(m, manual=True)
            except OSError as exc:
                self.port_failed(exc)
                raise RuntimeError(f"port {self.serial_opts['port']} failed: {exc}") from None
            if records is None:
                raise RuntimeError(m.stats.last_error or "no answer")
            return records

        return self.on_driver_thread(f"read {meter_id}", read)

    # ------------------------------------------------------------------ the bus skeleton
    def loop(self) -> None:
        self.log.info("iec62056-21 bus %s: %d meters on %s every %.1f s", self.bus,
                      len(self.meters), self.serial_opts["port"], self.interval_s)
        super().loop()

    def port_baud(self) -> int:
        return int(self.serial_opts.get("baud", self.default_baud)) if self.listen else 300

    def port_failed(self, exc: BaseException) -> None:
        """Logged and reopened; this bus never reported a port failure as an event."""
        self.log.error("port %s failed: %s; reopening", self.serial_opts["port"], exc)
        self.last_port_error = str(exc)
        self.close_port()

    def poll_once(self) -> float:
        now = time.monotonic()
        for m in [m for m in self.meters if m.next_due <= now]:
            if self.stopping.is_set() or self.ser is None:
                break
            self._poll(m)
            self.work.service()  # a console read waits one meter at most
        return min(m.next_due for m in self.meters) - time.monotonic()

    # ------------------------------------------------------------------ mode D
    def on_open(self) -> None:
        if self.listen:
            from ..protocols import iec62056_21 as iec
            self._split = iec.PushSplitter()
            self._last_push_ok = time.monotonic()

    def on_bytes(self, data: bytes) -> None:
        self._pushed_bytes(self.meters[0], data)

    def on_idle(self) -> None:
        self._pushed_bytes(self.meters[0], b"")

    def _pushed_bytes(self, m: IecMeter, data: bytes) -> None:
        """What the meter pushed (or a quiet read): telegrams, then the silence check."""
        from ..protocols import iec62056_21 as iec
        split = self._split
        if data and self.soft_parity:
            m.stats.count("parity_errors", iec.parity_errors(data))
        try:
            if data:
                split.receive_data(data)
                telegram = split.next_telegram()
            else:
                telegram = split.flush()  # quiet line: a telegram without a final CR LF
            for _ in range(len(data) + 16):  # each telegram takes a byte at least
                if telegram is None:
                    break
                if self._push_telegram(m, telegram):
                    self._last_push_ok = time.monotonic()
                telegram = split.next_telegram()
        except Exception as exc:  # noqa: BLE001 - a splitter bug: drop what it holds
            self._decode_error(m, bytes(split.pending()), exc)
            self._split = iec.PushSplitter()
        silent = time.monotonic() - self._last_push_ok
        if silent > 3 * self.interval_s and not self._silent_reported:
            self._silent_reported = True
            m.stats.count("timeouts")
            m.stats.failed(f"no push telegram for {silent:.0f} s")
            self.log.warning("meter %s: %s (expected every %.0f s)", m.id,
                             m.stats.last_error, self.interval_s)
            self.emit([Event(kinds.READ_FAILED, now_ms(), self.bus, m.id, "warning",
                             {"reason": m.stats.last_error, "mode": "d",
                              "failures": m.stats.failures})])
        self.cycles += 1

    def _push_telegram(self, m: IecMeter, telegram: bytes) -> bool:
        from ..protocols import iec62056_21 as iec
        from ..protocols import p1
        rx = now_ms()
        try:
            if bytes([iec.STX]) in telegram:  # /ident CRLF STX data ETX BCC
                readout = iec.parse_readout(telegram)
                records = self._to_readings(m, readout.data_sets, rx)
            else:
                records = self._p1_readings(m, p1.parse_p1(telegram), rx)
        except iec.Iec62056Error as exc:
            crc = isinstance(exc, iec.BccError)
            if crc:
                self._bcc_error(m)
            else:
                m.stats.failures += 1
            m.stats.last_error = str(exc)
            kind = kinds.CRC_ERROR if crc else kinds.READ_FAILED
            ev = self.gate.admit(kind, m.id, {"reason": str(exc), "mode": "d",
                                              "bcc_errors": m.stats.counters["bcc_errors"]})
            if ev is not None:  # a meter pushing every second: at most one a minute
                self.log.warning("meter %s: %s", m.id, exc)
                self.emit([ev])
            return False
        except Exception as exc:  # noqa: BLE001 - a codec bug: count it, keep listening
            self._decode_error(m, telegram, exc)
            return False
        if self._silent_reported:
            self.log.info("meter %s: pushing again", m.id)
        self._silent_reported = False
        self._succeeded(m, records)
        with self._pushed:
            self._push_count += 1
            self._push_readings = records
            self._pushed.notify_all()
        return True

    @staticmethod
    def _bcc_error(m: IecMeter) -> None:
        """A block failing its BCC: the common ``crc_errors`` and, under the name this
        bus always showed, ``bcc_errors``."""
        m.stats.count("crc_errors")
        m.stats.count("bcc_errors")

    def _decode_error(self, m: IecMeter, frame: bytes, exc: Exception) -> None:
        m.stats.count("decode_errors")
        m.stats.last_error = f"decode error: {type(exc).__name__}: {exc}"
        ev = self.decode_errors.report(m.id, frame, exc, mode=m.opts.get("mode", "c"))
        if ev is not None:
            self.log.warning("meter %s: frame not decodable (%s: %s); going on",
                             m.id, type(exc).__name__, exc)
            self.emit([ev])

    def _p1_readings(self, m: IecMeter, tg: Any, rx: int) -> list[Reading]:
        from .p1_readings import p1_readings
        return p1_readings(tg, m.id, rx, self.bus, m.opts.get("obis_prefix", "1-0:"))

    def _next_push(self, m: IecMeter) -> list[Reading]:
        """A console read of a mode D meter: the readings of its next telegram."""
        wait = min(READ_NOW_TIMEOUT_S, max(5.0, 2.5 * self.interval_s))
        with self._pushed:
            seen = self._push_count
            if not self._pushed.wait_for(lambda: self._push_count != seen, wait):
                raise RuntimeError(f"mode D meter {m.id} pushed nothing valid within "
                                   f"{wait:.0f} s ({m.stats.last_error or 'no telegram'})")
            return list(self._push_readings)

    def _poll(self, m: IecMeter, manual: bool = False) -> list[Reading] | None:
        """Read one meter and emit its readings; them, or None when it failed (counted,
        reported). ``manual``: a console read, which leaves a working meter's schedule
        alone and ends a failing meter's backoff when it succeeds."""
        mid = m.id
        self._rx_log.clear()
        try:
            try:
                records = self._read_meter(m)
            except (ReadFailed, OSError):
                raise
            except Exception as exc:  # noqa: BLE001 - a codec bug: count it, keep polling
                self._decode_error(m, bytes(self._rx_log), exc)
                raise ReadFailed(f"decode error: {type(exc).__name__}: {exc}") from None
        except ReadFailed as exc:
            if self.stopping.is_set():
                m.stats.last_error = str(exc)
                return None  # interrupted by shutdown: not the meter's fault
            m.stats.failed(str(exc))
            if manual:
                self.log.warning("meter %s: %s (read from the console)", mid, exc)
            else:
                delay = m.backoff.fail(permanent=exc.kind == kinds.AUTH_FAILED)
                m.next_due = time.monotonic() + max(delay, 0.0)
                self.log.warning("meter %s: %s (next try in %.0f s)", mid, exc, delay)
            self.emit([Event(exc.kind, now_ms(), self.bus, mid, "warning",
                             {"reason": str(exc), "address": m.opts.get("address", ""),
                              "failures": m.stats.failures})])
            return None
        finally:
            self._reset_line()
        was_failing = m.backoff.failures > 0
        m.backoff.ok()
        if not manual or was_failing:
            m.next_due = time.monotonic() + self.interval_s
        self._succeeded(m, records)
        return records

    def _succeeded(self, m: IecMeter, records: list[Reading]) -> None:
        m.stats.ok()
        m.stats.count("readings", len(records))
        if records:
            self.emit(records)

    def _reset_line(self) -> None:
        if self.ser is not None:
            try:
                self.ser.baudrate = 300
            except (OSError, ValueError):
                pass

    # ------------------------------------------------------------------ protocol
    def _read_meter(self, m: IecMeter) -> list[Reading]:
        from ..protocols import iec62056_21 as iec
        o = m.opts
        dec = iec.Iec62056Decoder()
        self.ser.reset_input_buffer()
        self._send(iec.sign_on(o.get("address", "")))
        ident = self._expect(m, dec, iec.Identification, "identification")
        password = o.get("password")
        mode = ident.mode
        if o.get("mode", "c") == "c" and mode == "C":
            wanted = min(ident.max_baud, int(o.get("max_baud", 9600)))
            baud = max(b for b in iec.BAUD_MODE_C.values() if b <= wanted)
            self._send(iec.option_select(
                iec.BAUD_CHAR_C[baud], iec.MODE_PROGRAMMING if password else iec.MODE_READOUT))
            self.stopping.wait(self.switch_delay_s)
            self.ser.baudrate = baud
        elif mode == "B":
            self.ser.baudrate = ident.max_baud
        rx = now_ms()
        if password:
            sets = self._programming_read(m, dec, password)
        else:
            sets = self._readout(m, dec)
        return self._to_readings(m, sets, rx)

    def _to_readings(self, m: IecMeter, sets: Any, rx: int) -> list[Reading]:
        """Registers of a readout's data sets, read by the shape of their groups like P1
        lines (``(time)(value*unit)`` gives the value at that time)."""
        from ..protocols import iec62056_21 as iec
        from ..protocols import p1
        o = m.opts
        prefix = o.get("obis_prefix", "1-0:")
        clock = next((ds for ds in sets if ds.address in ("0-0:1.0.0", "1.0.0")), None)
        meter_ts = p1.parse_timestamp(clock.value) if clock is not None else None
        out = []
        for ds in sets:
            first = ds.value + ("*" + ds.unit if ds.unit else "")
            for v in p1.interpret(ds.address, (first,) + tuple(ds.extra)):
                ex = v.exact()
                if ex is None or not v.unit or v.buffer:
                    continue  # dates, serial numbers, unitless counters: not registers
                own = v.ts_ms is not None
                out.append(Reading(o["id"], iec.normalise_obis(ds.address, prefix), ex[0],
                                   ex[1], v.unit, v.ts_ms if own else meter_ts, rx,
                                   (QUALITY_HISTORIC,) if own else (), self.bus))
        return out

    def _readout(self, m: IecMeter, dec: Any) -> list[Any]:
        from ..protocols import iec62056_21 as iec
        payload = b""
        for attempt in range(self.retries + 1):
            ev = self._next(m, dec, "readout")
            if isinstance(ev, iec.DataBlock):
                payload += ev.payload
                if ev.partial:  # §6.3.12 partial block: acknowledge, the next follows
                    self._send(bytes([iec.ACK]))
                    continue
                if b"!" not in payload:
                    raise ReadFailed("readout without end mark '!'")
                return iec.parse_data_sets(payload[:payload.rindex(b"!")])
            if isinstance(ev, iec.BadBlock):
                self._bcc_error(m)
                if attempt < self.retries:
                    m.stats.count("retries")
                    self._send(bytes([iec.NAK]))  # the meter repeats the block
                    continue
                raise ReadFailed(f"readout failed its BCC check {self.retries + 1} times "
                                 f"({ev.reason})", kinds.CRC_ERROR)
        raise ReadFailed("readout failed its BCC check", kinds.CRC_ERROR)

    def _programming_read(self, m: IecMeter, dec: Any, password: str) -> list[Any]:
        from ..protocols import iec62056_21 as iec
        self._expect(m, dec, iec.Command, "password request P0")
        self._send(iec.command("P1", f"({password})"))
        ev = self._next(m, dec, "password acknowledgement")
        if not isinstance(ev, iec.Ack):
            m.stats.count("auth_failures")
            raise ReadFailed("the meter refused the P1 password", kinds.AUTH_FAILED)
        sets = []
        try:
            for addr in m.opts.get("registers") or []:
                self._send(iec.command("R1", f"{addr}()"))
                ev = self._next(m, dec, f"register {addr}")
                if isinstance(ev, iec.BadBlock):
                    self._bcc_error(m)
                    raise ReadFailed(f"register {addr}: {ev.reason}", kinds.CRC_ERROR)
                if isinstance(ev, iec.DataBlock):
                    sets += iec.parse_data_sets(ev.payload)
        finally:
            self._send(iec.command("B0"))
        return sets

    def _expect(self, m: IecMeter, dec: Any, cls: type, what: str) -> Any:
        ev = self._next(m, dec, what)
        if not isinstance(ev, cls):
            raise ReadFailed(f"expected {what}, got {type(ev).__name__}")
        return ev

    def _next(self, m: IecMeter, dec: Any, what: str) -> Any:
        """The next message from the meter, within reply_timeout_ms."""
        from ..protocols import iec62056_21 as iec
        deadline = time.monotonic() + self.timeout_s
        while True:
            ev = dec.next_event()
            if ev is not iec.NEED_DATA:
                if isinstance(ev, (iec.SignOn, iec.OptionSelect)):
                    continue  # our own echo on a two-wire bus
                return ev
            if self.stopping.is_set():
                raise ReadFailed("driver stopping")
            if time.monotonic() > deadline:
                m.stats.count("timeouts")
                raise ReadFailed(f"no {what} within {self.timeout_s:.1f} s")
            data = self.ser.read(max(1, self.ser.in_waiting))
            if data:
                if self.soft_parity:
                    m.stats.count("parity_errors", iec.parity_errors(data))
                if len(self._rx_log) < 64 * 1024:
                    self._rx_log += data
                dec.receive_data(data)

    def _send(self, data: bytes) -> None:
        from ..protocols.iec62056_21 import add_even_parity
        from .serialport import write_frame
        write_frame(self.ser, add_even_parity(data) if self.soft_parity else data, self.serial_opts)


DRIVER = Iec62056Driver

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
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import (SERIAL_SCHEMA, FieldSpec, Schema, integer, list_of, mapping, number,
                      one_of, one_of_ints, text)
from ..model import QUALITY_HISTORIC, Event, Reading, now_ms
from .backoff import Backoff
from .base import Driver, RecordSink
from .decode_errors import DecodeErrors
from .serialport import OwnsSerialPort
from .handoff import WorkQueue
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



class ReadFailed(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind  # event kind: meter.read_failed, meter.crc_error, meter.auth_failed


@dataclass
class MeterState:
    opts: dict[str, Any]
    backoff: Backoff
    next_due: float = 0.0
    stats: dict[str, int] = field(default_factory=lambda: {
        "success": 0, "failures": 0, "retries": 0, "timeouts": 0, "bcc_errors": 0,
        "auth_failures": 0, "parity_errors": 0, "readings": 0, "decode_errors": 0})
    last_ok_ms: int | None = None
    last_error: str | None = None


READ_NOW_TIMEOUT_S = 55.0  # below the console's 60 s, so the technician sees why


class Iec62056Driver(OwnsSerialPort, Driver):
    type_name = TYPE

    def __init__(self, name: str, options: Mapping[str, Any], sink: RecordSink) -> None:
        super().__init__(name, options, sink)
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
        self.meters = [MeterState(dict(m), Backoff(min_s=min(5.0, bmax), max_s=bmax))
                       for m in self.options["meters"]]
        self.ser: Any = None
        self.port_backoff = Backoff(min_s=1, max_s=60)
        self.cycles = 0
        self.work = WorkQueue(self, self.stopping)
        self.state = "opening"  # opening | open | reopening (for the console)
        self.last_port_error: str | None = None
        self.listen = self.meters[0].opts.get("mode") == "d"  # alone on its port (schema)
        self._pushed = threading.Condition()
        self._push_count = 0
        self._push_readings: list[Reading] = []
        self._last_push_error_at = 0.0
        self._silent_reported = False
        self.decode_errors = DecodeErrors(self.bus)
        self._rx_log = bytearray()  # what the meter sent in the current exchange (for hex)

    def meter_stats(self) -> dict[str, dict[str, Any]]:
        return {m.opts["id"]: {**m.stats, "last_ok_ms": m.last_ok_ms,
                               "last_error": m.last_error} for m in self.meters}

    # -- console capabilities (drivers.base.ConsoleCapabilities); any thread

    def bus_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "port": self.serial_opts.get("port"),
                               "cycles": self.cycles}
        if self.state != "open" and self.last_port_error:
            out["error"] = self.last_port_error
        return out

    def read_now(self, meter_id: str) -> list[Reading]:
        """Read this meter now, between two meters of the cycle; the readings are emitted
        as usual and returned. A failed read raises with the reason."""
        m = next((m for m in self.meters if m.opts["id"] == meter_id), None)
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
                self.log.error("port %s failed: %s; reopening", self.serial_opts["port"], exc)
                self._close()
                raise RuntimeError(f"port {self.serial_opts['port']} failed: {exc}") from None
            if records is None:
                raise RuntimeError(m.last_error or "no answer")
            return records

        return self.work.call(f"read {meter_id}", read, READ_NOW_TIMEOUT_S)

    # ------------------------------------------------------------------ loop
    def loop(self) -> None:
        self.log.info("iec62056-21 bus %s: %d meters on %s every %.1f s", self.bus,
                      len(self.meters), self.serial_opts["port"], self.interval_s)
        try:
            while not self.stopping.is_set():
                if not self._open_or_back_off():
                    continue
                if self.listen:
                    self._listen(self.meters[0])
                    continue
                now = time.monotonic()
                due = [m for m in self.meters if m.next_due <= now]
                for m in due:
                    if self.stopping.is_set() or self.ser is None:
                        break
                    try:
                        self._poll(m)
                    except OSError as exc:  # the port vanished (USB adapter unplugged)
                        self.log.error("port %s failed: %s; reopening", self.serial_opts["port"], exc)
                        self._close()
                        break
                    self.work.service()  # a console read waits one meter at most
                self.cycles += 1
                self.work.service()
                if self.ser is not None:
                    wait = min(m.next_due for m in self.meters) - time.monotonic()
                    self.work.wait(max(0.0, min(wait, 1.0)))
        finally:
            self._close()
            self.work.close()

    def _open(self) -> None:
        self._open_port(int(self.serial_opts.get("baud", 2400)) if self.listen else 300)

    # ------------------------------------------------------------------ mode D
    def _listen(self, m: MeterState) -> None:
        """Read what the meter pushes until the port fails or the driver stops."""
        from ..protocols import iec62056_21 as iec
        split = iec.PushSplitter()
        last_ok = time.monotonic()
        while not self.stopping.is_set():
            try:
                data = self.ser.read(max(1, self.ser.in_waiting))
            except OSError as exc:  # the port vanished (USB adapter unplugged)
                self.log.error("port %s failed: %s; reopening", self.serial_opts["port"], exc)
                self._close()
                return
            if data and self.soft_parity:
                m.stats["parity_errors"] += iec.parity_errors(data)
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
                        last_ok = time.monotonic()
                    telegram = split.next_telegram()
            except Exception as exc:  # noqa: BLE001 - a splitter bug: drop what it holds
                self._decode_error(m, bytes(split.pending()), exc)
                split = iec.PushSplitter()
            silent = time.monotonic() - last_ok
            if silent > 3 * self.interval_s and not self._silent_reported:
                self._silent_reported = True
                m.stats["failures"] += 1
                m.stats["timeouts"] += 1
                m.last_error = f"no push telegram for {silent:.0f} s"
                self.log.warning("meter %s: %s (expected every %.0f s)", m.opts["id"],
                                 m.last_error, self.interval_s)
                self.emit([Event(kinds.READ_FAILED, now_ms(), self.bus, m.opts["id"],
                                 "warning", {"reason": m.last_error, "mode": "d",
                                             "failures": m.stats["failures"]})])
            self.cycles += 1
            self.work.service()

    def _push_telegram(self, m: MeterState, telegram: bytes) -> bool:
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
            m.stats["bcc_errors" if crc else "failures"] += 1
            m.last_error = str(exc)
            now = time.monotonic()
            if now - self._last_push_error_at >= 60:  # a meter pushing every second...
                self._last_push_error_at = now
                self.log.warning("meter %s: %s", m.opts["id"], exc)
                self.emit([Event(kinds.CRC_ERROR if crc else kinds.READ_FAILED, rx,
                                 self.bus, m.opts["id"], "warning",
                                 {"reason": str(exc), "mode": "d",
                                  "bcc_errors": m.stats["bcc_errors"]})])
            return False
        except Exception as exc:  # noqa: BLE001 - a codec bug: count it, keep listening
            self._decode_error(m, telegram, exc)
            return False
        if self._silent_reported:
            self.log.info("meter %s: pushing again", m.opts["id"])
        self._silent_reported = False
        self._succeeded(m, records)
        with self._pushed:
            self._push_count += 1
            self._push_readings = records
            self._pushed.notify_all()
        return True

    def _decode_error(self, m: MeterState, frame: bytes, exc: Exception) -> None:
        m.stats["decode_errors"] += 1
        m.last_error = f"decode error: {type(exc).__name__}: {exc}"
        ev = self.decode_errors.report(m.opts["id"], frame, exc, mode=m.opts.get("mode", "c"))
        if ev is not None:
            self.log.warning("meter %s: frame not decodable (%s: %s); going on",
                             m.opts["id"], type(exc).__name__, exc)
            self.emit([ev])

    def _p1_readings(self, m: MeterState, tg: Any, rx: int) -> list[Reading]:
        from .p1_readings import p1_readings
        return p1_readings(tg, m.opts["id"], rx, self.bus, m.opts.get("obis_prefix", "1-0:"))

    def _next_push(self, m: MeterState) -> list[Reading]:
        """A console read of a mode D meter: the readings of its next telegram."""
        wait = min(READ_NOW_TIMEOUT_S, max(5.0, 2.5 * self.interval_s))
        with self._pushed:
            seen = self._push_count
            if not self._pushed.wait_for(lambda: self._push_count != seen, wait):
                raise RuntimeError(f"mode D meter {m.opts['id']} pushed nothing valid within "
                                   f"{wait:.0f} s ({m.last_error or 'no telegram'})")
            return list(self._push_readings)

    def _poll(self, m: MeterState, manual: bool = False) -> list[Reading] | None:
        """Read one meter and emit its readings; them, or None when it failed (counted,
        reported). ``manual``: a console read, which leaves a working meter's schedule
        alone and ends a failing meter's backoff when it succeeds."""
        mid = m.opts["id"]
        self._rx_log.clear()
        try:
            try:
                records = self._read_meter(m)
            except (ReadFailed, OSError):
                raise
            except Exception as exc:  # noqa: BLE001 - a codec bug: count it, keep polling
                self._decode_error(m, bytes(self._rx_log), exc)
                raise ReadFailed(kinds.READ_FAILED,
                                 f"decode error: {type(exc).__name__}: {exc}") from None
        except ReadFailed as exc:
            m.last_error = str(exc)
            if self.stopping.is_set():
                return None  # interrupted by shutdown: not the meter's fault
            m.stats["failures"] += 1
            if manual:
                self.log.warning("meter %s: %s (read from the console)", mid, exc)
            else:
                delay = m.backoff.fail(permanent=exc.kind == kinds.AUTH_FAILED)
                m.next_due = time.monotonic() + max(delay, 0.0)
                self.log.warning("meter %s: %s (next try in %.0f s)", mid, exc, delay)
            self.emit([Event(exc.kind, now_ms(), self.bus, mid, "warning",
                             {"reason": str(exc), "address": m.opts.get("address", ""),
                              "failures": m.stats["failures"]})])
            return None
        finally:
            self._reset_line()
        was_failing = m.backoff.failures > 0
        m.backoff.ok()
        if not manual or was_failing:
            m.next_due = time.monotonic() + self.interval_s
        self._succeeded(m, records)
        return records

    def _succeeded(self, m: MeterState, records: list[Reading]) -> None:
        m.stats["success"] += 1
        m.stats["readings"] += len(records)
        m.last_ok_ms = now_ms()
        m.last_error = None
        if records:
            self.emit(records)

    def _reset_line(self) -> None:
        if self.ser is not None:
            try:
                self.ser.baudrate = 300
            except (OSError, ValueError):
                pass

    # ------------------------------------------------------------------ protocol
    def _read_meter(self, m: MeterState) -> list[Reading]:
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

    def _to_readings(self, m: MeterState, sets: Any, rx: int) -> list[Reading]:
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

    def _readout(self, m: MeterState, dec: Any) -> list[Any]:
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
                    raise ReadFailed(kinds.READ_FAILED, "readout without end mark '!'")
                return iec.parse_data_sets(payload[:payload.rindex(b"!")])
            if isinstance(ev, iec.BadBlock):
                m.stats["bcc_errors"] += 1
                if attempt < self.retries:
                    m.stats["retries"] += 1
                    self._send(bytes([iec.NAK]))  # the meter repeats the block
                    continue
                raise ReadFailed(kinds.CRC_ERROR, f"readout failed its BCC check "
                                 f"{self.retries + 1} times ({ev.reason})")
        raise ReadFailed(kinds.CRC_ERROR, "readout failed its BCC check")

    def _programming_read(self, m: MeterState, dec: Any, password: str) -> list[Any]:
        from ..protocols import iec62056_21 as iec
        self._expect(m, dec, iec.Command, "password request P0")
        self._send(iec.command("P1", f"({password})"))
        ev = self._next(m, dec, "password acknowledgement")
        if not isinstance(ev, iec.Ack):
            m.stats["auth_failures"] += 1
            raise ReadFailed(kinds.AUTH_FAILED, "the meter refused the P1 password")
        sets = []
        try:
            for addr in m.opts.get("registers") or []:
                self._send(iec.command("R1", f"{addr}()"))
                ev = self._next(m, dec, f"register {addr}")
                if isinstance(ev, iec.BadBlock):
                    m.stats["bcc_errors"] += 1
                    raise ReadFailed(kinds.CRC_ERROR, f"register {addr}: {ev.reason}")
                if isinstance(ev, iec.DataBlock):
                    sets += iec.parse_data_sets(ev.payload)
        finally:
            self._send(iec.command("B0"))
        return sets

    def _expect(self, m: MeterState, dec: Any, cls: type, what: str) -> Any:
        ev = self._next(m, dec, what)
        if not isinstance(ev, cls):
            raise ReadFailed(kinds.READ_FAILED, f"expected {what}, got {type(ev).__name__}")
        return ev

    def _next(self, m: MeterState, dec: Any, what: str) -> Any:
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
                raise ReadFailed(kinds.READ_FAILED, "driver stopping")
            if time.monotonic() > deadline:
                m.stats["timeouts"] += 1
                raise ReadFailed(kinds.READ_FAILED,
                                 f"no {what} within {self.timeout_s:.1f} s")
            data = self.ser.read(max(1, self.ser.in_waiting))
            if data:
                if self.soft_parity:
                    m.stats["parity_errors"] += iec.parity_errors(data)
                if len(self._rx_log) < 64 * 1024:
                    self._rx_log += data
                dec.receive_data(data)

    def _send(self, data: bytes) -> None:
        from ..protocols.iec62056_21 import add_even_parity
        from .serialport import write_frame
        write_frame(self.ser, add_even_parity(data) if self.soft_parity else data, self.serial_opts)


DRIVER = Iec62056Driver

"""The push half of driver ``type: dlms`` (``mode: push``, HAN ports), as a mixin of
:class:`~gateway.drivers.dlms.DlmsDriver`: the port's bytes go to the one sans-I/O
:class:`~gateway.protocols.dlms.notification.PushDecoder`; its events become Readings or
counted, rate-limited events. Whatever a codec raises on a frame costs that frame only.

Replay guard: the GCM invocation counter of each system title must rise. The last one
taken is a durable per-meter cursor ``dlms.push_invocation_counter:<system title hex>``,
committed with the readings it let through; an older or equal one gives
``meter.replay_suspected`` and no readings. ``keys set`` restarts the guard (a re-keyed
meter counts from 0 again).
"""

from __future__ import annotations

import time
from typing import Any

from ..model import Event, now_ms
from .. import events as kinds

PUSH_IC_CURSOR = "dlms.push_invocation_counter"  # + ":" + system title: replay guard
EVENT_BURST = 3      # push error events of one kind per meter emitted before rate limiting
EVENT_EVERY_S = 60.0  # then at most one per this many seconds
HEX_MAX = 1024       # hex digits of a bad frame in its event


class PushListener:
    """Mixin of a listening :class:`~gateway.drivers.bus.BusDriver`: the base reads the
    port and calls :meth:`on_bytes`. Needs the driver's ``meters`` (DlmsMeter), ``options``,
    ``tz``, ``bus``, ``log``, ``emit`` and ``_cursor``."""

    meters: list[Any]
    options: Any
    _push_dec: Any = None  # the PushDecoder of the open port
    _crc_seen = 0          # its HDLC CRC failures already counted
    tz: str
    bus: str
    log: Any
    mode: str

    def _make_push_decoder(self) -> Any:
        """The sans-I/O decoder the push loop feeds (PushDecoder, the one the tests and the
        benchmark measure); one per listening session."""
        from ..protocols.dlms.notification import PushDecoder, PushParser
        for m in self.meters:
            if m.parser is None:
                bk = m.opts.get("block_key")
                m.parser = PushParser(bk, m.opts.get("auth_key") or bk, self.tz)
        return PushDecoder(route=self._push_route,
                           framing=str(self.options.get("framing", "hdlc")))

    def _push_route(self, system_title: bytes | None, src: Any) -> tuple[Any, Any]:
        m = self._push_meter(system_title, src)
        return m, m.parser

    def on_open(self) -> None:
        if self.mode == "push":
            self._push_dec = self._make_push_decoder()
            self._crc_seen = 0

    def on_bytes(self, data: bytes) -> None:
        """Bytes from the HAN port: every event they complete, each one on its own."""
        from ..protocols import hdlc
        dec = self._push_dec
        dec.receive_data(data)
        for _ in range(10_000):  # bounded: a read holds at most a few frames
            try:
                ev = dec.next_event()
            except Exception as exc:  # noqa: BLE001 - a codec bug costs a frame, not the bus
                self._codec_failed(self.meters[0], exc, data.hex().upper())
                reset = getattr(dec, "reset", None)
                if reset is not None:
                    reset()  # whatever it choked on is dropped, not met again
                break
            self._count_crc(dec)
            if ev is hdlc.NEED_DATA:
                break
            try:
                self._on_push(ev)
            except Exception as exc:  # noqa: BLE001 - one event, not the bus
                self.log.exception("push: event %r not handled", type(ev).__name__)
                self._codec_failed(self.meters[0], exc, data.hex().upper())

    def _count_crc(self, dec: Any) -> None:
        """The HDLC frames' CRC failures so far, counted on the first meter."""
        frames = getattr(dec, "frames", None)
        crc = getattr(getattr(frames, "stats", None), "crc_errors", self._crc_seen)
        if crc != self._crc_seen:
            self.meters[0].stats.count("crc_errors", crc - self._crc_seen)
            self._crc_seen = crc

    def _on_push(self, ev: Any) -> None:
        """One event of the push decoder: readings, or a counted, rate-limited event."""
        from ..protocols.dlms.notification import PushError, notification_values, to_readings
        from .p1_readings import p1_readings
        m = next((x for x in self.meters if x is ev.route), self.meters[0])
        if isinstance(ev, PushError):
            if ev.kind == kinds.DECRYPT_FAILED:
                m.stats.count("decrypt_failures")
            elif ev.kind == kinds.DECODE_ERROR:
                m.stats.count("decode_errors")
            elif ev.kind == kinds.FRAME_ERROR:
                m.stats.count("frame_errors")
            self._push_error(m, ev.kind, ev.reason, ev.frame_hex)
            return
        rx = now_ms()
        n = ev.notification
        try:
            if n.telegram is not None:  # P1 text inside glo-ciphering: the P1 mapping
                readings = p1_readings(n.telegram, m.id, rx, self.bus)
            else:
                values = notification_values(n, m.opts.get("scalers") or {},
                                             tuple(m.opts.get("positional") or ()))
                readings = to_readings(values, m.id, n.time_ms, rx, self.bus)
        except Exception as exc:  # noqa: BLE001 - DlmsError for a self-contradicting body
            self._codec_failed(m, exc, ev.apdu.hex().upper())
            return
        cursors = {}
        if n.ciphered and n.system_title is not None and n.invocation_counter is not None:
            name = f"{PUSH_IC_CURSOR}:{n.system_title.hex().upper()}"
            last = m.push_ic.get(name)
            if last is None:
                last = self._cursor(m.id, name, None)
            if last is not None and n.invocation_counter <= int(last):
                m.stats.count("replays")
                self._push_error(m, kinds.REPLAY_SUSPECTED,
                                 f"invocation counter {n.invocation_counter} of system title "
                                 f"{n.system_title.hex().upper()} is not above the last "
                                 f"accepted {last}: readings dropped", ev.apdu.hex().upper())
                return
            m.push_ic[name] = n.invocation_counter
            cursors[(m.id, name)] = n.invocation_counter
        m.stats.count("notifications")
        m.stats.ok()
        m.stats.last_ok_ms = rx
        m.stats.count("readings", len(readings))
        if readings or cursors:
            self.emit(readings, cursors)
        if readings:
            m.last_readings = readings

    def _codec_failed(self, m: Any, exc: BaseException, frame_hex: str) -> None:
        m.stats.count("decode_errors")
        self._push_error(m, kinds.DECODE_ERROR, f"{type(exc).__name__}: {exc}"[:300], frame_hex)

    def _push_meter(self, system_title: bytes | None, src: Any) -> Any:
        for m in self.meters:
            if system_title is not None and m.opts.get("system_title") == system_title:
                return m
        for m in self.meters:
            if m.opts.get("physical") is not None and getattr(src, "lower", None) == \
                    m.opts.get("physical"):
                return m
        return self.meters[0]

    def _push_error(self, m: Any, kind: str, reason: str, frame_hex: str = "") -> None:
        """Counted always; logged and emitted as an event at most EVENT_BURST times, then
        once per EVENT_EVERY_S per meter and kind (a HAN port pushes every few seconds, an
        attacker faster), with how many were held back."""
        m.stats.last_error = reason
        m.stats.failures += 1
        gate = m.event_gate.setdefault(kind, [0, 0.0, 0])  # [seen, last emitted at, held back]
        gate[0] += 1
        now = time.monotonic()
        if gate[0] > EVENT_BURST and now - gate[1] < EVENT_EVERY_S:
            gate[2] += 1
            return
        detail: dict[str, Any] = {"reason": reason, "failures": m.stats.failures,
                                  "count": gate[0], "suppressed": gate[2]}
        if frame_hex:
            detail["frame"] = frame_hex[:HEX_MAX] + ("..." if len(frame_hex) > HEX_MAX else "")
        gate[1], gate[2] = now, 0
        self.log.warning("meter %s: %s (%s, %d so far)", m.id, reason, kind, gate[0])
        self.emit([Event(kind, now_ms(), self.bus, m.id, "warning", detail)])

    def _reset_replay_guard(self, m: Any) -> None:
        """push: a new key starts the meter's invocation counters afresh (a re-keyed meter
        counts from 0 again), so the guard of every system title known for it restarts."""
        if self.mode != "push":
            return
        names = set(m.push_ic)
        if m.opts.get("system_title"):
            names.add(f"{PUSH_IC_CURSOR}:{bytes(m.opts['system_title']).hex().upper()}")
        if names:
            m.push_ic = {n: -1 for n in names}
            self.emit([], {(m.id, n): -1 for n in names})

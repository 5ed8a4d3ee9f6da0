"""The edge stage between the drivers and the store.

Drivers hand their records to :meth:`EdgePipeline.submit` (through ``Runtime.submit``). For
each batch the pipeline flags readings taken on an untrusted clock, computes the deltas of
cumulative registers, decides what report-by-exception forwards, updates the diagnostics,
and hands everything to the store in ONE ``Store.submit(records, cursors)``: the state of
every register (the store's cursors table, ``(meter_id, "edge/reg/<quantity>")``) commits in
the same transaction as the readings it produced, so a crash never double-counts or skips a
delta. State is cached in memory; the durable truth is the store, read on first sight of a
register (and again after a refused commit).

A background thread samples the clock every few seconds (jumps, the moment NTP syncs) and
publishes a diagnostics snapshot every ``edge.diag_interval_s`` (``Diag`` records on
``up/diag``, the latest table kept in the cursors for ``gateway diag``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping

from ..config import EdgeConfig
from ..health import HealthSnapshot
from ..model import (QUALITY_CLOCK_UNSYNCED, QUALITY_ESTIMATED, QUALITY_HISTORIC,
                     QUALITY_METER_TIME_SUSPECT,
                     QUALITY_METER_ERROR, QUALITY_SIMULATED, Event, Reading, Record, to_decimal)
from . import deltas as dl
from .clock import Clock
from .diagnostics import GATEWAY, Diagnostics
from .gateway_row import boot_id, boot_reason, gateway_metrics
from .. import events as kinds

log = logging.getLogger("gateway.edge")

CURSOR_REG = "edge/reg/"  # + quantity: RegisterState of a cumulative register
CURSOR_INST = "edge/inst/"  # + quantity: InstantState (report by exception)
CURSOR_RUN = "edge/run"  # (GATEWAY, ...): boot marker, for the boot reason
CLOCK_SAMPLE_S = 5.0
MAX_PENDING = 50_000  # readings remembered while the clock is unsynchronised (~15 MB)

Key = tuple[str, str]  # (meter_id, quantity)


class EdgePipeline:
    """Thread-safe: drivers on their own threads call :meth:`submit` concurrently."""

    def __init__(self, cfg: EdgeConfig, store: Any, *, clock: Clock | None = None,
                 source: str = "edge") -> None:
        self.cfg = cfg
        self.store = store
        self.source = source
        self.clock = clock or Clock(jump_threshold_ms=cfg.clock.jump_threshold_ms,
                                    assume_synced=cfg.clock.assume_synced, source=source)
        self.diag = Diagnostics(cfg.diagnostics, source=source)
        self.interval_ms = cfg.interval_s * 1000
        rbe = cfg.report_by_exception
        self.rbe = rbe.enabled
        self.rbe_every_ms = rbe.every_n_intervals * self.interval_ms
        self.deadband = Fraction(str(rbe.deadband))
        self.skip_zero = rbe.enabled and rbe.skip_zero_deltas
        self._lock = threading.RLock()
        self._regs: dict[Key, dl.RegisterState | None] = {}
        self._insts: dict[Key, dl.InstantState | None] = {}
        self._epoch_of: dict[Key, int] = {}  # clock epoch of a register's last gateway stamp
        self._modulus: dict[tuple[str, str, str, int], dl.Modulus | None] = {}
        self._pending: list[tuple[Key, Reading, int]] = []  # unsynced reads: (key, r, mono)
        self.pending_dropped = 0
        self.flagged = 0  # readings flagged clock_unsynced
        self.counts = {"readings_in": 0, "readings_forwarded": 0, "readings_suppressed": 0,
                       "deltas": 0, "estimated": 0, "gaps": 0, "resets": 0, "rollovers": 0,
                       "refused_batches": 0, "zero_deltas_skipped": 0, "meter_time_suspect": 0}
        self._stop = threading.Event()
        # More figures for the gateway's row (e.g. the console audit chain head), each a
        # callable returning a mapping; one that fails is skipped, never the snapshot.
        self.gateway_extras: list[Callable[[], Mapping[str, Any]]] = []
        self._thread: threading.Thread | None = None
        # the gateway's health snapshot (drivers' meter stats, uplink state); None: no
        # drivers or uplink to report (a bench, a test of the edge alone)
        self.health: Callable[[], HealthSnapshot] | None = None
        self.started_mono = time.monotonic()
        self.boot_reason = "unknown"

    # ------------------------------------------------------------------ the sink
    def submit(self, records: Iterable[Record],
               cursors: Mapping[tuple[str, str], Any] | None = None) -> "Future[list[int]]":
        with self._lock:
            readings: list[Record] = []
            others: list[Record] = []
            cur: dict[tuple[str, str], Any] = {}
            self._sample_clock(readings, others, cur)
            now = self.clock.wall()
            read_meters: dict[str, tuple[str, int]] = {}
            for r in records:
                if type(r) is Reading:
                    self._reading(r, now, readings, others, cur)
                    if not dl.is_delta(r.quantity):
                        read_meters[r.meter_id] = (r.bus, r.rx_ts_ms)
                elif type(r) is Event:
                    others.append(r)
                    others += self.diag.event(r, now)
                else:
                    others.append(r)
            for mid, (bus, ts) in read_meters.items():
                others += self.diag.read_ok(mid, bus, ts, now)
            if cursors:
                cur.update(cursors)  # a driver's own cursors commit with its records too
            # Readings first, then events: consecutive rows of one topic share a message.
            fut = self.store.submit(readings + others, cur)
        fut.add_done_callback(self._check_stored)
        return fut

    def _meter_time_suspect(self, r: Reading) -> bool:
        """A current value stamped far from our (synchronised) clock. Stored values carry
        their capture time, which may rightly be old."""
        window_ms = self.cfg.clock.meter_time_window_s * 1000
        return bool(window_ms and r.meter_ts_ms is not None
                    and QUALITY_HISTORIC not in r.quality
                    and QUALITY_METER_TIME_SUSPECT not in r.quality
                    and abs(r.meter_ts_ms - r.rx_ts_ms) > window_ms)

    def _check_stored(self, fut: "Future[list[int]]") -> None:
        if fut.exception() is not None:
            # The state in memory ran ahead of the store: go back to the durable truth.
            with self._lock:
                self.counts["refused_batches"] += 1
                self._regs.clear()
                self._insts.clear()

    # ------------------------------------------------------------------ readings
    def _reading(self, r: Reading, now: int, readings: list[Record], others: list[Record],
                 cur: dict[tuple[str, str], Any]) -> None:
        self.counts["readings_in"] += 1
        if dl.is_delta(r.quantity):  # derived already (a replayed batch): pass through
            readings.append(r)
            return
        if not self.clock.synced and QUALITY_CLOCK_UNSYNCED not in r.quality:
            r = replace(r, quality=r.quality + (QUALITY_CLOCK_UNSYNCED,))
            self.flagged += 1
        elif self._meter_time_suspect(r):
            r = replace(r, quality=r.quality + (QUALITY_METER_TIME_SUSPECT,))
            self.counts["meter_time_suspect"] += 1
        others += self.diag.reading(r, self.clock.synced, now)
        key = (r.meter_id, r.quantity)
        # A stored value with no date of its own (an M-Bus storage number whose telegram has
        # no date record) cannot be placed on a time line: no deltas, no stuck alarms.
        if dl.is_cumulative(r.quantity, r.unit, self.cfg.registers) \
                and QUALITY_METER_ERROR not in r.quality \
                and (r.meter_ts_ms is not None or QUALITY_HISTORIC not in r.quality):
            if r.meter_ts_ms is None and not self.clock.synced:
                # Stamped by a clock we know is wrong: keep it by its monotonic time and
                # compute its deltas once the clock syncs. The reading itself is stored now.
                if len(self._pending) >= MAX_PENDING:
                    self._pending.pop(0)
                    self.pending_dropped += 1
                self._pending.append((key, r, self.clock.mono_of(r.rx_ts_ms)))
                self._forward(r, readings)
                return
            if r.meter_ts_ms is not None:
                t, estimated = r.meter_ts_ms, False
            else:
                t = r.rx_ts_ms
                last_epoch = self._epoch_of.get(key)
                estimated = last_epoch is not None and last_epoch != self.clock.epoch
                self._epoch_of[key] = self.clock.epoch
            self._register(key, r, t, estimated, r.rx_ts_ms, readings, others, cur,
                           forward=True)
        elif self.rbe:
            self._instant(key, r, now, readings, cur)
        else:
            self._forward(r, readings)

    def _forward(self, r: Reading, readings: list[Record]) -> None:
        self.counts["readings_forwarded"] += 1
        readings.append(r)

    def _register(self, key: Key, r: Reading, t: int, estimated: bool, rx: int,
                  readings: list[Record], others: list[Record],
                  cur: dict[tuple[str, str], Any], *, forward: bool) -> None:
        st = self._reg_state(key)
        res = dl.step(st, r.mantissa, r.exponent, t,
                      dl.Settings(self.interval_ms, self.cfg.gap_intervals,
                                  self._modulus_for(r), estimated))
        new = res.state
        if forward:
            send = (not self.rbe or res.status in (dl.FIRST, dl.RESET, dl.OUT_OF_ORDER)
                    or (res.status == dl.OK and dl.forward_due(st, t, self.rbe_every_ms)))
            if send:
                self._forward(r, readings)
                if new is not None:  # new is step()'s own fresh object
                    new.fwd_t, new.fwd_m, new.fwd_e = t, r.mantissa, r.exponent
            else:
                self.counts["readings_suppressed"] += 1
        # A replayed read (forward=False) was placed by its corrected monotonic time.
        keep = (QUALITY_SIMULATED, QUALITY_CLOCK_UNSYNCED) if forward else (QUALITY_SIMULATED,)
        flags = tuple(f for f in r.quality if f in keep)
        for iv in res.intervals:
            if self.skip_zero and not iv.mantissa:
                self.counts["zero_deltas_skipped"] += 1
                continue
            q = ((QUALITY_ESTIMATED,) if iv.estimated else ()) + flags
            readings.append(Reading(r.meter_id, dl.delta_quantity(r.quantity, iv.span_ms),
                                    iv.mantissa, iv.exponent, r.unit, iv.end_ms, rx, q, r.bus))
            self.counts["deltas"] += 1
            self.counts["estimated"] += iv.estimated
        if res.gap is not None:
            g = res.gap
            self.counts["gaps"] += 1
            self.diag.gap(r.meter_id, g.missing_intervals)
            others.append(Event(kinds.GAP, self.clock.wall(), self.source, r.meter_id,
                                "warning", {
                                    "register": r.quantity, "from_ms": g.from_ms,
                                    "to_ms": g.to_ms, "missing_intervals": g.missing_intervals,
                                    "consumption": str(to_decimal(g.mantissa, g.exponent)),
                                    "unit": r.unit, "interval_s": self.cfg.interval_s}))
        if res.reset is not None:
            x = res.reset
            self.counts["resets"] += 1
            others.append(Event(kinds.REGISTER_RESET, self.clock.wall(), self.source,
                                r.meter_id, "warning", {
                                    "register": r.quantity, "unit": r.unit,
                                    "old": str(to_decimal(x.old_m, x.old_e)),
                                    "new": str(to_decimal(x.new_m, x.new_e)),
                                    "old_ts_ms": x.old_t, "new_ts_ms": x.new_t,
                                    "series": new.series if new else None,
                                    "what": "the register went down without a rollover: "
                                            "meter reset or replaced; a new delta series "
                                            "starts"}))
        if res.rollovers:
            self.counts["rollovers"] += res.rollovers
            self.diag.rollover(r.meter_id)
        basis = new if new is not None else st
        if basis is not None:
            others += self.diag.register(r.meter_id, r.quantity, r.unit, basis, res.status,
                                         res.delta, self.clock.wall())
        if new is not None:
            self._regs[key] = new
            cur[(key[0], CURSOR_REG + key[1])] = new.to_obj()

    def _instant(self, key: Key, r: Reading, now: int, readings: list[Record],
                 cur: dict[tuple[str, str], Any]) -> None:
        """Report by exception for a value that is not cumulative (power, flow, voltage)."""
        st = self._inst_state(key)
        t = r.meter_ts_ms if r.meter_ts_ms is not None else r.rx_ts_ms
        send = (st is None or r.quality != st.quality or t // self.rbe_every_ms
                > st.t // self.rbe_every_ms
                or dl.deadband_exceeded(st.m, st.e, r.mantissa, r.exponent, self.deadband))
        if not send:
            self.counts["readings_suppressed"] += 1
            return
        self._forward(r, readings)
        new = dl.InstantState(r.mantissa, r.exponent, t, r.quality)
        self._insts[key] = new
        cur[(key[0], CURSOR_INST + key[1])] = new.to_obj()

    def _reg_state(self, key: Key) -> dl.RegisterState | None:
        if key in self._regs:
            return self._regs[key]
        st = None
        raw = self.store.get_cursor(key[0], CURSOR_REG + key[1])
        if raw is not None:
            try:
                st = dl.RegisterState.from_obj(raw)
            except (ValueError, TypeError):
                log.warning("edge: unreadable state of %s %s; starting a new series", *key)
        self._regs[key] = st
        return st

    def _inst_state(self, key: Key) -> dl.InstantState | None:
        if key in self._insts:
            return self._insts[key]
        st = None
        raw = self.store.get_cursor(key[0], CURSOR_INST + key[1])
        if raw is not None:
            try:
                st = dl.InstantState.from_obj(raw)
            except (ValueError, TypeError):
                st = None
        self._insts[key] = st
        return st

    def _modulus_for(self, r: Reading) -> dl.Modulus | None:
        k = (r.bus, r.meter_id, r.quantity, r.exponent)
        if k in self._modulus:
            return self._modulus[k]
        mod = None
        for rule in self.cfg.rollover:
            if (dl.matches(r.quantity, [rule.register])
                    and (rule.bus is None or rule.bus == r.bus)
                    and (rule.meter is None or dl.matches(r.meter_id, [rule.meter]))):
                mod = dl.Modulus.of(digits=rule.digits, bits=rule.bits, wrap_at=rule.wrap_at,
                                    exponent=r.exponent)
                break
        if len(self._modulus) < 100_000:
            self._modulus[k] = mod
        return mod

    # ------------------------------------------------------------------ clock
    def _sample_clock(self, readings: list[Record], others: list[Record],
                      cur: dict[tuple[str, str], Any]) -> None:
        was_synced = self.clock.synced
        events = self.clock.sample()
        for ev in events:
            if ev.kind == kinds.CLOCK_SYNCED:
                ev.detail["readings_flagged"] = self.flagged
        others += events
        if self.clock.synced and not was_synced:
            self.flagged = 0
            self._replay_pending(readings, others, cur)

    def _replay_pending(self, readings: list[Record], others: list[Record],
                        cur: dict[tuple[str, str], Any]) -> None:
        """The clock just synced: place the reads taken before by their monotonic time and
        compute their deltas now (the readings themselves were stored, flagged)."""
        pending, self._pending = self._pending, []
        for key, r, mono in pending:
            t = self.clock.trusted(mono)
            self._epoch_of[key] = self.clock.epoch
            self._register(key, r, t, False, t, readings, others, cur, forward=False)
        if pending:
            log.info("edge: clock synced; deltas of %d earlier readings computed", len(pending))

    def sample_clock(self) -> "Future[list[int]] | None":
        """Sample the clock now (the background thread does this every few seconds)."""
        with self._lock:
            readings: list[Record] = []
            others: list[Record] = []
            cur: dict[tuple[str, str], Any] = {}
            self._sample_clock(readings, others, cur)
            if not (readings or others or cur):
                return None
            fut = self.store.submit(readings + others, cur)
        fut.add_done_callback(self._check_stored)
        return fut

    # ------------------------------------------------------------------ diagnostics
    def publish_diagnostics(self) -> "Future[list[int]]":
        """One snapshot now: rule events, Diag records and the latest table, one commit."""
        snap = self._snapshot()  # outside the lock: a driver may take its time
        stats: dict[str, dict[str, Any]] = {}
        for bus in (snap.buses.values() if snap else ()):
            stats.update(bus.meters)
        with self._lock:
            now = self.clock.wall()
            events = self.diag.tick(now, stats)
            g = gateway_metrics(store=self.store, uplink=snap.uplink if snap else None,
                                started_mono=self.started_mono, boot=self.boot_reason,
                                clock=self.clock.status(), edge=self.edge_metrics(), now=now)
            g.update(self._extras())
            events += self.diag.gateway_rules(g, now)
            records, cur = self.diag.snapshot(now, g)
            return self.store.submit([*events, *records], cur)

    def _snapshot(self) -> HealthSnapshot | None:
        if self.health is None:
            return None
        try:
            return self.health()
        except Exception:  # noqa: BLE001 - a broken stage must not stop the diagnostics
            log.exception("edge: the health snapshot failed")
            return None

    def _extras(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fn in list(self.gateway_extras):
            try:
                out.update(fn())
            except Exception:  # noqa: BLE001 - an extra figure must not stop the diagnostics
                log.exception("edge: a gateway figure failed")
        return out

    def live_table(self) -> dict[str, Any]:
        """The ``gateway diag`` table, live, in the same shape as subcommands.diag.read_table
        (for the control socket: the console can serve it without waiting for a snapshot)."""
        snap = self._snapshot()
        with self._lock:
            now = self.clock.wall()
            g = gateway_metrics(store=self.store, uplink=snap.uplink if snap else None,
                                started_mono=self.started_mono, boot=self.boot_reason,
                                clock=self.clock.status(), edge=self.edge_metrics(), now=now)
            g.update(self._extras())
            _, cur = self.diag.snapshot(now, g)
            regs: dict[str, dict[str, Any]] = {}
            for (mid, q), st in self._regs.items():
                if st is not None:
                    regs.setdefault(mid, {})[q] = {
                        "value": str(st.value), "read_ms": st.t, "series": st.series,
                        "unchanged_since_ms": st.changed_t}
        return {"snapshot_ms": now, "gateway": cur[(GATEWAY, "edge/diag")][1],
                "meters": {m: {**v[1], "snapshot_ms": now} for (m, _), v in cur.items()
                           if m != GATEWAY},
                "registers": regs, "run": getattr(self, "_marker", None)}

    def edge_metrics(self) -> dict[str, Any]:
        return {**self.counts, "pending_unsynced": len(self._pending),
                "pending_dropped": self.pending_dropped, "registers": len(self._regs)}

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, health: Callable[[], HealthSnapshot] | None = None) -> None:
        """Record why we started (boot marker in the store) and start the background thread.

        ``health`` gives the gateway's snapshot (drivers' meter stats, uplink state) at each
        diagnostics snapshot; the edge never reaches into the drivers or the uplink."""
        self.health = health
        prev = self.store.get_cursor(GATEWAY, CURSOR_RUN)
        bid = boot_id()
        self.boot_reason = boot_reason(prev if isinstance(prev, dict) else None, bid)
        now = self.clock.wall()
        marker = {"boot_id": bid, "pid": os.getpid(), "started_ms": now, "clean_stop": False}
        detail: dict[str, Any] = {"reason": self.boot_reason, "clock": self.clock.status()}
        if isinstance(prev, dict):
            detail["previous_started_ms"] = prev.get("started_ms")
        sev = "warning" if self.boot_reason in ("crash", "power_loss", "watchdog") else "info"
        log.info("edge: boot reason %s; clock %s", self.boot_reason,
                 "synchronised" if self.clock.synced else "NOT synchronised (readings are "
                 "flagged clock_unsynced until it is)")
        self.store.submit([Event(kinds.BOOT, now, self.source, None, sev, detail)],
                          {(GATEWAY, CURSOR_RUN): marker})
        self._marker = marker
        self._thread = threading.Thread(target=self._run, name="edge", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, publish a last snapshot and mark the stop as clean."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self.publish_diagnostics()
        except Exception:
            log.exception("edge: last diagnostics snapshot failed")
        marker = {**getattr(self, "_marker", {}), "clean_stop": True,
                  "stopped_ms": self.clock.wall()}
        self.store.submit([], {(GATEWAY, CURSOR_RUN): marker})

    def _run(self) -> None:
        interval = float(self.cfg.diag_interval_s)
        next_diag = time.monotonic() + interval
        while not self._stop.wait(min(CLOCK_SAMPLE_S, max(0.0, next_diag - time.monotonic()))):
            try:
                self.sample_clock()
                if time.monotonic() >= next_diag:
                    next_diag = max(next_diag + interval, time.monotonic() + interval / 2)
                    self.publish_diagnostics()
            except Exception:  # the edge thread must survive its own bugs
                log.exception("edge: background tick failed")

"""Health diagnostics a grid operator can act on, computed from what flows through the edge.

Per meter the figures come from the records themselves (readings, and the driver events
``meter.read_failed``, ``meter.crc_error``, ``meter.decrypt_failed``, ``meter.auth_failed``,
``meter.no_key``, ``meter.status`` with their detail: ``rssi``/``rssi_dbm``, ``lqi``,
``retries``, ``latency_ms``, status flags), from the delta engine (gaps, resets, stuck
registers, leaks) and, when a driver has them, from its ``meter_stats()``. Per gateway they
come from the store, the uplink and the board (/proc, /sys): edge/gateway_row.py.

Rules have thresholds from the config. A rule that starts to hold raises ONE event
``diag.<rule>`` saying what, which meter, since when and the evidence; when it stops holding,
``diag.<rule>.cleared`` follows. Snapshots of all figures are published periodically as
:class:`~gateway.model.Diag` records (``up/diag``) and kept as the latest table in the store's
cursors, which ``gateway diag`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Mapping

from ..config import DiagThresholds
from ..model import QUALITY_HISTORIC, QUALITY_METER_ERROR, Diag, Event, Reading, to_decimal
from .deltas import VOLUME_UNITS, RegisterState, matches
from .. import events as kinds

# What each failure event counts as: written once, beside the kind, in gateway/events.py.
FAILURE_KINDS = {name: k.counts_as for name, k in kinds.CATALOGUE.items() if k.counts_as}
# Flags a meter reports (meter.status detail, or quality flags) that are alarms by themselves.
FLAG_RULES = {"tamper": "tamper", "battery_low": "battery_low", "leak": "leak_reported",
              "reverse_flow": "reverse_flow", "burst": "leak_reported"}
FLOW_UNITS = frozenset({"m3/h", "m³/h", "l/h", "L/h", "l/s", "m3/s"})
GATEWAY = ""  # meter_id of the gateway's own cursors
CURSOR_DIAG = "edge/diag"


@dataclass
class Running:
    """min / mean / last of a signal level, without keeping the samples."""

    n: int = 0
    total: float = 0.0
    min: float | None = None
    last: float | None = None

    def add(self, v: float) -> None:
        self.n += 1
        self.total += v
        self.min = v if self.min is None else min(self.min, v)
        self.last = v

    @property
    def mean(self) -> float | None:
        return round(self.total / self.n, 1) if self.n else None

    def as_dict(self) -> dict[str, Any] | None:
        if not self.n:
            return None
        return {"min": self.min, "mean": self.mean, "last": self.last, "n": self.n}


@dataclass
class MeterHealth:
    meter_id: str
    bus: str = ""
    first_seen_ms: int | None = None
    last_seen_ms: int | None = None
    reads_ok: int = 0
    reads_failed: int = 0
    consecutive_failures: int = 0
    failing_since_ms: int | None = None
    last_error: str | None = None
    retries: int = 0
    latency_ms: Running = field(default_factory=Running)
    crc_errors: int = 0
    decrypt_failures: int = 0
    auth_failures: int = 0
    window_crc: int = 0  # in the current diagnostics interval
    window_decrypt: int = 0
    window_invalid: int = 0
    window_valid: int = 0
    driver_silent: bool = False  # the driver said so; until the meter is read again
    missed_readings: int = 0  # expected readings that did not come (the driver's meter.silent)
    invalid_values: int = 0   # values the meter sent as "invalid" (meter.invalid_value)
    units: dict[str, str] = field(default_factory=dict)  # cumulative register -> unit
    rssi: Running = field(default_factory=Running)
    lqi: Running = field(default_factory=Running)
    clock_drift_ms: int | None = None
    gaps: int = 0
    missing_intervals: int = 0
    resets: int = 0
    rollovers: int = 0
    out_of_order: int = 0
    duplicates: int = 0
    flags: dict[str, Any] = field(default_factory=dict)
    stuck: dict[str, int] = field(default_factory=dict)  # register -> unchanged since
    leak_since_ms: int | None = None
    reverse: dict[str, int] = field(default_factory=dict)  # register -> since
    driver: dict[str, Any] = field(default_factory=dict)  # the driver's own meter_stats()

    @property
    def attempts(self) -> int:
        return self.reads_ok + self.reads_failed

    @property
    def success_ratio(self) -> float | None:
        return round(self.reads_ok / self.attempts, 4) if self.attempts else None

    def metrics(self) -> dict[str, Any]:
        m: dict[str, Any] = {
            "bus": self.bus, "last_seen_ms": self.last_seen_ms, "reads_ok": self.reads_ok,
            "reads_failed": self.reads_failed, "success_ratio": self.success_ratio,
            "consecutive_failures": self.consecutive_failures,
            "failing_since_ms": self.failing_since_ms, "last_error": self.last_error,
            "retries": self.retries, "latency_ms": self.latency_ms.as_dict(),
            "crc_errors": self.crc_errors, "decrypt_failures": self.decrypt_failures,
            "auth_failures": self.auth_failures, "rssi_dbm": self.rssi.as_dict(),
            "lqi": self.lqi.as_dict(), "clock_drift_ms": self.clock_drift_ms, "gaps": self.gaps,
            "missing_intervals": self.missing_intervals, "resets": self.resets,
            "rollovers": self.rollovers, "out_of_order": self.out_of_order,
            "duplicates": self.duplicates, "flags": dict(self.flags),
            "stuck_registers": dict(self.stuck), "leak_since_ms": self.leak_since_ms,
            "reverse_flow": dict(self.reverse), "missed_readings": self.missed_readings,
            "invalid_values": self.invalid_values, "units": dict(self.units),
        }
        if self.driver:
            m["driver"] = dict(self.driver)
        return m


class Alarms:
    """Edge-triggered rule states: one event when a rule starts to hold, one when it stops.

    A rule name may carry a qualifier after a colon (``stuck_register:1-0:1.8.0``): each
    register has its own state, the event kind is the part before the colon.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.active: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}

    def set(self, meter_id: str | None, rule: str, holds: bool, now: int, *, what: str = "",
            evidence: Mapping[str, Any] | None = None, since_ms: int | None = None,
            threshold: Any = None, severity: str = "warning") -> Event | None:
        key = (meter_id or GATEWAY, rule)
        cur = self.active.get(key)
        if holds and cur is None:
            since = since_ms if since_ms is not None else now
            detail = {"what": what, "since_ms": since, "evidence": dict(evidence or {}),
                      "threshold": threshold}
            self.active[key] = (since, detail)
            return Event(f"diag.{rule.partition(':')[0]}", now, self.source, meter_id, severity,
                         detail)
        if not holds and cur is not None:
            del self.active[key]
            return Event(f"diag.{rule.partition(':')[0]}.cleared", now, self.source, meter_id,
                         "info",
                         {"since_ms": cur[0], "what": cur[1]["what"],
                          "evidence": dict(evidence or {})})
        return None

    def of(self, meter_id: str | None) -> dict[str, int]:
        """Active rules of a meter (or of the gateway): rule -> since_ms."""
        key = meter_id or GATEWAY
        return {r: v[0] for (m, r), v in self.active.items() if m == key}


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
        return None
    return float(v)


def _quality_value(quality: Iterable[str], name: str) -> float | None:
    """A level carried as a quality flag, e.g. ``rssi=-71``."""
    for q in quality:
        if q.startswith(name + "=") or q.startswith(name + ":"):
            try:
                return float(q[len(name) + 1:])
            except ValueError:
                return None
    return None


class Diagnostics:
    """Per-meter and gateway health; fed under the pipeline's lock."""

    def __init__(self, th: DiagThresholds, *, source: str = "edge") -> None:
        self.th = th
        self.alarms = Alarms(source)
        self.meters: dict[str, MeterHealth] = {}
        self.events_seen: dict[str, int] = {}

    def meter(self, meter_id: str, bus: str = "") -> MeterHealth:
        h = self.meters.get(meter_id)
        if h is None:
            h = self.meters[meter_id] = MeterHealth(meter_id, bus)
        elif bus and not h.bus:
            h.bus = bus
        return h

    # ----------------------------------------------------------------- observations
    def read_ok(self, meter_id: str, bus: str, ts_ms: int, now: int) -> list[Event]:
        """One successful read of a meter (a batch of its readings)."""
        h = self.meter(meter_id, bus)
        h.reads_ok += 1
        h.first_seen_ms = h.first_seen_ms or ts_ms
        h.last_seen_ms = max(h.last_seen_ms or ts_ms, ts_ms)
        h.consecutive_failures = 0
        h.failing_since_ms = None
        h.driver_silent = False
        out = [self.alarms.set(meter_id, "read_failures", False, now,
                               evidence={"last_ok_ms": ts_ms}),
               self.alarms.set(meter_id, "silent", False, now, evidence={"last_seen_ms": ts_ms})]
        return [e for e in out if e]

    def reading(self, r: Reading, clock_synced: bool, now: int) -> list[Event]:
        h = self.meter(r.meter_id, r.bus)
        h.window_valid += 1
        out: list[Event | None] = []
        for name, run in (("rssi", h.rssi), ("lqi", h.lqi)):
            v = _quality_value(r.quality, name)
            if v is not None:
                run.add(v)
        if QUALITY_METER_ERROR in r.quality:
            h.flags["meter_error"] = True
        if r.meter_ts_ms is not None and clock_synced and QUALITY_HISTORIC not in r.quality:
            h.clock_drift_ms = r.meter_ts_ms - r.rx_ts_ms
            limit = int(self.th.max_clock_drift_s * 1000)
            holds = abs(h.clock_drift_ms) > limit
            out.append(self.alarms.set(
                r.meter_id, "clock_drift", holds, now,
                what=f"meter clock is {h.clock_drift_ms / 1000:+.0f} s off the gateway clock",
                evidence={"meter_ts_ms": r.meter_ts_ms, "rx_ts_ms": r.rx_ts_ms,
                          "drift_ms": h.clock_drift_ms}, threshold=self.th.max_clock_drift_s))
        if r.unit in FLOW_UNITS and r.mantissa < 0:
            out.append(self._reverse(h, r.quantity, True, now, r.rx_ts_ms,
                                     {"value": str(r.value), "unit": r.unit}))
        return [e for e in out if e]

    def event(self, ev: Event, now: int) -> list[Event]:
        """A driver event; failures count as failed reads."""
        self.events_seen[ev.kind] = self.events_seen.get(ev.kind, 0) + 1
        if ev.meter_id is None:
            return []
        h = self.meter(ev.meter_id, ev.source)
        d = ev.detail if isinstance(ev.detail, dict) else {}
        for key, run in (("rssi", h.rssi), ("rssi_dbm", h.rssi), ("lqi", h.lqi),
                         ("latency_ms", h.latency_ms)):
            v = _num(d.get(key))
            if v is not None:
                run.add(v)
        retries = d.get("retries")
        if isinstance(retries, int) and not isinstance(retries, bool):
            h.retries += retries
        counter = FAILURE_KINDS.get(ev.kind)
        if counter is not None:
            out = self._failure(h, ev, d, counter, now)
        elif ev.kind == kinds.SILENT:
            out = [self._driver_silent(h, ev, d, now)]
        elif ev.kind == kinds.INVALID_VALUE:
            out = [self._invalid_value(h, d, now)]
        elif ev.kind == kinds.STATUS:
            out = self._status(h, ev, d, now)
        else:
            out = []
        return [e for e in out if e]

    def _failure(self, h: MeterHealth, ev: Event, d: Mapping[str, Any], counter: str,
                 now: int) -> list[Event | None]:
        h.reads_failed += 1
        h.consecutive_failures += 1
        h.failing_since_ms = h.failing_since_ms or ev.ts_ms
        h.last_error = str(d.get("reason") or ev.kind)[:200]
        if counter == "crc_errors":
            h.crc_errors += 1
            h.window_crc += 1
        elif counter == "decrypt_failures":
            h.decrypt_failures += 1
            h.window_decrypt += 1
        elif counter == "auth_failures":
            h.auth_failures += 1
            h.window_decrypt += 1
        holds = h.consecutive_failures >= self.th.consecutive_failures
        out = [self.alarms.set(
            h.meter_id, "read_failures", holds, now,
            what=f"{h.consecutive_failures} failed reads in a row",
            evidence={"consecutive_failures": h.consecutive_failures,
                      "last_error": h.last_error, "last_ok_ms": h.last_seen_ms},
            since_ms=h.failing_since_ms, threshold=self.th.consecutive_failures)]
        if h.window_decrypt >= self.th.decrypt_failures:
            out.append(self.alarms.set(
                h.meter_id, "decrypt_failures", True, now,
                what=f"{h.window_decrypt} decryption/authentication failures (wrong or "
                     "missing key?)",
                evidence={"kind": ev.kind, "reason": h.last_error},
                threshold=self.th.decrypt_failures))
        if h.window_crc >= self.th.crc_errors:
            out.append(self.alarms.set(
                h.meter_id, "crc_errors", True, now,
                what=f"{h.window_crc} CRC/frame errors in this interval (noisy line or "
                     "weak radio?)",
                evidence={"crc_errors": h.window_crc, "reason": h.last_error},
                threshold=self.th.crc_errors))
        return out

    def _driver_silent(self, h: MeterHealth, ev: Event, d: Mapping[str, Any],
                       now: int) -> Event | None:
        # The driver knows when readings were due (a polled or reporting interval):
        # each one that did not come is a failed read, so the ratio tells the truth.
        expected = _num(d.get("expected_interval_s"))
        quiet = _num(d.get("silent_for_s"))
        missed = int(quiet // expected) if expected and quiet else 1
        missed = max(1, missed)
        h.missed_readings += missed
        h.reads_failed += missed
        h.driver_silent = True
        h.last_error = "silent: expected readings missing"
        return self.alarms.set(
            h.meter_id, "silent", True, now,
            what=f"missed {missed} expected reading(s)"
                 + (f" (one every {expected:g} s)" if expected else ""),
            evidence={"silent_for_s": quiet, "expected_interval_s": expected,
                      "last_seen_ms": d.get("last_seen_ms")},
            since_ms=d.get("last_seen_ms") if isinstance(d.get("last_seen_ms"), int)
            else ev.ts_ms)

    def _invalid_value(self, h: MeterHealth, d: Mapping[str, Any], now: int) -> Event | None:
        h.invalid_values += 1
        h.window_invalid += 1
        h.last_error = str(d.get("reason") or "invalid value")[:200]
        return self.alarms.set(
            h.meter_id, "invalid_values", True, now,
            what=f"the meter sends invalid values ({d.get('name') or 'a value'}: "
                 f"{d.get('reason') or 'invalid'})",
            evidence={"name": d.get("name"), "raw": d.get("raw"),
                      "invalid_values": h.invalid_values})

    def _status(self, h: MeterHealth, ev: Event, d: Mapping[str, Any],
                now: int) -> list[Event | None]:
        h.last_seen_ms = max(h.last_seen_ms or ev.ts_ms, ev.ts_ms)
        flags = d.get("flags")
        items = dict(d)
        if isinstance(flags, (list, tuple)):
            items.update({str(f): True for f in flags})
        out: list[Event | None] = []
        for flag, rule in FLAG_RULES.items():
            if flag in items:
                on = bool(items[flag])
                h.flags[flag] = on
                if rule == "reverse_flow":
                    out.append(self._reverse(h, "status", on, now, ev.ts_ms, d))
                else:
                    out.append(self.alarms.set(h.meter_id, rule, on, now,
                                               what=f"the meter reports {flag}",
                                               evidence={"status": d}))
        return out

    def register(self, meter_id: str, quantity: str, unit: str, st: RegisterState,
                 status: str, delta: tuple[int, int] | None, now: int) -> list[Event]:
        """Facts from the delta engine for one cumulative register."""
        h = self.meter(meter_id)
        if unit and len(h.units) < 64:
            h.units[quantity] = unit
        out: list[Event | None] = []
        if status == "reset":
            h.resets += 1
        elif status == "out_of_order":
            h.out_of_order += 1
        elif status == "duplicate":
            h.duplicates += 1
        if status not in ("ok", "first", "reset"):
            return []
        unchanged = st.t - st.changed_t
        stuck = unchanged >= self.th.stuck_after_s * 1000
        if stuck:
            h.stuck.setdefault(quantity, st.changed_t)
        else:
            h.stuck.pop(quantity, None)
        out.append(self.alarms.set(
            meter_id, f"stuck_register:{quantity}", stuck, now,
            what=f"{quantity} has not changed for {unchanged / 3_600_000:.1f} h while the "
                 "meter answers",
            evidence={"register": quantity, "value": str(st.value), "unit": unit,
                      "unchanged_since_ms": st.changed_t, "last_read_ms": st.t},
            since_ms=st.changed_t, threshold=self.th.stuck_after_s))
        if unit in VOLUME_UNITS:
            window = self.th.leak_hours * 3_600_000
            leak = st.flow_since is not None and st.t - st.flow_since >= window
            h.leak_since_ms = st.flow_since if leak else None
            out.append(self.alarms.set(
                meter_id, "leak_suspected", leak, now,
                what=f"no zero-flow hour on {quantity} within {self.th.leak_hours} h",
                evidence={"register": quantity, "flowing_since_ms": st.flow_since,
                          "value": str(st.value), "unit": unit, "last_read_ms": st.t},
                since_ms=st.flow_since, threshold=self.th.leak_hours))
        if self.th.reverse_registers and matches(quantity, self.th.reverse_registers) \
                and delta is not None:
            out.append(self._reverse(h, quantity, delta[0] > 0, now, st.t,
                                     {"increase": str(to_decimal(delta[0], delta[1])),
                                      "unit": unit}))
        return [e for e in out if e]

    def gap(self, meter_id: str, missing: int) -> None:
        h = self.meter(meter_id)
        h.gaps += 1
        h.missing_intervals += missing

    def rollover(self, meter_id: str) -> None:
        self.meter(meter_id).rollovers += 1

    def _reverse(self, h: MeterHealth, register: str, on: bool, now: int, ts: int,
                 evidence: Mapping[str, Any]) -> Event | None:
        if on:
            h.reverse.setdefault(register, ts)
        else:
            h.reverse.pop(register, None)
        return self.alarms.set(h.meter_id, f"reverse_flow:{register}", on, now,
                               what=f"reverse flow ({register})", evidence=evidence,
                               since_ms=h.reverse.get(register))

    def _silent(self, h: MeterHealth, now: int) -> list[Event | None]:
        if h.last_seen_ms is None:
            return []
        quiet = now - h.last_seen_ms
        holds = h.driver_silent or quiet > self.th.silent_after_s * 1000
        return [self.alarms.set(h.meter_id, "silent", holds, now,
                                what=f"not heard from for {quiet / 60_000:.0f} min",
                                evidence={"last_seen_ms": h.last_seen_ms,
                                          "last_error": h.last_error},
                                since_ms=h.last_seen_ms, threshold=self.th.silent_after_s)]

    # ----------------------------------------------------------------- periodic
    def tick(self, now: int, driver_stats: Mapping[str, Mapping[str, Any]] | None = None
             ) -> list[Event]:
        """Rules judged over time (silence, ratios, signal) and the driver's counters."""
        out: list[Event | None] = []
        for mid, stats in (driver_stats or {}).items():
            h = self.meter(mid)
            h.driver = {k: v for k, v in stats.items()
                        if isinstance(v, (int, float, str, bool, type(None)))}
            for key, run in (("rssi_dbm", h.rssi), ("rssi", h.rssi), ("lqi", h.lqi)):
                v = _num(stats.get(key))
                if v is not None and v != run.last:
                    run.add(v)
        th = self.th
        for h in self.meters.values():
            out += self._silent(h, now)
            ratio = h.success_ratio
            low = ratio is not None and h.attempts >= th.min_attempts and \
                ratio < th.min_success_ratio
            out.append(self.alarms.set(
                h.meter_id, "low_success_ratio", low, now,
                what=f"only {0 if ratio is None else ratio * 100:.0f} % of reads succeed",
                evidence={"reads_ok": h.reads_ok, "reads_failed": h.reads_failed,
                          "last_error": h.last_error}, threshold=th.min_success_ratio))
            weak = h.rssi.mean is not None and h.rssi.mean < th.min_rssi_dbm
            out.append(self.alarms.set(
                h.meter_id, "weak_signal", weak, now,
                what=f"mean RSSI {h.rssi.mean} dBm", evidence={"rssi_dbm": h.rssi.as_dict()},
                threshold=th.min_rssi_dbm))
            # per-interval counters: judged, then a new interval starts
            out.append(self.alarms.set(h.meter_id, "crc_errors", h.window_crc >= th.crc_errors,
                                       now, evidence={"crc_errors": h.window_crc}))
            out.append(self.alarms.set(h.meter_id, "decrypt_failures",
                                       h.window_decrypt >= th.decrypt_failures, now,
                                       evidence={"failures": h.window_decrypt}))
            out.append(self.alarms.set(h.meter_id, "invalid_values", h.window_invalid > 0, now,
                                       evidence={"invalid": h.window_invalid,
                                                 "valid": h.window_valid}))
            h.window_crc = h.window_decrypt = h.window_invalid = h.window_valid = 0
        return [e for e in out if e]

    def gateway_rules(self, g: Mapping[str, Any], now: int) -> list[Event]:
        th = self.th
        out: list[Event | None] = []

        def rule(name: str, holds: bool, what: str, evidence: dict[str, Any], limit: Any) -> None:
            out.append(self.alarms.set(None, name, holds, now, what=what, evidence=evidence,
                                       threshold=limit))

        depth = g.get("store_depth")
        if depth is not None:
            rule("store_backlog", depth >= th.store_depth, f"{depth} records wait in the store",
                 {"store_depth": depth, "broker_connected": g.get("broker_connected")},
                 th.store_depth)
        age = g.get("oldest_unsent_s")
        rule("uplink_lagging", age is not None and age >= th.oldest_unsent_s,
             f"the oldest unsent record is {0 if age is None else age / 60:.0f} min old",
             {"oldest_unsent_s": age, "broker_connected": g.get("broker_connected"),
              "reconnects": g.get("broker_reconnects")}, th.oldest_unsent_s)
        free = g.get("disk_free_bytes")
        if free is not None:
            rule("disk_low", free < th.disk_free_min, f"{free // 2**20} MiB free on the store's "
                 "disk", {"disk_free_bytes": free}, th.disk_free_min)
        mem = g.get("mem_available_bytes")
        if mem is not None:
            rule("memory_low", mem < th.memory_available_min,
                 f"{mem // 2**20} MiB memory available", {"mem_available_bytes": mem},
                 th.memory_available_min)
        temp = g.get("temperature_c")
        if temp is not None:
            rule("temperature_high", temp > th.temperature_max_c, f"SoC at {temp:.1f} °C",
                 {"temperature_c": temp}, th.temperature_max_c)
        return [e for e in out if e]

    def snapshot(self, now: int, gateway: Mapping[str, Any]
                 ) -> tuple[list[Diag], dict[tuple[str, str], Any]]:
        """Diag records for up/diag and the cursors that keep the latest table."""
        gm = {**gateway, "alarms": self.alarms.of(None), "meters": len(self.meters)}
        records = [Diag(now, "gateway", None, gm)]
        cursors: dict[tuple[str, str], Any] = {(GATEWAY, CURSOR_DIAG): [now, gm]}
        for mid in sorted(self.meters):
            m = {**self.meters[mid].metrics(), "alarms": self.alarms.of(mid)}
            records.append(Diag(now, "meter", mid, m))
            cursors[(mid, CURSOR_DIAG)] = [now, m]
        return records, cursors


# --------------------------------------------------------------------------- the board

"""What several request handlers share: finding a meter or a bus, the uplink and edge
figures, and the words for a meter's problems.
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Any, Callable

from ..driverset import ReadTimeout, bounded_call, find_driver, meter_stats
from ..health import uplink_summary
from .requests import ControlHost, RequestError

if TYPE_CHECKING:
    from ..drivers.base import Driver


CALL_TIMEOUT_S = 60.0
METER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def get_arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    v = args.get(name, default)
    if v is ...:
        raise RequestError("bad_request", f"missing argument {name!r}")
    if v is not None and v is not default and not isinstance(v, kind):
        raise RequestError("bad_request", f"argument {name!r} has the wrong type")
    return v


def failure_count(st: dict[str, Any]) -> int | None:
    """Failed reads from a driver's counters: ``failures`` when it is a number (M-Bus and
    wM-Bus give a per-kind mapping there, and their total as ``reads_failed``)."""
    v = st.get("failures")
    if isinstance(v, int):
        return v
    v = st.get("reads_failed")
    return v if isinstance(v, int) else None


def run_bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """:func:`gateway.driverset.bounded_call`, a timeout reported as a RequestError."""
    try:
        return bounded_call(fn, timeout, what)
    except ReadTimeout as exc:
        raise RequestError("timeout", str(exc)) from None


def find_meter(rt: ControlHost, meter_id: str) -> tuple["Driver" | None, dict[str, Any] | None]:
    """The driver that has this meter (from its meter_stats, else the bus it was seen on)."""
    drivers = list(rt.drivers)
    drv, stats = find_driver(drivers, meter_id)
    if drv is not None:
        return drv, stats
    seen = rt.monitor.meter(meter_id)
    if seen is not None:
        for drv in drivers:
            if drv.bus == seen["bus"]:
                return drv, None
    return None, None


def all_meter_ids(rt: ControlHost) -> list[str]:
    ids = set(rt.monitor.meters())
    for drv in list(rt.drivers):
        ids.update(meter_stats(drv))
    return sorted(ids)


def unknown_meter(rt: ControlHost, meter_id: str) -> RequestError:
    near = difflib.get_close_matches(meter_id, all_meter_ids(rt), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(near)}?" if near else "; `meters` lists them"
    return RequestError("unknown_meter", f"no meter {meter_id!r} on any bus{hint}")


def resolve_bus(rt: ControlHost, word: str, capability: str, what: str) -> tuple["Driver", Callable]:
    """A bus named ``word``, else the one bus of type ``word``; and its capability method."""
    drivers = list(rt.drivers)
    chosen = [d for d in drivers if d.bus == word] or [d for d in drivers if d.type_name == word]
    buses = ", ".join(f"{d.bus} ({d.type_name})" for d in drivers) or "none"
    if not chosen:
        raise RequestError("no_such_bus", f"{what}: no {word} bus is configured "
                           f"(buses: {buses})")
    if len(chosen) > 1:
        raise RequestError("ambiguous_bus", f"{what}: several {word} buses "
                           f"({', '.join(d.bus for d in chosen)}); name one")
    drv = chosen[0]
    fn = getattr(drv, capability, None)
    if not callable(fn):
        raise RequestError("not_supported", f"{what} is not supported by driver {drv.bus} "
                           f"(type {drv.type_name})")
    return drv, fn


def broker_summary(rt: ControlHost, snap: Any) -> dict[str, Any]:
    c = rt.config.uplink
    return uplink_summary(snap, f"{c.host}:{c.port}", c.client_id)


# Edge alarms (diag.<rule>) worth a warning on the meter's row, and how they read.
ALARM_TEXT = {"silent": "silent", "read_failures": "reads failing",
              "low_success_ratio": "low success ratio", "weak_signal": "weak signal",
              "invalid_values": "sends invalid values", "crc_errors": "CRC errors",
              "decrypt_failures": "cannot decrypt (key?)", "clock_drift": "clock drift",
              "stuck_register": "register stuck", "leak_suspected": "leak suspected",
              "reverse_flow": "reverse flow", "tamper": "tamper", "battery_low": "battery low",
              "leak_reported": "leak reported"}


def edge_alarms(rt: ControlHost) -> dict[str, dict[str, int]]:
    """Active edge diagnostics rules per meter: meter -> rule -> since_ms ({} without edge)."""
    diag = getattr(getattr(rt, "edge", None), "diag", None)
    active = getattr(getattr(diag, "alarms", None), "active", None)
    if not isinstance(active, dict):
        return {}
    out: dict[str, dict[str, int]] = {}
    try:
        items = list(active.items())  # one C-level copy: safe beside the edge thread
    except RuntimeError:
        return {}
    for (mid, rule), (since, _detail) in items:
        if mid:
            out.setdefault(mid, {})[rule] = since
    return out


def edge_reads(rt: ControlHost) -> dict[str, dict[str, int]]:
    """Reads ok/failed per meter as the edge counted them (a missed expected reading is a
    failed one), for drivers whose own counters have none (Zigbee reports)."""
    diag = getattr(getattr(rt, "edge", None), "diag", None)
    meters = getattr(diag, "meters", None)
    if not isinstance(meters, dict):
        return {}
    try:
        items = list(meters.items())
    except RuntimeError:
        return {}
    return {m: {"reads_ok": h.reads_ok, "reads_failed": h.reads_failed} for m, h in items}


def meter_problems(st: dict[str, Any], alarms: dict[str, int]) -> list[str]:
    """Why a meter needs attention, from its driver's counters and its active edge alarms:
    silent (missed its expected readings), reads failing, only invalid values, ..."""
    out: list[str] = []
    ok, bad = st.get("success", st.get("reads_ok")), failure_count(st)
    if st.get("silent") is True:
        seen = st.get("last_seen_ms")
        out.append("silent: missed its expected readings"
                   + ("" if seen else " (never heard)"))
    if isinstance(bad, int) and bad > (ok if isinstance(ok, int) else 0):
        out.append(f"fails more than it succeeds ({bad} failed, {ok or 0} ok)")
    invalid = st.get("invalid_values")
    if isinstance(invalid, int) and invalid > 0:
        good = st.get("readings")
        if not good:
            out.append(f"sends only invalid values ({invalid}, no valid reading)")
        elif "invalid_values" in alarms:
            out.append(f"sends invalid values ({invalid} of {invalid + good})")
    for rule in sorted(alarms):
        name = rule.partition(":")[0]
        text = ALARM_TEXT.get(name, name.replace("_", " "))
        if name == "silent" and any(p.startswith("silent") for p in out):
            continue
        if name == "invalid_values" and any("invalid values" in p for p in out):
            continue
        qual = rule.partition(":")[2]
        out.append(text + (f" ({qual})" if qual else ""))
    return out


STALE_BACKLOG_S = 3600.0  # diag warns when the oldest unsent record is older than this


def human_age(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def age_s(ts_ms: int | None, now: int) -> float | None:
    return None if ts_ms is None else round(max(0, now - ts_ms) / 1000, 1)



"""What each console command answers: plain dicts, rendered by the client (or printed as JSON).

Handlers run on the console's connection thread. They only read the runtime's state (stats
snapshots, the monitor) or call a driver capability on a helper thread bounded by a timeout,
so a slow meter or a hung console never holds anything a driver or the uplink waits for.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import inspect
import os
import queue
import re
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .. import __version__
from ..driverset import ReadTimeout, bounded_call, find_driver, meter_stats
from ..health import bus_summary, uplink_summary
from ..model import now_ms
from ..text import error_text, plural
from .audit import Peer
from .monitor import record_to_dict

if TYPE_CHECKING:
    from ..drivers.base import Driver
    from ..runtime import Runtime
    from .server import ControlServer


class RequestError(Exception):
    """A command failed for a reason the technician can act on; shown as one line."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.extra = extra


class Context:
    """One request: the runtime, who asked, and (for streams) how to send items back."""

    def __init__(self, runtime: "Runtime", server: "ControlServer", peer: Peer,
                 send: Callable[[dict[str, Any]], None], cancelled: Callable[[], bool]) -> None:
        self.runtime = runtime
        self.server = server
        self.peer = peer
        self.send = send
        self.cancelled = cancelled


ROLES = ("viewer", "technician", "admin")  # each may do what the ones before it may


@dataclass(frozen=True)
class Arg:
    """One argument a command takes: its JSON type(s), and whether it is a secret (never
    written to the audit log or sent up, whatever the request looks like)."""

    kind: type | tuple[type, ...]
    secret: bool = False


@dataclass(frozen=True)
class RequestHandler:
    name: str
    run: Callable[[Context, dict[str, Any]], Any]
    audited: bool = False   # changes state: also forwarded to the uplink as control.audit
    stream: bool = False    # sends items before its final reply
    role: str = "viewer"    # the least role that may run it
    args: Mapping[str, Arg] = field(default_factory=dict)  # every argument it accepts

    def check_args(self, args: dict[str, Any]) -> None:
        """Refuse arguments the command does not declare, and declared ones of the wrong
        type, before anything runs (the names of unknown ones are not echoed: they may be
        anything, even a secret sent by mistake)."""
        unknown = [k for k in args if k not in self.args]
        if unknown:
            takes = ", ".join(self.args) or "no arguments"
            raise RequestError("bad_request", f"{self.name}: {len(unknown)} unknown "
                               f"argument(s) refused; it takes {takes}")
        for k, spec in self.args.items():
            v = args.get(k)
            if v is not None and (not isinstance(v, spec.kind) or isinstance(v, bool)
                                  and bool not in _kinds(spec.kind)):
                raise RequestError("bad_request", f"argument {k!r} has the wrong type")

    def declared(self) -> dict[str, bool]:
        """Argument name -> secret, for the audit log."""
        return {k: a.secret for k, a in self.args.items()}


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


REQUESTS: dict[str, RequestHandler] = {}


def handles(name: str, audited: bool = False, stream: bool = False, role: str = "viewer",
            args: Mapping[str, Arg] | None = None):  # type: ignore[no-untyped-def]
    assert role in ROLES, role

    def deco(fn: Callable[[Context, dict[str, Any]], Any]) -> Callable[[Context, dict[str, Any]], Any]:
        REQUESTS[name] = RequestHandler(name, fn, audited, stream, role, dict(args or {}))
        return fn
    return deco


def role_at_least(have: str, need: str) -> bool:
    return ROLES.index(have) >= ROLES.index(need)


# --------------------------------------------------------------------------- helpers

CALL_TIMEOUT_S = 60.0
METER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def _arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
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


def find_meter(rt: "Runtime", meter_id: str) -> tuple["Driver" | None, dict[str, Any] | None]:
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


def all_meter_ids(rt: "Runtime") -> list[str]:
    ids = set(rt.monitor.meters())
    for drv in list(rt.drivers):
        ids.update(meter_stats(drv))
    return sorted(ids)


def unknown_meter(rt: "Runtime", meter_id: str) -> RequestError:
    near = difflib.get_close_matches(meter_id, all_meter_ids(rt), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(near)}?" if near else "; `meters` lists them"
    return RequestError("unknown_meter", f"no meter {meter_id!r} on any bus{hint}")


def resolve_bus(rt: "Runtime", word: str, capability: str, what: str) -> tuple["Driver", Callable]:
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


def broker_summary(rt: "Runtime", snap: Any) -> dict[str, Any]:
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


def edge_alarms(rt: "Runtime") -> dict[str, dict[str, int]]:
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


def edge_reads(rt: "Runtime") -> dict[str, dict[str, int]]:
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


def _human_age(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _age_s(ts_ms: int | None, now: int) -> float | None:
    return None if ts_ms is None else round(max(0, now - ts_ms) / 1000, 1)


# --------------------------------------------------------------------------- commands


@handles("hello")
def hello(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    return {"firmware": __version__, "gateway_id": rt.config.gateway.id,
            "commands": sorted(REQUESTS), "peer": {"uid": ctx.peer.uid, "user": ctx.peer.user,
                                                   "role": ctx.server.role_of(ctx.peer)}}


@handles("status")
def status(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    assert rt.store is not None
    snap = rt.health()
    st = rt.store.stats()
    now = now_ms()
    return {
        "gateway_id": rt.config.gateway.id, "board": rt.config.gateway.board,
        "firmware": __version__,
        "uptime_s": round(time.monotonic() - rt.started_monotonic, 1),
        "config_hash": rt.config.config_hash,
        "epoch": st.epoch, "last_seq": st.last_seq,
        "store": {"depth": st.depth, "bytes": st.bytes, "max_bytes": rt.config.store.max_bytes,
                  "oldest_unsent_seq": st.oldest_seq,
                  "oldest_unsent_age_s": _age_s(st.oldest_ts_ms, now)},
        "broker": broker_summary(rt, snap),
        "buses": [bus_summary(b) for b in snap.buses.values()],
        "consoles": ctx.server.connection_count(),
    }


@handles("meters", args={"bus": Arg(str)})
def meters(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    want = _arg(args, "bus", str, None)
    if want and want not in {d.bus for d in rt.drivers}:
        buses = ", ".join(f"{d.bus} ({d.type_name})" for d in rt.drivers) or "none"
        raise RequestError("no_such_bus", f"meters: there is no bus {want!r} (buses: {buses})")
    seen = rt.monitor.meters()
    rows: dict[str, dict[str, Any]] = {}
    health = edge_reads(rt)
    for drv in list(rt.drivers):
        if want and drv.bus != want:
            continue
        for mid, st in meter_stats(drv).items():
            rows[mid] = _meter_row(mid, drv.bus, {**health.get(mid, {}), **st}, seen.get(mid))
    for mid, s in seen.items():
        if mid not in rows and (not want or s["bus"] == want):
            rows[mid] = _meter_row(mid, s["bus"], health.get(mid, {}), s)
    return {"meters": [rows[k] for k in sorted(rows)]}


def _meter_row(mid: str, bus: str, st: dict[str, Any], seen: dict[str, Any] | None) -> dict[str, Any]:
    last = (seen or {}).get("last")
    ok, bad = st.get("success", st.get("reads_ok")), failure_count(st)
    ratio = None
    if isinstance(ok, int) and isinstance(bad, int) and ok + bad > 0:
        ratio = round(ok / (ok + bad), 3)
    flags = list(last["quality"]) if last else ["never_read"]
    ev = (seen or {}).get("last_event")
    if ev and ev["severity"] in ("warning", "error"):
        flags.append(ev["kind"].removeprefix("meter."))
    last_seen = (seen or {}).get("last_seen_ms") or st.get("last_ok_ms")
    return {"id": mid, "bus": bus, "last_seen_ms": last_seen,
            "last_value": last["value"] if last else None,
            "unit": last["unit"] if last else None,
            "quantity": last["quantity"] if last else None,
            "success": ok, "failures": bad, "success_ratio": ratio,
            "rssi_dbm": st.get("rssi_dbm", st.get("rssi")), "lqi": st.get("lqi"),
            "flags": flags}


@handles("meter", args={"id": Arg(str)})
def meter(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    mid = _arg(args, "id", str)
    drv, stats = find_meter(rt, mid)
    seen = rt.monitor.meter(mid)
    if drv is None and seen is None:
        raise unknown_meter(rt, mid)
    out: dict[str, Any] = {"id": mid, "bus": drv.bus if drv else seen["bus"],  # type: ignore[index]
                           "type": drv.type_name if drv else None, "stats": stats or {}}
    out.update(seen or {"last_seen_ms": None, "readings_seen": 0, "events_seen": 0,
                        "last_readings": [], "events": []})
    out["key_stored"] = os.path.exists(key_path(rt, mid)) if METER_ID_RE.fullmatch(mid) else False
    out["key_bytes"] = list(key_bytes(drv.type_name)) if drv else []
    cfg = next((d for d in rt.config.drivers if drv and d.name == drv.bus), None)
    if cfg is not None:
        listed = cfg.options.get("meters")
        entry = next((m for m in (listed if isinstance(listed, list) else [])
                      if isinstance(m, dict) and m.get("id") == mid), None)
        if entry is not None:
            out["config"] = mask_options(entry, _meter_schema(cfg.type))
    return out


@handles("read", role="technician", args={"id": Arg(str), "timeout_s": Arg((int, float))})
def read(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    mid = _arg(args, "id", str)
    timeout = float(_arg(args, "timeout_s", (int, float), CALL_TIMEOUT_S))
    drv, _ = find_meter(rt, mid)
    if drv is None:
        raise unknown_meter(rt, mid)
    fn = getattr(drv, "read_now", None)
    if not callable(fn):
        raise RequestError("not_supported", f"read is not supported by driver {drv.bus} "
                           f"(type {drv.type_name})")
    t0 = time.monotonic()
    try:
        records = run_bounded(lambda: fn(mid), timeout, f"read {mid}")
    except KeyError:
        raise unknown_meter(rt, mid) from None
    except RequestError:
        raise
    except Exception as exc:
        raise RequestError("read_failed", f"read {mid} on {drv.bus} failed: "
                           f"{error_text(exc)}") from None
    return {"meter_id": mid, "bus": drv.bus, "duration_ms": int((time.monotonic() - t0) * 1000),
            "records": [record_to_dict(r) for r in records or []]}


def _matches(flt: str | None) -> Callable[[Any], bool]:
    if not flt:
        return lambda rec: True

    def accept(rec: Any) -> bool:
        return (getattr(rec, "meter_id", None) == flt or getattr(rec, "bus", None) == flt
                or getattr(rec, "source", None) == flt)
    return accept


MAX_STREAM_S = 24 * 3600.0
SYSTEM_SOURCES = frozenset({"runtime", "store", "uplink", "control", "edge"})
RECENT_SOURCES = 200


@handles("tail", stream=True, args={"filter": Arg(str), "seconds": Arg((int, float))})
def tail(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    flt = _arg(args, "filter", str, None)
    seconds = _arg(args, "seconds", (int, float), None)
    sources = {d.bus for d in rt.drivers} | SYSTEM_SOURCES | \
        {e.source for e in rt.monitor.recent_events(RECENT_SOURCES)}
    if flt and flt not in sources and flt not in all_meter_ids(rt):
        raise RequestError("unknown_filter", f"no bus, meter or event source {flt!r}; buses: "
                           + ", ".join(d.bus for d in rt.drivers) + "; sources: "
                           + ", ".join(sorted(SYSTEM_SOURCES)))
    deadline = time.monotonic() + min(float(seconds) if seconds else MAX_STREAM_S, MAX_STREAM_S)
    sub = rt.monitor.subscribe(_matches(flt))
    sent = reported = 0
    try:
        while time.monotonic() < deadline and not ctx.cancelled():
            try:
                rec = sub.queue.get(timeout=0.25)
            except queue.Empty:
                continue
            if sub.dropped > reported:
                ctx.send({"type": "dropped", "count": sub.dropped - reported})
                reported = sub.dropped
            ctx.send(record_to_dict(rec))
            sent += 1
    finally:
        rt.monitor.unsubscribe(sub)
    return {"sent": sent, "dropped": sub.dropped}


def _stream_capability(ctx: Context, call: Callable[[Callable[[dict[str, Any]], bool]], Any],
                       timeout: float, what: str) -> tuple[Any, int, int]:
    """Run a driver call that reports items through a callback, forwarding them as stream
    items from this thread. The callback never blocks the driver: a bounded queue."""
    q: "queue.Queue[dict[str, Any]]" = queue.Queue(1000)
    gone = threading.Event()
    dropped = [0]

    def callback(item: dict[str, Any]) -> bool:
        if gone.is_set():
            return False
        try:
            q.put_nowait(dict(item))
        except queue.Full:
            dropped[0] += 1
        return True

    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["result"] = call(callback)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"console-{what}", daemon=True).start()
    deadline = time.monotonic() + timeout
    sent = 0
    try:
        while True:
            if ctx.cancelled() or time.monotonic() > deadline:
                gone.set()
                break
            try:
                ctx.send(q.get(timeout=0.25))
                sent += 1
                continue
            except queue.Empty:
                pass
            if done.is_set() and q.empty():
                break
    finally:
        gone.set()
    if "error" in box:
        exc = box["error"]
        raise RequestError("driver_error", f"{what} failed: {error_text(exc)}") from None
    return box.get("result"), sent, dropped[0]


@handles("listen", stream=True, role="technician",
         args={"bus": Arg(str), "seconds": Arg((int, float))})
def listen(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    word = _arg(args, "bus", str)
    seconds = float(_arg(args, "seconds", (int, float), 60))
    if not 0 < seconds <= 3600:
        raise RequestError("bad_request", "listen: SECONDS must be 1-3600")
    drv, fn = resolve_bus(ctx.runtime, word, "listen", f"listen {word}")
    t0 = time.monotonic()
    _, heard, dropped = _stream_capability(ctx, lambda cb: fn(seconds, cb), seconds + 10,
                                           f"listen {drv.bus}")
    listened = round(time.monotonic() - t0, 1)
    return {"bus": drv.bus, "seconds": seconds, "heard": heard, "dropped": dropped,
            "listened_s": min(listened, seconds),
            "stopped_early": bool(ctx.cancelled()) or listened < seconds - 1}


@handles("scan", stream=True, role="technician", args={"bus": Arg(str)})
def scan(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    word = _arg(args, "bus", str)
    drv, fn = resolve_bus(ctx.runtime, word, "scan", f"scan {word}")
    try:
        takes_progress = "progress" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_progress = False
    call = (lambda cb: fn(progress=cb)) if takes_progress else (lambda cb: fn())
    found, sent, _ = _stream_capability(ctx, call, 3600, f"scan {drv.bus}")
    return {"bus": drv.bus, "devices": list(found or [])}


@handles("permit-join", audited=True, role="technician",
         args={"bus": Arg(str), "seconds": Arg(int)})
def permit_join(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    word = _arg(args, "bus", str, "zigbee")
    seconds = _arg(args, "seconds", int)
    if not 0 <= seconds <= 254:
        raise RequestError("bad_request", "permit-join: SECONDS must be 0-254 (0 closes)")
    drv, fn = resolve_bus(ctx.runtime, word, "permit_join", f"{word} permit-join")
    try:
        answer = run_bounded(lambda: fn(seconds), 30, f"permit-join on {drv.bus}")
    except RequestError:
        raise
    except Exception as exc:
        raise RequestError("driver_error", f"permit-join on {drv.bus} failed: "
                           f"{error_text(exc)}") from None
    return {"bus": drv.bus, "seconds": seconds, "answer": answer}


@handles("store", args={"check_s": Arg((int, float))})
def store(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    assert rt.store is not None
    st = rt.store.stats()
    now = now_ms()
    path = rt.store.path
    files = {}
    for suffix in ("", "-wal", "-shm", ".reserve"):
        try:
            files[os.path.basename(path + suffix)] = os.path.getsize(path + suffix)
        except OSError:
            pass
    out = dataclasses.asdict(st)
    out.update(path=path, max_bytes=rt.config.store.max_bytes, max_rows=rt.config.store.max_rows,
               used_pct=round(100 * st.bytes / rt.config.store.max_bytes, 1),
               oldest_unsent_age_s=_age_s(st.oldest_ts_ms, now), files=files,
               opened=list(rt.store.open_report),
               integrity=quick_check(path, float(_arg(args, "check_s", (int, float), 5.0))))
    return out


def quick_check(path: str, budget_s: float) -> str:
    """``PRAGMA quick_check`` on a read-only connection beside the writer, abandoned after
    ``budget_s`` so a big store on slow flash cannot keep the console waiting."""
    deadline = time.monotonic() + budget_s
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return f"cannot open: {exc}"
    try:
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10000)
        rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        return "ok" if rows == ["ok"] else "FAILED: " + "; ".join(rows[:3])
    except sqlite3.OperationalError as exc:
        if "interrupt" in str(exc):
            return f"not finished within {budget_s:g} s"
        return f"cannot check: {exc}"
    finally:
        conn.close()


def certificates(path: str, role: str) -> list[dict[str, Any]]:
    from cryptography import x509
    try:
        with open(path, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as exc:
        return [{"role": role, "file": path, "error": str(exc)}]
    out = []
    now = time.time()
    for c in certs:
        not_after = getattr(c, "not_valid_after_utc", None) or c.not_valid_after
        not_before = getattr(c, "not_valid_before_utc", None) or c.not_valid_before
        exp = not_after.timestamp() if not_after.tzinfo else \
            not_after.replace(tzinfo=__import__("datetime").timezone.utc).timestamp()
        out.append({"role": role, "file": path, "subject": c.subject.rfc4514_string(),
                    "issuer": c.issuer.rfc4514_string(),
                    "not_before": not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "days_left": int((exp - now) // 86400)})
    return out


@handles("uplink")
def uplink(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    c = rt.config.uplink
    out = broker_summary(rt, rt.health())
    out["tls_version"] = c.tls_version
    out["topic_prefix"] = c.topic_prefix
    out["certificates"] = certificates(c.cert, "client") + certificates(c.ca, "ca")
    return out


@handles("diag")
def diag(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    assert rt.store is not None
    checks: list[dict[str, Any]] = []

    def add(level: str, what: str, detail: str) -> None:
        checks.append({"level": level, "what": what, "detail": detail})

    alarms = edge_alarms(rt)
    snap = rt.health()
    for bus in snap.buses.values():
        state, stats = bus.state, bus.meters
        if state != "running":
            add("fail", f"bus {bus.name}", f"driver {state} (type {bus.type}); see the log")
        else:
            troubled = {m: p for m in sorted(stats)
                        if (p := meter_problems(stats[m], alarms.get(m, {})))}
            for m in sorted(set(alarms) - set(stats)):  # seen on this bus, not in its stats
                seen = rt.monitor.meter(m)
                if seen is not None and seen["bus"] == bus.name and alarms[m]:
                    troubled[m] = meter_problems({}, alarms[m])
            n = len(set(stats) | set(troubled))
            if troubled:
                add("warn", f"bus {bus.name}", f"running; {len(troubled)} of "
                    f"{plural(n, 'meter')} need attention")
                for m, problems in troubled.items():
                    add("warn", f"meter {m}", "; ".join(problems))
            else:
                add("ok", f"bus {bus.name}", f"running, {plural(n, 'meter')}")
        if bus.refused:
            add("fail", f"bus {bus.name}", f"{plural(bus.refused, 'batch', 'batches')} refused by the store")
    up = broker_summary(rt, snap)
    if up["state"] == "connected":
        add("ok", "uplink", f"connected to {up['broker']}")
    else:
        add("fail", "uplink", f"{up['state']}: {up.get('last_error') or 'no error recorded'}")
    st = rt.store.stats()
    used = 100 * st.bytes / rt.config.store.max_bytes
    age = _age_s(st.oldest_ts_ms, now_ms())
    stale = age is not None and age > STALE_BACKLOG_S
    add("warn" if used > 80 or stale else "ok", "store", f"{st.depth} unsent, {used:.1f}% of "
        "the cap" + (f", oldest {_human_age(age)} old" if age is not None else ""))
    if st.evicted_records:
        add("warn", "store", f"{plural(st.evicted_records, 'unsent record')} evicted "
            f"({plural(st.gap_records, 'gap')})")
    if st.full_errors:
        add("fail", "store", f"{st.full_errors} writes failed: filesystem full")
    for cert in certificates(rt.config.uplink.cert, "client") + \
            certificates(rt.config.uplink.ca, "ca"):
        if "error" in cert:
            add("fail", f"{cert['role']} certificate", cert["error"])
        elif cert["days_left"] < 0:
            add("fail", f"{cert['role']} certificate", f"expired {cert['not_after']}")
        elif cert["days_left"] < 30:
            add("warn", f"{cert['role']} certificate", f"expires {cert['not_after']} "
                f"({cert['days_left']} days)")
    for w in rt.config.warnings:
        add("warn", "config", str(w))
    if ctx.server.audit.write_errors:
        add("warn", "audit log", f"{plural(ctx.server.audit.write_errors, 'entry', 'entries')} could not be written")
    events = [record_to_dict(e) for e in rt.monitor.recent_events(50)
              if e.severity in ("warning", "error")][-10:]
    worst = "fail" if any(c["level"] == "fail" for c in checks) else \
        "warn" if any(c["level"] == "warn" for c in checks) else "ok"
    return {"overall": worst, "checks": checks, "recent_problems": events}


# ----------------------------------------------------------------- config and keys


def _config_file(ctx: Context, args: dict[str, Any]) -> tuple[str, bytes]:
    """The named file's path and content, read through one descriptor (see read_as_peer)."""
    path = _arg(args, "file", str)
    if not os.path.isabs(path):
        raise RequestError("bad_request", "the console sends an absolute path")
    return path, read_as_peer(path, ctx.peer)


def _load(path: str, data: bytes) -> Any:
    from ..config import ConfigError, load_config
    try:
        return load_config(path, data)
    except ConfigError as exc:
        raise RequestError("invalid_config", f"{path}: {len(exc.issues)} error(s); nothing "
                           "was changed; for the values, run `gateway check-config FILE` as "
                           "yourself", issues=[content_free(i) for i in exc.issues],
                           warnings=[content_free(w) for w in exc.warnings]) from None


_GOT = re.compile(r",? got .*$|: (?=/).*$", re.S)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATH = re.compile(r"(?<![\w.])/[^\s,;:()]+")
_KEY_PATH = re.compile(r"[A-Za-z0-9_.\[\]-]{1,120}")


def content_free(issue: Any) -> str:
    """A config issue as location, key path and the kind of problem only: never a value
    from the file (the file may be anything the gateway can read: a key, /etc/shadow).

    The loader's messages read "expected X, got <value>"; the value (and any quoted text or
    path) is cut. Key paths that are not plain names are replaced too."""
    where = f"{issue.file}:{issue.line}:{issue.column}" if issue.line > 0 else issue.file
    msg = _GOT.sub("", issue.message)
    msg = _PATH.sub("(a path)", _QUOTED.sub("(...)", msg)).strip() or "invalid"
    kp = issue.key_path
    if kp and not _KEY_PATH.fullmatch(kp):
        kp = "(a key)"
    return f"{where}: {kp}: {msg}" if kp else f"{where}: {msg}"


@handles("config show")
def config_show(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    cfg = ctx.runtime.config
    return {"source_path": cfg.source_path, "config_hash": cfg.config_hash,
            "summary": cfg.summary(), "config": config_to_dict(cfg),
            "warnings": [str(w) for w in cfg.warnings]}


@handles("config check", role="technician", args={"file": Arg(str)})
def config_check(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    from .reload import plan_reload
    path, data = _config_file(ctx, args)
    cfg = _load(path, data)
    return {"file": path, "valid": True, "summary": cfg.summary(),
            "warnings": [str(w) for w in cfg.warnings],
            "plan": plan_reload(ctx.runtime.config, cfg).to_dict()}


@handles("config apply", audited=True, role="admin", args={"file": Arg(str)})
def config_apply(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    from .reload import ReloadRefused
    path, data = _config_file(ctx, args)
    cfg = _load(path, data)
    rt = ctx.runtime
    startup = rt.config.source_path
    try:
        result = rt.apply_config(cfg)
    except ReloadRefused as exc:
        raise RequestError("not_applied", str(exc)) from None
    result["file"] = path
    result["config_hash"] = cfg.config_hash
    result["warnings"] = [str(w) for w in cfg.warnings]
    if os.path.realpath(path) != os.path.realpath(startup):
        result["note"] = (f"the gateway starts from {startup} next time; copy {path} there "
                          "to keep this change")
    return result


def _command_handler(ctx: Context) -> Any:
    fleet = getattr(ctx.runtime, "fleet", None)
    handler = getattr(fleet, "handler", None)
    if handler is None or not getattr(fleet, "topics", None):
        raise RequestError("not_supported", "downlink commands are disabled (no "
                           "fleet.command_keys configured)")
    return handler


@handles("fleet")
def fleet_state(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """The downlink: last accepted seq, whether it is locked, counters."""
    return _command_handler(ctx).state()


@handles("fleet reset-seq", audited=True, role="admin", args={"seq": Arg(int)})
def fleet_reset_seq(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Recover a downlink locked by a command seq far in the future (see README, Security)."""
    seq = _arg(args, "seq", int, None)
    if seq is not None and not 0 <= seq < 2**63:
        raise RequestError("bad_request", "SEQ must be 0 to 2^63-1")
    handler = _command_handler(ctx)
    out = handler.reset_seq(seq, f"{ctx.peer.user} (uid {ctx.peer.uid}) on the console")
    out["message"] = (f"command seq reset from {out['previous_seq']} to {out['seq']}; "
                      f"commands issued before {out['not_before_ms']} are refused")
    return out


# Key sizes (bytes) by driver type: AES-128 for M-Bus/wM-Bus (EN 13757-7); DLMS a block key,
# or a block key then an authentication key (as `keys set` stores them for drivers.dlms).
KEY_BYTES: dict[str, tuple[int, ...]] = {"mbus": (16,), "wmbus": (16,), "dlms": (16, 32),
                                         "iec62056-21": (), "zigbee": ()}
DEFAULT_KEY_BYTES = (16, 32)


def key_bytes(type_name: str | None) -> tuple[int, ...]:
    """The key sizes a meter of this driver type takes (empty: it takes no key)."""
    return KEY_BYTES.get(type_name or "", DEFAULT_KEY_BYTES)


def key_sizes_text(sizes: tuple[int, ...]) -> str:
    return " or ".join(f"{n} bytes ({2 * n} hex digits)" for n in sizes)


def key_path(rt: "Runtime", meter_id: str) -> str:
    keys_dir = rt.config.control.keys_dir or os.path.join(
        os.path.dirname(rt.config.store.path), "keys")
    return os.path.join(keys_dir, f"{meter_id}.key")


@handles("keys set", audited=True, role="technician",
         args={"meter_id": Arg(str), "key": Arg(str, secret=True)})
def keys_set(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    mid = _arg(args, "meter_id", str)
    key_hex = _arg(args, "key", str)
    if not METER_ID_RE.fullmatch(mid):
        raise RequestError("bad_request", "a meter id is 1-64 characters from A-Z a-z 0-9 . _ : -")
    cleaned = key_hex.strip().replace(" ", "").replace(":", "").lower().removeprefix("0x")
    try:
        key = bytes.fromhex(cleaned)
    except ValueError:
        raise RequestError("bad_key", "the key must be hex digits (e.g. 32 for AES-128)") from None
    drv, _ = find_meter(rt, mid)
    if drv is None:
        raise unknown_meter(rt, mid)
    sizes = key_bytes(drv.type_name)
    if not sizes:
        raise RequestError("bad_key", f"meters on {drv.bus} (type {drv.type_name}) take no "
                           "key; nothing was stored")
    if len(key) not in sizes:
        raise RequestError("bad_key", f"{mid} on {drv.bus} (type {drv.type_name}) needs a key "
                           f"of {key_sizes_text(sizes)}; got {len(key)} bytes "
                           f"({len(cleaned)} hex digits); nothing was stored")
    path = key_path(rt, mid)
    write_secret(path, key.hex() + "\n")
    out: dict[str, Any] = {"meter_id": mid, "file": path, "bytes": len(key)}
    out["driver"] = drv.bus
    fn = getattr(drv, "set_key", None)
    if not callable(fn):
        out["message"] = (f"stored; driver {drv.bus} (type {drv.type_name}) cannot take a key "
                          "while running (no set_key): it reads it at its next start")
        out["applied"] = False
        return out
    try:
        run_bounded(lambda: fn(mid, key), 30, f"set_key on {drv.bus}")
    except RequestError:
        raise
    except Exception as exc:
        raise RequestError("driver_error", f"stored, but driver {drv.bus} refused the key: "
                           f"{error_text(exc)}") from None
    out["applied"] = True
    out["message"] = f"stored and in use by {drv.bus}"
    return out


def write_secret(path: str, content: str) -> None:
    """Atomically write a file that only its owner may read (mode 0600 from creation)."""
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


MAX_READ = 4 * 1024 * 1024 + 1  # the config loader refuses anything larger anyway


def read_as_peer(path: str, peer: Peer) -> bytes:
    """Read a file the console user names, as that user could: opened once, without
    following a final symlink (O_NOFOLLOW) or blocking on a FIFO (O_NONBLOCK); the
    descriptor is fstat'ed, must be a regular file, and the peer's uid/gids (SO_PEERCRED)
    must be allowed to read it by its mode. What is checked is what is read: swapping the
    path to a meter key between the check and the read is not possible."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    denied = RequestError("permission_denied", f"{path}: you (uid {peer.uid}) cannot read this "
                          "file, so the gateway will not read it for you")
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise RequestError("not_found", f"{path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RequestError("bad_file", f"{path} is a symbolic link; name the file itself"
                               ) from None
        raise RequestError("cannot_read", f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RequestError("bad_file", f"{path} is not a regular file")
        if not mode_allows_read(st, peer):
            raise denied
        chunks: list[bytes] = []
        left = MAX_READ
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise RequestError("cannot_read", f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def mode_allows_read(st: os.stat_result, peer: Peer) -> bool:
    """Would the console user be allowed to read this (fstat'ed) file themselves?"""
    if peer.uid == 0:
        return True
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == peer.uid:
        return bool(mode & 0o400)
    if st.st_gid == peer.gid or st.st_gid in peer.groups:
        return bool(mode & 0o040)
    return bool(mode & 0o004)


# ----------------------------------------------------------------- masking


def _meter_schema(type_name: str) -> Any:
    from ..config import DRIVER_SCHEMAS
    schema = DRIVER_SCHEMAS.get(type_name)
    if schema is None:
        return None
    for f in schema.fields:
        if f.name == "meters":
            leaf = f.check.items
            return leaf.schema if leaf is not None else None
    return None


def mask_options(values: dict[str, Any], schema: Any) -> dict[str, Any]:
    """Options as JSON-friendly data with every secret field shown as ``***``."""
    specs = {f.name: f for f in schema.fields} if schema is not None else {}
    out = {}
    for k, v in values.items():
        spec = specs.get(k)
        if spec is not None and spec.secret and v is not None:
            out[k] = "***"
            continue
        check = spec.check if spec is not None else None
        out[k] = _mask_value(v, check)
    return out


def _mask_value(v: Any, check: Any) -> Any:
    if isinstance(v, dict):
        sub = check.schema if check is not None else None
        if sub is None and check is not None and check.values is not None:
            sub = check.values.schema
        return mask_options(v, sub)
    if isinstance(v, list):
        inner = check.items if check is not None else None
        return [_mask_value(x, inner) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return "***"  # binary option values are keys in practice
    return v


def config_to_dict(cfg: Any) -> dict[str, Any]:
    from ..config import DRIVER_SCHEMAS
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.name in ("drivers", "warnings", "source_path", "config_hash"):
            continue
        v = getattr(cfg, f.name)
        out[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
    out["drivers"] = [{"type": d.type, "name": d.name,
                       **mask_options(d.options, DRIVER_SCHEMAS.get(d.type))}
                      for d in cfg.drivers]
    return out


__all__ = ["REQUESTS", "RequestHandler", "RequestError", "Context"]

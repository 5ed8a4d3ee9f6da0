"""What each console command answers: plain dicts, rendered by the client (or printed as JSON).

Handlers run on the console's connection thread. They only read the gateway's state (the
health snapshot, the monitor) or call a driver capability on a helper thread bounded by a
timeout, so a slow meter or a hung console never holds anything a driver or the uplink
waits for. Config and key requests are in handlers_config.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import queue
import sqlite3
import threading
import time
from typing import Any, Callable

from .. import __version__
from ..driverset import meter_stats
from ..health import bus_summary
from ..model import now_ms
from ..text import error_text, plural
from .handlers_config import key_bytes, key_path, mask_options, meter_schema  # registers them too
from .lookup import (CALL_TIMEOUT_S, METER_ID_RE, STALE_BACKLOG_S, age_s, all_meter_ids,
                     broker_summary, edge_alarms, edge_reads, failure_count, find_meter,
                     get_arg, human_age, meter_problems, resolve_bus, run_bounded, unknown_meter)
from .monitor import record_to_dict
from .requests import REQUESTS, Arg, Context, RequestError, handles


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
                  "oldest_unsent_age_s": age_s(st.oldest_ts_ms, now)},
        "broker": broker_summary(rt, snap),
        "buses": [bus_summary(b) for b in snap.buses.values()],
        "consoles": ctx.server.connection_count(),
    }


@handles("meters", args={"bus": Arg(str)})
def meters(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    want = get_arg(args, "bus", str, None)
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
    mid = get_arg(args, "id", str)
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
            out["config"] = mask_options(entry, meter_schema(cfg.type))
    return out


@handles("read", role="technician", args={"id": Arg(str), "timeout_s": Arg((int, float))})
def read(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    mid = get_arg(args, "id", str)
    timeout = float(get_arg(args, "timeout_s", (int, float), CALL_TIMEOUT_S))
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
    flt = get_arg(args, "filter", str, None)
    seconds = get_arg(args, "seconds", (int, float), None)
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
    word = get_arg(args, "bus", str)
    seconds = float(get_arg(args, "seconds", (int, float), 60))
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
    word = get_arg(args, "bus", str)
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
    word = get_arg(args, "bus", str, "zigbee")
    seconds = get_arg(args, "seconds", int)
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
               oldest_unsent_age_s=age_s(st.oldest_ts_ms, now), files=files,
               opened=list(rt.store.open_report),
               integrity=quick_check(path, float(get_arg(args, "check_s", (int, float), 5.0))))
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
    age = age_s(st.oldest_ts_ms, now_ms())
    stale = age is not None and age > STALE_BACKLOG_S
    add("warn" if used > 80 or stale else "ok", "store", f"{st.depth} unsent, {used:.1f}% of "
        "the cap" + (f", oldest {human_age(age)} old" if age is not None else ""))
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



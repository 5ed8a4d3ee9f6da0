"""``gateway diag -c CONFIG [--json]``: the health table a field tech reads on site.

It reads what is durable in the store database: the latest diagnostics snapshot the running
gateway committed (every ``edge.diag_interval_s`` and at a clean stop) and the last value of
every register the edge tracks. It opens the database read-only, so it is safe beside a
running gateway and works on a stopped one. Figures are as of the snapshot, which the
header states; live figures will come from the control socket (``gateway console``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
from decimal import Decimal
from typing import Any

import cbor2

from ..text import plural
from .. import events as kinds

EXIT_OK = 0
EXIT_NO_DATA = 1
EXIT_CONFIG = 2

HELP = "print the diagnostics table (per meter and gateway) from the store"


def register(sub: Any) -> None:
    p = sub.add_parser("diag", help=HELP, description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", required=True, help="config file (YAML)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    p.set_defaults(func=run)


def read_table(store_path: str) -> dict[str, Any]:
    """The latest snapshot and register states, as plain JSON-able data."""
    from ..edge.deltas import RegisterState
    from ..edge.diagnostics import CURSOR_DIAG, GATEWAY
    from ..edge.pipeline import CURSOR_REG, CURSOR_RUN
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT meter_id, name, value, updated_ms FROM cursors WHERE name = ? OR name = ? "
            "OR name LIKE ?", (CURSOR_DIAG, CURSOR_RUN, CURSOR_REG + "%")).fetchall()
    finally:
        conn.close()
    out: dict[str, Any] = {"snapshot_ms": None, "gateway": None, "meters": {}, "registers": {},
                           "run": None}
    for meter, name, blob, updated in rows:
        value = cbor2.loads(blob)
        if name == CURSOR_DIAG:
            ts, metrics = value
            if meter == GATEWAY:
                out["gateway"], out["snapshot_ms"] = metrics, ts
            else:
                out["meters"][meter] = {**metrics, "snapshot_ms": ts}
        elif name == CURSOR_RUN and meter == GATEWAY:
            out["run"] = value
        elif name.startswith(CURSOR_REG):
            try:
                st = RegisterState.from_obj(value)
            except (ValueError, TypeError):
                continue
            out["registers"].setdefault(meter, {})[name[len(CURSOR_REG):]] = {
                "value": str(st.value), "read_ms": st.t, "series": st.series,
                "unchanged_since_ms": st.changed_t, "updated_ms": updated}
    return out


def run(args: argparse.Namespace) -> int:
    from ..cli import load_or_report
    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    path = cfg.store.path
    if not os.path.exists(path):
        print(f"error: no store at {path} (has the gateway run yet?)", file=sys.stderr)
        return EXIT_NO_DATA
    try:
        table = read_table(path)
    except sqlite3.Error as exc:
        print(f"error: cannot read the store {path}: {exc}", file=sys.stderr)
        return EXIT_NO_DATA
    if args.json:
        print(json.dumps(table, sort_keys=True, default=str))
    else:
        width = shutil.get_terminal_size().columns - 1 if sys.stdout.isatty() else None
        print(render(table, cfg.gateway.id, int(time.time() * 1000), width))
    return EXIT_OK if table["gateway"] is not None or table["registers"] else EXIT_NO_DATA


# --------------------------------------------------------------------------- rendering


def age(ts: int | None, now: int) -> str:
    if ts is None:
        return "never"
    s = max(0, now - ts) // 1000
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit} ago"
    return f"{s}s ago"


def _size(n: Any) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def _secs(v: Any) -> str:
    """A duration as a person writes it: ``none`` when there is none."""
    if v is None:
        return "none"
    from ..console.render import duration
    return duration(float(v))


def exact(v: str) -> str:
    """An exact decimal in positional form, never exponent form (``1.499E+4`` -> ``14990``)."""
    try:
        return format(Decimal(v), "f")
    except ArithmeticError:
        return v


def drift_ms(m: dict[str, Any], regs: dict[str, Any]) -> float | None:
    """The meter clock's offset: the edge's (judged on a synced gateway clock), else the
    driver's own measurement (DLMS ``clock_drift_s``), else its ``clock.drift`` register."""
    if m.get("clock_drift_ms") is not None:
        return float(m["clock_drift_ms"])
    drv = m.get("driver") or {}
    if isinstance(drv.get("clock_drift_s"), (int, float)):
        return float(drv["clock_drift_s"]) * 1000
    reg = regs.get(kinds.CLOCK_DRIFT)
    if reg is not None:
        try:
            return float(Decimal(reg["value"]) * 1000)
        except ArithmeticError:
            return None
    return None


def _drift(ms: float | None) -> str:
    if ms is None:
        return "-"
    s = ms / 1000
    return f"{s:+.1f}s" if abs(s) < 10 else f"{s:+.0f}s"


def attention(m: dict[str, Any]) -> list[str]:
    """Why a meter's row is a warning: active alarms, missed or only invalid readings."""
    out = sorted(m.get("alarms") or {})
    if m.get("missed_readings") and not any(a.startswith("silent") for a in out):
        out.append(f"missed {plural(m['missed_readings'], 'reading')}")
    if m.get("invalid_values") and not m.get("reads_ok") and "invalid_values" not in out:
        out.append("only invalid values")
    return out


_HEAD = ("METER", "BUS", "LAST SEEN", "OK/FAIL", "RATIO", "IN-ROW", "CRC", "KEY", "RSSI",
         "DRIFT", "GAPS", "REGISTERS", "ALARMS")


def _meter_rows(t: dict[str, Any], now: int) -> tuple[tuple[str, ...], list[tuple[str, ...]],
                                                     list[str]]:
    """The table's head, one row per meter, and the meters that need attention (why)."""
    head = _HEAD
    rows = []
    troubled: list[str] = []
    meters = sorted(set(t["meters"]) | set(t["registers"]))
    for mid in meters:
        m = t["meters"].get(mid, {})
        rssi = m.get("rssi_dbm") or {}
        regs = t["registers"].get(mid, {})
        units = m.get("units") or {}
        ratio = m.get("success_ratio")
        why = attention(m)
        if why:
            troubled.append(f"{mid} ({', '.join(why)})")
        rows.append((
            mid, m.get("bus") or "-", age(m.get("last_seen_ms") or max(
                (r["read_ms"] for r in regs.values()), default=None), now),
            f"{m.get('reads_ok', '-')}/{m.get('reads_failed', '-')}",
            "-" if ratio is None else f"{ratio * 100:.0f}%",
            str(m.get("consecutive_failures", "-")),
            str(m.get("crc_errors", "-")),
            str(m.get("decrypt_failures", 0) + m.get("auth_failures", 0)) if m else "-",
            f"{rssi.get('mean')}/{rssi.get('last')}" if rssi else "-",
            _drift(drift_ms(m, regs)),
            str(m.get("gaps", "-")),
            " ".join(f"{q}={exact(r['value'])}" + (f" {units[q]}" if units.get(q) else "")
                     for q, r in sorted(regs.items()) if q != kinds.CLOCK_DRIFT) or "-",
            ("WARN " + ",".join(why)) if why else "ok",
        ))
    return head, rows, troubled


def render(t: dict[str, Any], gateway_id: str, now: int, width: int | None = None) -> str:
    from ..console.render import table_lines, wrap_lines
    lines: list[str] = []

    def say(text: str, indent: int = 2) -> None:
        lines.extend(wrap_lines("", text, indent, width) if width else [text])

    g = t["gateway"]
    gw_alarms: list[str] = []
    if g is None:
        say(f"gateway {gateway_id}: no diagnostics snapshot yet (one is written every "
            "edge.diag_interval_s and at a clean stop)")
    else:
        clock = g.get("clock") or {}
        say(f"gateway {gateway_id}: snapshot {age(t['snapshot_ms'], now)}, up "
            f"{_secs(g.get('uptime_s'))}, boot reason {g.get('boot_reason')}, clock "
            + ("synchronised" if clock.get("synced") else "NOT synchronised"))
        say(f"  store: {g.get('store_depth')} unsent, oldest unsent "
            f"{_secs(g.get('oldest_unsent_s'))}, {g.get('records_evicted', 0)} evicted | "
            "broker: " + ("connected" if g.get("broker_connected") else "DISCONNECTED")
            + f", {plural(g.get('broker_reconnects', 0), 'reconnect')}")
        load = g.get("load")
        say(f"  board: load {' '.join(map(str, load)) if load else 'unknown'}, temperature "
            + (f"{g['temperature_c']:g} C" if g.get("temperature_c") is not None
               else "unknown")
            + f", memory {_size(g.get('mem_available_bytes'))} free, disk "
            f"{_size(g.get('disk_free_bytes'))} free")
        if g.get("alarms"):
            gw_alarms = sorted(g["alarms"])
            say("  ALARMS: " + ", ".join(f"{r} since {age(s, now)}"
                                          for r, s in sorted(g["alarms"].items())))
    head, rows, troubled = _meter_rows(t, now)
    wide = table_lines(head, rows, width=None)
    if width is None or max(map(len, wide)) <= width:
        lines += wide
    else:  # a narrow terminal: one block per meter, every figure labelled, nothing cut
        for r in rows:
            f = dict(zip(head, r))
            say(f"{f['METER']} on {f['BUS']}: {f['ALARMS']}", 4)
            say(f"  last seen {f['LAST SEEN']}; reads ok/failed {f['OK/FAIL']} "
                f"({f['RATIO']}), {f['IN-ROW']} failed in a row; CRC errors {f['CRC']}, "
                f"key failures {f['KEY']}", 4)
            say(f"  RSSI mean/last {f['RSSI']}; clock drift {f['DRIFT']}; gaps {f['GAPS']}",
                4)
            say(f"  registers: {f['REGISTERS']}", 4)
    if not rows:
        lines.append("(no meters seen yet)")
    if troubled or gw_alarms:
        parts = ([f"gateway ({', '.join(gw_alarms)})"] if gw_alarms else []) + troubled
        say(f"overall: WARN: {plural(len(troubled), 'meter')} need attention"
            + (" and the gateway" if gw_alarms else "") + ": " + "; ".join(parts), 2)
    elif g is not None:
        say("overall: OK")
    return "\n".join(lines)

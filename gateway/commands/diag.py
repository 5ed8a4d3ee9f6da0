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
import sqlite3
import sys
import time
from decimal import Decimal
from typing import Any

import cbor2

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
        print(render(table, cfg.gateway.id, int(time.time() * 1000)))
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


def render(t: dict[str, Any], gateway_id: str, now: int) -> str:
    lines = []
    g = t["gateway"]
    if g is None:
        lines.append(f"gateway {gateway_id}: no diagnostics snapshot yet (one is written every "
                     "edge.diag_interval_s and at a clean stop)")
    else:
        clock = g.get("clock") or {}
        lines += [
            f"gateway {gateway_id}: snapshot {age(t['snapshot_ms'], now)}, up {g.get('uptime_s')} s"
            f", boot reason {g.get('boot_reason')}, clock "
            + ("synchronised" if clock.get("synced") else "NOT synchronised"),
            f"  store: {g.get('store_depth')} unsent, oldest {g.get('oldest_unsent_s')} s, "
            f"{g.get('records_evicted', 0)} evicted | broker: "
            + ("connected" if g.get("broker_connected") else "DISCONNECTED")
            + f", {g.get('broker_reconnects', 0)} reconnects",
            f"  board: load {g.get('load')}, temperature {g.get('temperature_c', '-')} C, "
            f"memory {_size(g.get('mem_available_bytes'))} free, disk "
            f"{_size(g.get('disk_free_bytes'))} free",
        ]
        if g.get("alarms"):
            lines.append("  ALARMS: " + ", ".join(f"{r} since {age(s, now)}"
                                                 for r, s in sorted(g["alarms"].items())))
    head = ("METER", "BUS", "LAST SEEN", "OK/FAIL", "RATIO", "IN-ROW", "CRC", "KEY", "RSSI",
            "DRIFT", "GAPS", "REGISTERS", "ALARMS")
    rows = [head]
    meters = sorted(set(t["meters"]) | set(t["registers"]))
    for mid in meters:
        m = t["meters"].get(mid, {})
        rssi = m.get("rssi_dbm") or {}
        regs = t["registers"].get(mid, {})
        ratio = m.get("success_ratio")
        drift = m.get("clock_drift_ms")
        rows.append((
            mid, m.get("bus") or "-", age(m.get("last_seen_ms") or max(
                (r["read_ms"] for r in regs.values()), default=None), now),
            f"{m.get('reads_ok', '-')}/{m.get('reads_failed', '-')}",
            "-" if ratio is None else f"{ratio * 100:.0f}%",
            str(m.get("consecutive_failures", "-")),
            str(m.get("crc_errors", "-")),
            str(m.get("decrypt_failures", 0) + m.get("auth_failures", 0)) if m else "-",
            f"{rssi.get('mean')}/{rssi.get('last')}" if rssi else "-",
            "-" if drift is None else f"{drift / 1000:+.0f}s",
            str(m.get("gaps", "-")),
            " ".join(f"{q}={_short(r['value'])}" for q, r in sorted(regs.items())) or "-",
            ",".join(sorted(m.get("alarms") or {})) or "ok",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if len(rows) == 1:
        lines.append("(no meters seen yet)")
    return "\n".join(lines)


def _short(v: str) -> str:
    d = Decimal(v)
    return str(d.normalize()) if abs(d) < 10**12 else v

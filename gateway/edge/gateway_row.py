"""The gateway's own row of the diagnostics table: why it booted, the board (/proc, /sys),
the store and the uplink (from the health snapshot).

Apart from the per-meter rules (edge/diagnostics.py): this is all reading the machine.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Any, Callable, Mapping


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def boot_id() -> str | None:
    v = _read("/proc/sys/kernel/random/boot_id")
    return v.strip() if v else None


def system_uptime_s() -> float | None:
    v = _read("/proc/uptime")
    try:
        return float(v.split()[0]) if v else None
    except (ValueError, IndexError):
        return None


def watchdog_reset() -> bool:
    """The hardware watchdog says it caused the last reset (WDIOF_CARDRESET)."""
    for p in glob.glob("/sys/class/watchdog/watchdog*/bootstatus"):
        v = _read(p)
        try:
            if v and int(v.strip(), 0) & 0x0020:
                return True
        except ValueError:
            continue
    return False


def boot_reason(previous: Mapping[str, Any] | None, current_boot: str | None) -> str:
    """Why this process started, from the marker the previous run left in the store.

    first_start, restart (clean stop, same boot), crash (same boot, no clean stop), reboot
    (new boot after a clean stop), power_loss (new boot, the previous run never stopped: a
    power cut, a kernel panic or a hard reset), watchdog (the hardware watchdog reset it).
    """
    if not previous:
        return "first_start"
    same_boot = current_boot is not None and previous.get("boot_id") == current_boot
    clean = bool(previous.get("clean_stop"))
    if same_boot:
        return "restart" if clean else "crash"
    if watchdog_reset():
        return "watchdog"
    return "reboot" if clean else "power_loss"


def board_metrics(store_dir: str) -> dict[str, Any]:
    """CPU load, SoC temperature, memory, disk: whatever this board exposes."""
    out: dict[str, Any] = {}
    try:
        out["load"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    out["cpus"] = os.cpu_count()
    temps = []
    for p in sorted(glob.glob("/sys/class/thermal/thermal_zone*/temp")):
        v = _read(p)
        try:
            if v:
                temps.append(int(v.strip()) / 1000)
        except ValueError:
            continue
    if temps:
        out["temperature_c"] = max(temps)
    mem = _read("/proc/meminfo")
    if mem:
        info = {}
        for line in mem.splitlines():
            k, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                info[k] = int(parts[0]) * 1024
        if "MemAvailable" in info:
            out["mem_available_bytes"] = info["MemAvailable"]
        if "MemTotal" in info:
            out["mem_total_bytes"] = info["MemTotal"]
    statm = _read("/proc/self/statm")
    if statm:
        try:
            out["rss_bytes"] = int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, IndexError, OSError):
            pass
    try:
        st = os.statvfs(store_dir)
        out["disk_free_bytes"] = st.f_bavail * st.f_frsize
        out["disk_total_bytes"] = st.f_blocks * st.f_frsize
    except OSError:
        pass
    up = system_uptime_s()
    if up is not None:
        out["system_uptime_s"] = round(up)
    return out


def gateway_metrics(*, store: Any, uplink: Mapping[str, Any] | None, started_mono: float, boot: str,
                    clock: Mapping[str, Any], edge: Mapping[str, Any],
                    now: int, board: Callable[[str], dict[str, Any]] = board_metrics
                    ) -> dict[str, Any]:
    """The gateway's row of the table."""
    g: dict[str, Any] = {"uptime_s": round(time.monotonic() - started_mono),
                         "boot_reason": boot, "clock": dict(clock), "edge": dict(edge)}
    if store is not None:
        st = store.stats()
        g.update(store_depth=st.depth, store_bytes=st.bytes, records_evicted=st.evicted_records,
                 gap_records=st.gap_records, store_full_errors=st.full_errors,
                 oldest_unsent_s=None if st.oldest_ts_ms is None
                 else max(0, (now - st.oldest_ts_ms) // 1000))
        g.update(board(os.path.dirname(os.path.abspath(store.path))))
    if uplink:  # the health snapshot's uplink part
        g.update(broker_connected=uplink["connected"], broker_since_ms=uplink["since_ms"],
                 broker_reconnects=max(0, uplink["connect_attempts"] - 1),
                 broker_connect_failures=uplink["connect_failures"],
                 broker_last_error=uplink["last_error"], messages_acked=uplink["messages_acked"])
    return g

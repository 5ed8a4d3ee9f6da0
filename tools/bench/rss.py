"""Memory with a large backlog, and CPU when idle, of the real gateway process.

    python -m tools.bench.rss [--backlog 1000000] [--meters 1000] [--seconds 10] [--idle-seconds 20]

1. **Peak RSS**: a store file is pre-filled in-process with BACKLOG readings (through
   ``gateway.store.Store``, big batches), then ``python -m gateway run -c CFG`` is started
   on it with 1,000 simulated meters while the broker is unreachable (the uplink points at
   a free port where nothing listens; valid dev PKI). Its VmRSS/VmHWM (/proc/PID/status)
   are sampled for ~10 s; the figure is the peak (VmHWM). Target < 60 MB.
2. **Idle CPU**: a fresh gateway with 1,000 meters at ``interval_s: 900`` (15-minute
   readings) and a reachable mutual-TLS Mosquitto; once connected and settled, its
   utime+stime (/proc/PID/stat) over a window, as % of one core. Target < 2 %.

The last line is ``peak_rss_mb=.. idle_cpu_pct=..``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from gateway.store import Store
from tools.broker import Broker, free_port

from .common import (QUARTER_MS, Env, bench_env, make_readings, proc_cpu_s, proc_status,
                     wait_until)

TARGET_RSS_MB = 60.0
TARGET_IDLE_PCT = 2.0
ROOT = Path(__file__).resolve().parents[2]
Out = Callable[[str], None]


def write_config(env: Env, path: Path, store_path: Path, port: int, meters: int,
                 interval_s: float) -> Path:
    cfg = {
        "gateway": {"id": "gw-0001", "board": "generic-linux"},
        "store": {"path": str(store_path), "max_bytes": "1GiB"},
        "uplink": {"host": "localhost", "port": port, "ca": str(env.pki / "ca.pem"),
                   "cert": str(env.pki / "gateway.pem"), "key": str(env.pki / "gateway.key"),
                   "signing_key": str(env.pki / "gateway-sign.key"), "topic_prefix": "bench",
                   "reconnect_min_s": 1, "reconnect_max_s": 60},
        "drivers": [{"type": "simulated", "name": "sim", "meters": meters,
                     "interval_s": interval_s}],
        "logging": {"level": "info"},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class Gateway:
    """`python -m gateway run -c CFG` as a child process, stderr in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._f = open(log, "wb")
        self.p = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                                  cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=self._f, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def pid(self) -> int:
        return self.p.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float) -> bool:
        return wait_until(lambda: needle in self.text() or self.p.poll() is not None,
                          timeout, 0.05) and needle in self.text()

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        try:
            if self.p.poll() is None:
                self.p.send_signal(signal.SIGTERM)
                try:
                    return self.p.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.p.kill()
                    self.p.wait(10)
                    return None
            return self.p.returncode
        finally:
            self._f.close()


def _kib(v: str) -> int:
    return int(v.split()[0])


def prefill(store_path: Path, n: int, meters: int, out: Out, batch: int = 50_000) -> float:
    """Write n readings into a new store file (in-process, big group commits)."""
    t0 = time.perf_counter()
    done = 0
    with Store(store_path, max_bytes=2**30, commit_max_records=batch) as store:
        tick = 0
        while done < n:
            # one batch at a time keeps this process's memory small too
            part = make_readings(min(batch, n - done), meters,
                                 start_ms=1_704_067_200_000 + tick * QUARTER_MS)
            store.append(part, timeout=120)
            done += len(part)
            tick += max(1, len(part) // meters)
        depth = store.stats().depth
    dt = time.perf_counter() - t0
    size = sum(os.path.getsize(str(store_path) + s) for s in ("", "-wal")
               if os.path.exists(str(store_path) + s))
    out(f"  backlog: {depth} records pre-filled in {dt:.1f} s ({size / 2**20:.0f} MiB on disk)")
    if depth != n:
        raise RuntimeError(f"pre-fill left {depth} records, expected {n}")
    return dt


def rss_phase(env: Env, backlog: int, meters: int, seconds: float, interval_s: float,
              out: Out) -> dict[str, Any]:
    store_path = env.tmp / "backlog.db"
    prefill(store_path, backlog, meters, out)
    port = free_port()  # nothing listens here: the broker is "unreachable"
    cfg = write_config(env, env.tmp / "rss.yaml", store_path, port, meters, interval_s)
    gw = Gateway(cfg, env.tmp / "gw-rss.log")
    samples: list[tuple[float, int, int]] = []
    try:
        t0 = time.monotonic()
        running_at = None
        end = t0 + seconds
        while time.monotonic() < end + (running_at is None) * 60 and gw.alive():
            try:
                st = proc_status(gw.pid)
            except FileNotFoundError:
                break
            samples.append((time.monotonic() - t0, _kib(st.get("VmRSS", "0 kB")),
                            _kib(st.get("VmHWM", "0 kB"))))
            if running_at is None and " running:" in gw.text():
                running_at = time.monotonic() - t0
                end = time.monotonic() + seconds  # ~10 s of operation after start-up
            time.sleep(0.1)
        if not gw.alive():
            raise RuntimeError(f"gateway exited early:\n{gw.text()[-3000:]}")
        st = proc_status(gw.pid)
        hwm = _kib(st["VmHWM"])
        rss = _kib(st["VmRSS"])
        threads = int(st.get("Threads", "0"))
        cpu = proc_cpu_s(gw.pid)
    finally:
        rc = gw.stop()
    log = gw.text()
    attempts = log.count("uplink: still failing") + log.count("level=error comp=uplink")
    peak = max([hwm] + [s[2] for s in samples])
    out(f"  gateway pid {gw.pid}: running after {running_at or float('nan'):.1f} s; "
        f"peak RSS (VmHWM) {peak / 1024:.1f} MiB = {peak * 1024 / 1e6:.1f} MB, RSS at end {rss / 1024:.1f} MiB, "
        f"{threads} threads, {cpu:.2f} s CPU, ~{attempts} failed connects logged; exit {rc}")
    # A coarse RSS timeline: where the memory came from (start-up vs. operation).
    marks = [s for i, s in enumerate(samples) if i % max(1, len(samples) // 8) == 0]
    out("  RSS timeline: " + ", ".join(f"{t:.1f}s {r / 1024:.1f}MiB" for t, r, _ in marks))
    for line in log.splitlines():
        if "comp=store" in line and "unsent records" in line:
            out("  gateway log: " + line.split("msg=", 1)[-1].strip('"'))
    return {"peak_rss_mb": peak / 1024, "rss_end_mb": rss / 1024, "running_after_s": running_at,
            "exit": rc}


def idle_phase(env: Env, meters: int, settle: float, window: float, out: Out) -> dict[str, Any]:
    broker = Broker(env.pki, data_dir=env.tmp / "broker", acl=False)  # as in common.bench_env
    broker.start()
    try:
        cfg = write_config(env, env.tmp / "idle.yaml", env.tmp / "idle.db", broker.port, meters,
                           900)
        gw = Gateway(cfg, env.tmp / "gw-idle.log")
        try:
            if not gw.wait_log("uplink: connected", 30):
                raise RuntimeError(f"gateway did not connect:\n{gw.text()[-3000:]}")
            time.sleep(settle)  # the first tick (1,000 readings at start) gets sent and acked
            if not gw.alive():
                raise RuntimeError(f"gateway exited early:\n{gw.text()[-3000:]}")
            w0, c0 = time.monotonic(), proc_cpu_s(gw.pid)
            wall0 = time.time()
            time.sleep(window)
            w1, c1 = time.monotonic(), proc_cpu_s(gw.pid)
            wall1 = time.time()
            rss = _kib(proc_status(gw.pid)["VmRSS"]) / 1024
        finally:
            rc = gw.stop()
    finally:
        broker.close()
    pct = (c1 - c0) / (w1 - w0) * 100
    q = QUARTER_MS / 1000
    tick = int(wall1 // q) != int(wall0 // q)
    out(f"  idle: {meters} meters every 15 min, broker connected; {c1 - c0:.3f} s CPU in "
        f"{w1 - w0:.1f} s = {pct:.2f} % of one core (RSS {rss:.1f} MiB; exit {rc})"
        + ("; a 15-minute tick fell in the window" if tick else ""))
    return {"idle_cpu_pct": pct, "tick_in_window": tick}


def run(backlog: int = 1_000_000, meters: int = 1000, seconds: float = 10.0,
        rss_interval_s: float = 1.0, settle: float = 5.0, idle_seconds: float = 20.0,
        base_dir: str | None = None, keep: bool = False, out: Out = print) -> dict[str, Any]:
    out(f"rss: gateway with {meters} simulated meters (every {rss_interval_s:g} s) and a "
        f"{backlog}-record backlog, broker unreachable, ~{seconds:g} s; then idle CPU with "
        f"{meters} meters every 15 min for {idle_seconds:g} s")
    with bench_env("bench-rss-", broker=False, keep=keep, base_dir=base_dir) as env:
        if keep:
            out(f"  files (kept): {env.tmp}")
        r = rss_phase(env, backlog, meters, seconds, rss_interval_s, out)
        i = idle_phase(env, meters, settle, idle_seconds, out)
    s = {**r, **i}
    ok_rss = s["peak_rss_mb"] < TARGET_RSS_MB
    ok_cpu = s["idle_cpu_pct"] < TARGET_IDLE_PCT
    out(f"{'PASS' if ok_rss else 'FAIL'}  peak RSS < {TARGET_RSS_MB:.0f} MB: "
        f"{s['peak_rss_mb']:.1f} MiB ({s['peak_rss_mb'] * 2**20 / 1e6:.1f} MB decimal)")
    out(f"{'PASS' if ok_cpu else 'FAIL'}  idle CPU < {TARGET_IDLE_PCT:g} %: "
        f"{s['idle_cpu_pct']:.2f} %")
    s["pass"] = ok_rss and ok_cpu
    out(f"peak_rss_mb={s['peak_rss_mb']:.1f} idle_cpu_pct={s['idle_cpu_pct']:.2f}")
    return s


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.rss", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backlog", type=int, default=1_000_000, help="records pre-filled")
    ap.add_argument("--meters", type=int, default=1000, help="simulated meters")
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="how long the backlog gateway runs after start-up")
    ap.add_argument("--interval", type=float, default=1.0,
                    help="simulated driver interval in the RSS phase, seconds")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="idle phase: seconds after connecting before the CPU window")
    ap.add_argument("--idle-seconds", type=float, default=20.0, help="idle CPU window")
    ap.add_argument("--dir", help="where the temp files go (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, store)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    a = ap.parse_args(argv)
    if a.backlog < 1 or a.meters < 1 or a.seconds <= 0 or a.idle_seconds <= 0:
        ap.error("sizes and times must be positive")
    s = run(a.backlog, a.meters, a.seconds, a.interval, a.settle, a.idle_seconds, a.dir, a.keep)
    return 1 if a.strict and not s["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the real gateway and the real head-end as subprocesses, as an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp: Path, pki: Path, port: int, *, drivers: list[dict[str, Any]] | None = None,
                 store: dict[str, Any] | None = None, uplink: dict[str, Any] | None = None,
                 name: str = "gateway.yaml", gateway_id: str = "gw-0001") -> Path:
    cfg = {
        "gateway": {"id": gateway_id, "board": "generic-linux"},
        "store": {"path": str(tmp / "store.db"), "max_bytes": "64MiB", **(store or {})},
        "uplink": {"host": "localhost", "port": port, "ca": str(pki / "ca.pem"),
                   "cert": str(pki / "gateway.pem"), "key": str(pki / "gateway.key"),
                   "signing_key": str(pki / "gateway-sign.key"), "topic_prefix": "meters",
                   "reconnect_min_s": 0.2, "reconnect_max_s": 1, **(uplink or {})},
        "drivers": drivers or [{"type": "simulated", "name": "sim", "meters": 50,
                                "interval_s": 0.1}],
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class Proc:
    """A subprocess whose stderr goes to a file we can read while it runs."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._f = open(log, "ab")
        self.p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._f,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return True
            if self.p.poll() is not None:
                return needle in self.text()
            time.sleep(0.05)
        return False

    def terminate(self, timeout: float = 20.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        finally:
            self._f.close()

    def kill(self) -> None:
        self.p.kill()
        self.p.wait(10)
        self._f.close()

    def stdout(self, timeout: float = 60.0) -> str:
        out, _ = self.p.communicate(timeout=timeout)
        self._f.close()
        return out.decode()


def start_gateway(config: Path, log: Path) -> Proc:
    return Proc([sys.executable, "-m", "gateway", "run", "-c", str(config)], log)


def start_headend(pki: Path, port: int, log: Path, *extra: str) -> Proc:
    proc = Proc([sys.executable, "-m", "tools.headend", "--host", "localhost", "--port", str(port),
                 "--pki", str(pki), "--json", *extra], log)
    return proc


def headend_summary(proc: Proc, timeout: float = 90.0) -> dict[str, Any]:
    out = proc.stdout(timeout)
    lines = [l for l in out.splitlines() if l.strip()]
    assert lines, f"head-end printed nothing; its log:\n{proc.text()[-3000:]}"
    return json.loads(lines[-1])


class Restarter:
    """Runs ``argv`` again whenever it exits (systemd's Restart=always), at most 12 times;
    each run logs to tmp/gw-N.log."""

    def __init__(self, argv: list[str], tmp: Path, pause_s: float = 0.2) -> None:
        self.argv, self.tmp, self.pause_s = argv, tmp, pause_s
        self.starts = 0
        self.exits: list[int] = []
        self.proc: Proc | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.starts < 12:
            self.starts += 1
            self.proc = Proc(self.argv, self.tmp / f"gw-{self.starts}.log")
            self.exits.append(self.proc.p.wait())
            self._stop.wait(self.pause_s)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.p.send_signal(signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.tmp.glob("gw-*.log")))

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.p.poll() is None:
            self.proc.p.send_signal(signal.SIGTERM)
            try:
                self.proc.p.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.p.kill()
        self._thread.join(40)

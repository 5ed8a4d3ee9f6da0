"""A field tech on an 80x24 serial terminal: every console command (and `gateway diag`) run
under a real pseudo-terminal of that size against a REAL gateway reading a simulated Zigbee
network (one device silent, one sending the invalid sentinel, one polled), a wired M-Bus and
a simulated bus with long meter ids. No line may be longer than 80 columns and nothing may
be cut: every meter id, error and value is shown whole. The health views must be honest."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.waiting import poll_until
from tests.gwproc import ROOT
from tools.broker import Broker

COLS, ROWS = 80, 24
LONG_PREFIX = "substation-north-feeder-7-trafo-"
_ESC = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_terminal(argv: list[str], stdin: str | None = None, timeout: float = 90) -> tuple[int, str]:
    """Run ``argv`` with stdin/stdout/stderr on an 80x24 pty; its exit code and screen."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {**os.environ, "TERM": "vt100", "COLUMNS": str(COLS), "LINES": str(ROWS),
           "NO_COLOR": "1"}
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env,
                         start_new_session=True)
    os.close(slave)
    raw = b""
    deadline = time.monotonic() + timeout
    try:
        if stdin is not None:
            os.write(master, stdin.encode())
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break  # the child closed its side
                if not data:
                    break
                raw += data
            elif p.poll() is not None:
                break
        rc = p.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        os.close(master)
    return rc, _ESC.sub("", raw.decode(errors="replace")).replace("\r", "")


def fits(screen: str, what: str) -> list[str]:
    lines = screen.splitlines()
    for line in lines:
        assert len(line) <= COLS, f"{what}: {len(line)} columns: {line!r}"
    assert "~" not in screen, f"{what}: something was cut:\n{screen}"
    return lines


@pytest.fixture(scope="module")
def site(pki: Path, module_broker: Broker,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.test_console import _start, _stop
    from tools.sim import mbus
    from tools.sim import xbee as simxbee
    tmp = tmp_path_factory.mktemp("site")
    zb = simxbee.start(simxbee.default_devices(6), report_interval_s=1.0)
    wired = mbus.start()
    drivers = [
        {"type": "zigbee", "name": "zigbee", "serial": {"port": zb.device},
         "report_min_s": 0, "report_max_s": 1, "poll_interval_s": 1, "response_timeout_s": 1,
         "retries": 1},
        {"type": "mbus", "name": "heat-bus", "interval_s": 600, "response_timeout_ms": 250,
         "retries": 1, "serial": {"port": wired.device, "baud": 2400, "parity": "N"},
         "meters": [{"primary": 5, "name": "heat"}, {"secondary": "44001122"}]},
        {"type": "simulated", "name": "sim", "meters": 2, "interval_s": 0.5,
         "meter_prefix": LONG_PREFIX},
    ]
    gw = _start(tmp, pki, module_broker.port, drivers,
                extra={"edge": {"diag_interval_s": 2}})
    try:
        assert gw.proc.wait_for_log("uplink: connected", 30), gw.proc.text()
        gw.devices = {d.kind: d.meter_id for d in zb.devices.values()}
        yield gw
    finally:
        try:
            _stop(gw)
        finally:
            zb.stop()
            wired.stop()


def console(site: Any, *words: str, stdin: str | None = None) -> tuple[int, str]:
    return on_terminal([sys.executable, "-m", "gateway", "console", "--socket", site.sock,
                        *words], stdin)



def _until(get: Any, ok: Any, timeout: float = 40.0) -> Any:
    return poll_until(get, ok, timeout, 0.3)


def test_diag_is_honest_about_a_silent_device_and_invalid_values(site):
    silent, invalid = site.devices["silent"], site.devices["invalid"]

    def warned(d: dict[str, Any]) -> bool:
        c = {x["what"]: x for x in d["checks"]}
        return f"meter {silent}" in c and f"meter {invalid}" in c
    d = _until(lambda: site.json("diag"), warned)
    checks = {c["what"]: c for c in d["checks"]}
    assert d["overall"] in ("warn", "fail") and checks["bus zigbee"]["level"] == "warn"
    assert "need attention" in checks["bus zigbee"]["detail"]
    assert checks[f"meter {silent}"]["level"] == "warn"
    assert "silent" in checks[f"meter {silent}"]["detail"]
    assert "invalid values" in checks[f"meter {invalid}"]["detail"]
    assert f"meter {site.devices['electric']}" not in checks  # a healthy one stays quiet
    rc, screen = console(site, "diag")
    lines = fits(screen, "diag")
    assert rc == 0 and lines[-1].startswith("overall: WARN")
    assert re.search(r"\[WARN\] bus zigbee: ", screen)
    for mid in (silent, invalid):
        assert f"[WARN] meter {mid}: " in screen, screen


def test_gateway_diag_table_warns_and_fits_on_a_terminal(site):
    silent = site.devices["silent"]
    argv = [sys.executable, "-m", "gateway", "diag", "-c", str(site.cfg)]

    def snapshot() -> dict[str, Any]:
        r = subprocess.run(argv + ["--json"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else {"meters": {}}
    table = _until(snapshot, lambda t: (t["meters"].get(silent) or {}).get("alarms", {})
                   .get("silent"))  # a snapshot every edge.diag_interval_s (2 s here)
    m = table["meters"][silent]
    assert m["missed_readings"] >= 1 and m["success_ratio"] < 1, m
    wide = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    row = next((l for l in wide.splitlines() if l.startswith(silent)), wide)
    assert "100%" not in row and "WARN " in row and "silent" in row, row
    assert wide.rstrip().splitlines()[-1].startswith("overall: WARN:"), wide
    assert "None" not in wide and "E+" not in wide, wide
    rc, screen = on_terminal(argv)
    lines = fits(screen, "gateway diag")
    assert rc == 0 and any(l.startswith(silent) for l in lines), screen


def test_every_command_fits_80x24_and_nothing_is_cut(site):
    zb = site.devices
    long_ids = [f"{LONG_PREFIX}{i:05d}" for i in (1, 2)]
    _until(lambda: site.json("meters")["meters"], lambda ms: len(ms) >= 10)
    screens: dict[str, str] = {}
    for words in (["status"], ["meters"], ["meters", "zigbee"], ["meter", zb["electric"]],
                  ["meter", long_ids[0]], ["read", zb["water_polled"]], ["read", "heat"],
                  ["read", long_ids[1]], ["diag"], ["store"], ["uplink"], ["config", "show"],
                  ["config", "check", str(site.cfg)], ["help"], ["help", "keys", "set"],
                  ["tail", "--seconds", "2"], ["scan", "mbus"], ["fleet"],
                  ["listen", "wmbus", "2"], ["meters", "nobus"], ["keys", "set", "nosuch"],
                  ["zigbee", "permit-join", "0"]):
        rc, screen = console(site, *words)
        name = " ".join(words)
        fits(screen, name)
        screens[name] = screen
        assert "Traceback" not in screen, (name, screen)
        if os.environ.get("SCREENS"):
            with open(os.environ["SCREENS"], "a") as f:
                f.write(f"===== {name} (exit {rc})\n{screen}\n")
    # every meter whole in `meters`, each on its own row
    for mid in list(zb.values()) + long_ids + ["heat"]:
        assert re.search(rf"^{re.escape(mid)}(\s|$)", screens["meters"], re.M), \
            (mid, screens["meters"])
    assert screens["meters"].rstrip().endswith("meters")
    # LAST VALUE is the main register (the cumulative index), not the record that came last
    rows = {m["id"]: m for m in site.json("meters")["meters"]}
    assert rows[zb["electric"]]["quantity"] == "1-0:1.8.0"  # its AC values come after it
    assert rows[zb["gas"]]["quantity"] == "7-0:3.0.0"
    assert rows["heat"]["quantity"] == "Energy" and rows["heat"]["unit"] == "kWh"
    # a meter that misses its readings is not "100 %"
    assert rows[zb["silent"]]["success_ratio"] < 1 and "silent" in rows[zb["silent"]]["flags"]
    # config show lists the meters of each driver
    assert "- primary=5, name=heat" in screens["config show"]
    assert "- secondary=44001122" in screens["config show"]
    assert "2 meters (simulated)" in screens["config show"]
    # read aligns the values whatever the register names are: they all end in one column
    for name in ("read heat", f"read {zb['water_polled']}"):
        found = [re.match(r" {2}(?:\S.*?)? {2,}(-?\d[\d.]*) ", line)
                 for line in screens[name].splitlines()[1:]]
        ends = {m.end(1) for m in found if m}
        assert len([m for m in found if m]) >= 2 and len(ends) == 1, (name, screens[name])
    assert "on zigbee" in screens[f"read {zb['water_polled']}"]
    assert "8-0:1.0.0" in screens[f"read {zb['water_polled']}"]
    # honest, readable messages
    assert re.search(r"negotiated \(TLS >= 1\.2 required\)|TLSv1\.[23] negotiated",
                     screens["uplink"].replace("\n", " ")), screens["uplink"]
    assert "there is no bus 'nobus'" in screens["meters nobus"]
    assert "no meter 'nosuch' on any bus" in screens["keys set nosuch"]
    assert "no wmbus bus is configured" in " ".join(screens["listen wmbus 2"].split())
    assert "1 drivers" not in " ".join(screens.values())
    assert re.search(r"-- \d+ devices? found on heat-bus", screens["scan mbus"])


"""tools/install.sh staged into a temp root (no root, no systemctl): the A/B layout, the
launcher outside the slots, a hardened Type=notify unit, the board's hardware watchdog; and
the staged launcher really starts the staged release."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_install_stages_a_hardened_service(tmp_path):
    dest = tmp_path / "stage"
    r = subprocess.run(["sh", str(ROOT / "tools" / "install.sh"), "--dest", str(dest),
                        "--board", "siemens-iot2050"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    slots = dest / "opt" / "gateway" / "slots"
    assert os.readlink(slots / "current") == "releases/A"
    assert (slots / "releases" / "A" / "gateway" / "runtime.py").is_file()
    assert not list(slots.rglob("__pycache__"))
    assert (dest / "opt" / "gateway" / "launcher.py").is_file()

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment]
    unit.read(dest / "etc" / "systemd" / "system" / "gateway.service")
    svc = unit["Service"]
    assert svc["Type"] == "notify" and int(svc["WatchdogSec"]) > 0
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert "/var/lib/gateway" in svc["ReadWritePaths"]
    assert svc["User"] == "gateway" and svc["SupplementaryGroups"] == "dialout"
    assert svc["Restart"] == "always"
    assert "launcher.py" in svc["ExecStart"] and "--state-dir /var/lib/gateway/fleet" in \
        svc["ExecStart"]
    wd = (dest / "etc" / "systemd" / "system.conf.d" / "gateway-watchdog.conf").read_text()
    assert "WatchdogDevice=/dev/watchdog" in wd and "RuntimeWatchdogSec=60" in wd
    cfg = (dest / "etc" / "gateway" / "gateway.yaml").read_text()
    assert "board: siemens-iot2050" in cfg and "releases_dir: /opt/gateway/slots" in cfg

    # The staged launcher runs the staged release (not this checkout).
    out = subprocess.run([sys.executable, str(dest / "opt" / "gateway" / "launcher.py"),
                          "--root", str(slots), "--state-dir", str(tmp_path / "state"), "--",
                          "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("gateway ")

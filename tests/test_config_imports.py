"""A gateway imports only what its configuration uses (issue 17, memory on a small gateway).

In a fresh interpreter, a HAN/P1-only config (a DLMS push port and a P1 port in mode D) is
taken through the runtime's own path: the CLI's loader, ``Runtime`` and the driver set
building its drivers (not starting them). The Zigbee, M-Bus and wM-Bus drivers, their codecs
and gurux's DLMS client must not be in ``sys.modules`` by then: the registry imports a
driver module only when a config names its type.

Not covered: ``gateway.cli.build_parser`` registers every subcommand, and ``gateway decode``
imports its codecs (ZCL, XBee, M-Bus) when it is registered, so ``gateway run`` still loads
them; that is the commands' import, not the configuration's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NOT_NEEDED_FOR_HAN = ("gateway.drivers.zigbee", "gateway.drivers.mbus", "gateway.drivers.wmbus",
                      "gateway.protocols.zcl", "gateway.protocols.xbee", "gateway.protocols.zdo",
                      "gateway.protocols.mbus", "gurux_dlms")

PROBE = textwrap.dedent("""
    import json, sys
    from gateway.cli import load_or_report
    from gateway.runtime import Runtime
    cfg = load_or_report(sys.argv[1])
    rt = Runtime(cfg)
    rt.drivers.build(cfg)
    print(json.dumps({"drivers": sorted(type(d).__name__ for d in rt.drivers),
                      "modules": sorted(sys.modules)}))
""")


def _han_config(tmp_path: Path) -> Path:
    for name in ("ca.pem", "c.pem", "k.pem", "s.key"):
        (tmp_path / name).write_text("x")
        (tmp_path / name).chmod(0o600)
    p = tmp_path / "han.yaml"
    p.write_text(
        "gateway: {id: gw-1}\n"
        f"store: {{path: {tmp_path / 's.db'}}}\n"
        "uplink: {host: localhost, ca: ca.pem, cert: c.pem, key: k.pem, signing_key: s.key}\n"
        "drivers:\n"
        "  - {type: dlms, name: han, mode: push, serial: {port: /dev/ttyUSB0, baud: 2400},\n"
        "     meters: [{id: m1}]}\n"
        "  - {type: iec62056-21, name: p1, serial: {port: /dev/ttyUSB1, baud: 115200},\n"
        "     meters: [{id: p1m, mode: d}]}\n")
    return p


def test_a_han_only_config_imports_no_other_bus(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", PROBE, str(_han_config(tmp_path))], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["drivers"] == ["DlmsDriver", "Iec62056Driver"]
    loaded = [m for m in seen["modules"]
              if any(m == n or m.startswith(n + ".") for n in NOT_NEEDED_FOR_HAN)]
    assert loaded == []
    assert "gateway.drivers.dlms" in seen["modules"]  # the probe did load what it uses

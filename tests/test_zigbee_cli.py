"""`gateway decode xbee`, `gateway zigbee permit-join` and the zigbee config schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import serial

from gateway import cli
from tests.gwproc import ROOT, write_config
from tools.sim import xbee as simxbee

VECTORS = json.loads((Path(__file__).parent / "vectors" / "xbee.json").read_text())
REPORT = next(v for v in VECTORS if v["name"].startswith("0x91 Metering report (SE"))
SENTINEL = next(v for v in VECTORS if "sentinel" in v["name"])


def _decode(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["decode", "xbee", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("v", [REPORT, SENTINEL], ids=["report", "sentinel"])
def test_decode_xbee_json_fields(capsys, v):
    rc, out, _ = _decode(capsys, v["hex"], "--json")
    assert rc == 0
    obj = json.loads(out)
    exp = v["expected"]
    for key in ("frame_type", "source64", "source16", "cluster", "profile", "attributes"):
        assert obj[key] == exp[key], key
    assert obj["checksum"] == exp["checksum"] and obj["length"] == exp["length"]
    assert obj["zcl"]["command_name"] == "Report Attributes"


def test_decode_xbee_text_and_spaced_hex(capsys):
    spaced = " ".join(REPORT["hex"][i:i + 2] for i in range(0, len(REPORT["hex"]), 2))
    rc, out, _ = _decode(capsys, spaced)
    assert rc == 0
    assert "Explicit Rx Indicator" in out and "CurrentSummationDelivered uint48 = 1976927" in out
    rc, out, _ = _decode(capsys, SENTINEL["hex"])
    assert "INVALID" in out


def test_decode_xbee_zdo_and_mode_1(capsys):
    from gateway.protocols import xbee, zdo
    ann = zdo.DeviceAnnounce(1, 0x1234, 0x00124B0001A00001, 0x8E)
    f = xbee.ExplicitRxIndicator(0x00124B0001A00001, 0x1234, 0, 0, 0x0013, 0, 2,
                                 ann.serialize())
    rc, out, _ = _decode(capsys, xbee.encode(f, escaped=False).hex(), "--api-mode", "1",
                         "--json")
    obj = json.loads(out)
    assert rc == 0 and obj["cluster_name"] == "Device_annce"
    assert obj["zdo"]["ieee"] == "00124b0001a00001" and obj["zdo"]["nwk"] == 0x1234


@pytest.mark.parametrize("hexstr,needle", [
    (REPORT["hex"][:-2] + "00", "bad checksum"),
    (REPORT["hex"][:30], "truncated"),
    ("zz", "is not hex: 'z' at digit 1"),
])
def test_decode_xbee_bad_input_is_one_line_exit_2(capsys, hexstr, needle):
    rc, out, err = _decode(capsys, hexstr)
    assert rc == 2 and out == ""
    assert needle in err and len(err.strip().splitlines()) == 1


def _config(tmp_path, pki, port: str, **extra):
    return write_config(tmp_path, pki, 1, drivers=[
        {"type": "simulated", "name": "sim", "meters": 1},
        {"type": "zigbee", "name": "zb", "serial": {"port": port, "baud": 9600}, **extra}])


def test_check_config_accepts_zigbee_and_reports_bad_options(tmp_path, pki, capsys):
    cfg = _config(tmp_path, pki, "/dev/ttyUSB0", devices=[
        {"ieee": "00:0d:6f:00:0a:bc:de:f0", "id": "kitchen", "poll": True}])
    assert cli.main(["check-config", str(cfg)]) == 0
    assert "zb (zigbee)" in capsys.readouterr().out
    bad = _config(tmp_path, pki, "/dev/ttyUSB0", api_mode=3, devices=[{"ieee": "0d6f"}])
    assert cli.main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "drivers[1].api_mode" in err and "drivers[1].devices[0].ieee" in err
    bad = _config(tmp_path, pki, "/dev/ttyUSB0", report_min_s=900, report_max_s=300)
    assert cli.main(["check-config", str(bad)]) == 2
    assert "report_min_s: expected a number <= report_max_s" in capsys.readouterr().err


def test_permit_join_command_opens_the_network_through_the_port(tmp_path, pki):
    sim = simxbee.start([])
    try:
        cfg = _config(tmp_path, pki, sim.device)
        p = subprocess.run([sys.executable, "-m", "gateway", "zigbee", "permit-join", "90",
                            "-c", str(cfg)], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        assert "zigbee zb: network open for 90 s" in p.stdout
        assert ("NJ", bytes((90,))) in sim.at_log and ("AC", b"") in sim.at_log
    finally:
        sim.stop()


def test_permit_join_command_errors(tmp_path, pki, capsys):
    sim = simxbee.start([])
    try:
        cfg = _config(tmp_path, pki, sim.device)
        assert cli.main(["zigbee", "permit-join", "60", "-c", str(cfg), "--driver", "x"]) == 2
        assert "no zigbee driver named 'x'" in capsys.readouterr().err
        assert cli.main(["zigbee", "permit-join", "255", "-c", str(cfg)]) == 2
        capsys.readouterr()
        # the running gateway holds the port exclusively: say so instead of fighting for it
        holder = serial.Serial(sim.device, exclusive=True)
        try:
            assert cli.main(["zigbee", "permit-join", "60", "-c", str(cfg)]) == 1
            assert "the running gateway holds this port" in capsys.readouterr().err
        finally:
            holder.close()
    finally:
        sim.stop()
    # a port with nothing answering: one clear line, exit 1
    import os
    import tty
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        cfg2 = _config(tmp_path, pki, os.ttyname(slave))
        assert cli.main(["zigbee", "permit-join", "60", "-c", str(cfg2), "--timeout",
                         "0.3"]) == 1
        assert "no answer to AT NJ" in capsys.readouterr().err
    finally:
        os.close(master)
        os.close(slave)

"""The command line as an operator uses it: exit codes and what is printed."""

from __future__ import annotations

import subprocess
import sys

from gateway import __version__
from tests.gwproc import ROOT, write_config


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60)


def test_version():
    r = gateway("--version")
    assert r.returncode == 0 and __version__ in r.stdout


def test_check_config_ok_prints_summary(tmp_path, pki):
    cfg = write_config(tmp_path, pki, 8883)
    r = gateway("check-config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "gw-0001" in r.stdout and "simulated" in r.stdout


def test_check_config_errors_are_line_accurate_and_exit_2(tmp_path, pki):
    cfg = write_config(tmp_path, pki, 8883)
    text = cfg.read_text().replace("port: 8883", 'port: "88x3"').replace("topic_prefix", "topic_prefx")
    cfg.write_text(text)
    lines = text.splitlines()
    port_line = next(i for i, l in enumerate(lines, 1) if "88x3" in l)
    r = gateway("check-config", str(cfg))
    assert r.returncode == 2
    assert f"{cfg}:{port_line}:9: uplink.port: expected an integer 1-65535, got \"88x3\"" in r.stderr
    assert 'did you mean "topic_prefix"' in r.stderr
    assert r.stdout == ""


def test_run_with_bad_config_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: gw 1}\n")
    r = gateway("run", "-c", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "bad.yaml:1:" in r.stderr


def test_no_command_prints_help_and_exits_2():
    r = gateway()
    assert r.returncode == 2 and "usage" in r.stderr

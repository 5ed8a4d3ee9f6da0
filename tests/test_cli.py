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


def test_check_config_takes_dash_c_like_run(tmp_path, pki):
    cfg = write_config(tmp_path, pki, 8883)
    r = gateway("check-config", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "gw-0001" in r.stdout and "metrics: off" in r.stdout


def test_check_config_needs_exactly_one_file(tmp_path, pki):
    cfg = write_config(tmp_path, pki, 8883)
    assert gateway("check-config").returncode == 2
    r = gateway("check-config", str(cfg), "-c", str(tmp_path / "other.yaml"))
    assert r.returncode == 2 and "one config file" in r.stderr


def test_example_config_checks_without_its_key_files():
    example = str(ROOT / "config" / "example.yaml")
    r = gateway("check-config", "-c", example)
    assert r.returncode == 2 and "file not found: /etc/gateway/pki/ca.pem" in r.stderr
    r = gateway("check-config", "-c", example, "--no-file-checks")
    assert r.returncode == 0, r.stderr
    assert "not checked (--no-file-checks)" in r.stdout
    # still a real check: a typo is an error with or without file checks
    bad = (ROOT / "config" / "example.yaml").read_text().replace("topic_prefix", "topic_prefx")
    p = ROOT / "config" / ".example-typo-test.yaml"
    try:
        p.write_text(bad)
        r = gateway("check-config", "--no-file-checks", str(p))
        assert r.returncode == 2 and 'did you mean "topic_prefix"' in r.stderr
    finally:
        p.unlink()


def test_example_config_is_printed_and_valid(tmp_path):
    r = gateway("example-config")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (ROOT / "config" / "example.yaml").read_text()
    p = tmp_path / "example.yaml"
    p.write_text(r.stdout)
    assert gateway("check-config", "--no-file-checks", str(p)).returncode == 0


def test_wheel_ships_example_config(tmp_path):
    """`gateway example-config` after a plain pip install: the wheel carries the file."""
    import zipfile
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("meter_gateway-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".data/data/share/meter-gateway/config/example.yaml") for n in names)

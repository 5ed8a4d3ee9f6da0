"""Board profiles: every shipped profile validates; the config's board is found, validated
with file:line:col errors and merged into the drivers' serial settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, DriverConfig, load_config
from gateway.fleet.boards import SHIPPED_DIR, load_board_file, merge_into_drivers

BOARDS = sorted(SHIPPED_DIR.glob("*.yaml"))


def test_shipped_profiles_cover_the_required_hardware():
    names = {p.stem for p in BOARDS}
    assert {"generic-linux", "raspberry-pi"} <= names
    assert names & {"revolution-pi", "siemens-iot2050"}


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_shipped_profile_is_valid(path):
    b = load_board_file(path)
    assert b["name"] == path.stem and b["description"]
    for port in b["serial_ports"].values():
        assert port["device"].startswith("/dev/")
    if b["name"] != "generic-linux":
        assert b["watchdog"]["device"].startswith("/dev/watchdog")
        assert b["temperature"]["path"].startswith("/sys/")
        assert b["leds"] and any(p["rs485"] and p["rs485"]["mode"] == "kernel"
                                 for p in b["serial_ports"].values())


def write_config(tmp: Path, board: str, drivers: list | None = None) -> Path:
    for name in ("ca.pem", "c.pem", "k.pem", "s.pem"):
        (tmp / name).write_text("x")
        (tmp / name).chmod(0o600)
    cfg = {"gateway": {"id": "gw-1", "board": board},
           "store": {"path": str(tmp / "s.db")},
           "uplink": {"host": "localhost", "ca": "ca.pem", "cert": "c.pem", "key": "k.pem",
                      "signing_key": "s.pem"},
           "drivers": drivers or [{"type": "simulated"}]}
    p = tmp / "gateway.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def test_config_gets_the_validated_board(tmp_path):
    c = load_config(write_config(tmp_path, "raspberry-pi"))
    assert c.board["serial_ports"]["rs485-1"]["device"] == "/dev/ttyAMA0"
    assert c.board["temperature"]["scale"] == 1000


def test_unknown_board_is_an_error_with_a_hint(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path, "raspbery-pi"))
    [issue] = e.value.issues
    assert issue.key_path == "gateway.board" and issue.line == 3
    assert "did you mean" in issue.message and "raspberry-pi" in issue.message


def test_local_profile_errors_point_into_the_board_file(tmp_path):
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "my-box.yaml").write_text(
        "name: my-box\nserial_ports:\n  p1: {device: ttyS0}\nwatchdog: {device: /dev/watchdog,"
        " timeout_s: 0}\nleds: {status: /sys/class/leds/x}\n")
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path, "my-box"))
    where = sorted((Path(i.file).name, i.line, i.key_path) for i in e.value.issues)
    assert where == [("my-box.yaml", 3, "serial_ports.p1.device"),
                     ("my-box.yaml", 4, "watchdog.timeout_s")]
    (tmp_path / "boards" / "my-box.yaml").write_text("name: other\n")
    with pytest.raises(ConfigError, match="file name"):
        load_config(write_config(tmp_path, "my-box"))


def test_board_rs485_defaults_merge_into_drivers_on_its_ports():
    board = load_board_file(SHIPPED_DIR / "raspberry-pi.yaml")
    on_board = DriverConfig("x", "a", {"serial": {"port": "/dev/ttyAMA0", "rs485": None}}, 1)
    own = DriverConfig("x", "b", {"serial": {"port": "/dev/ttyAMA0",
                                             "rs485": {"mode": "rts"}}}, 2)
    usb = DriverConfig("x", "c", {"serial": {"port": "/dev/ttyUSB0", "rs485": None}}, 3)
    merge_into_drivers(board, [on_board, own, usb])
    assert on_board.options["serial"]["rs485"]["mode"] == "kernel"
    assert own.options["serial"]["rs485"] == {"mode": "rts"}  # the config wins
    assert usb.options["serial"]["rs485"] is None  # auto-direction adapter


def test_default_board_works_without_any_boards_directory(tmp_path, monkeypatch):
    import gateway.config.board as boards  # where the loader looks them up
    monkeypatch.setattr(boards, "SHIPPED_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(boards, "SYSTEM_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(boards.sys, "prefix", str(tmp_path / "no-prefix"))
    assert load_config(write_config(tmp_path, "generic-linux")).board["source"] == "built-in"
    with pytest.raises(ConfigError, match="no boards/ directory"):
        load_config(write_config(tmp_path, "raspberry-pi"))


def test_profiles_installed_by_pip_under_the_prefix_are_found(tmp_path, monkeypatch):
    """A plain `pip install .` has no source tree: the profiles come as data files."""
    import shutil

    import gateway.config.board as boards  # where the loader looks them up
    monkeypatch.setattr(boards, "SHIPPED_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(boards, "SYSTEM_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(boards.sys, "prefix", str(tmp_path / "venv"))
    share = tmp_path / "venv" / "share" / "meter-gateway" / "boards"
    share.mkdir(parents=True)
    shutil.copy(SHIPPED_DIR / "raspberry-pi.yaml", share)
    assert load_config(write_config(tmp_path, "raspberry-pi")).board["name"] == "raspberry-pi"


def test_setup_cfg_ships_every_board_profile_as_data_files():
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(SHIPPED_DIR.parent / "setup.cfg")
    pattern = cfg["options.data_files"]["share/meter-gateway/boards"].strip()
    assert sorted(SHIPPED_DIR.parent.glob(pattern)) == BOARDS and BOARDS

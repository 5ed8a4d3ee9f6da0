"""Board profiles (``boards/NAME.yaml``): what a given piece of hardware has, so a config
only says ``gateway.board: raspberry-pi`` instead of repeating device paths and RS-485
settings on every gateway. Part of the config package because the loader needs it (the
profile's problems are reported with the config's); ``gateway.fleet.boards`` re-exports it.

A profile names the serial ports (device and RS-485 direction control), the hardware
watchdog device, the status LEDs and the temperature sensor. It is validated with the
config loader's own machinery (``file:line:col`` errors) when the config is loaded, and its
defaults are merged into the config: a driver whose ``serial.port`` is one of the board's
devices and that gives no ``rs485:`` of its own gets the board's RS-485 settings.

Profiles are looked up in ``boards/`` next to the config file, then ``/etc/gateway/boards``,
then the ``boards/`` shipped with the release, then ``<prefix>/share/meter-gateway/boards``
(where a plain ``pip install .`` puts them).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

from .checks import ID as _ID
from .checks import any_mapping, integer, mapping, text
from .issues import ConfigError
from .nodes import direct_value
from .schema import FieldSpec, Schema
from .serial import RS485_SCHEMA
from .show import did_you_mean
from .walker import Walker

SYSTEM_DIR = "/etc/gateway/boards"
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "boards"


def installed_dir() -> Path:
    """Where `pip install .` puts the shipped profiles (setup.cfg data_files)."""
    return Path(sys.prefix) / "share" / "meter-gateway" / "boards"


def _absolute(v: str) -> None:
    if "\0" in v or not v.startswith("/"):
        raise ValueError()


ABS_PATH = text("an absolute path such as /dev/ttyAMA0", validate=_absolute)

PORT_SCHEMA = Schema((
    FieldSpec("device", ABS_PATH, help="serial device path (prefer /dev/serial/by-path/...)"),
    FieldSpec("rs485", mapping(RS485_SCHEMA), None,
              help="RS-485 direction control; omit for RS-232 or self-switching adapters"),
    FieldSpec("description", text(), "", help="what is wired there (connector, HAT)"),
), help="one serial port of the board")

WATCHDOG_SCHEMA = Schema((
    FieldSpec("device", ABS_PATH, help="hardware watchdog device, e.g. /dev/watchdog0"),
    FieldSpec("timeout_s", integer(1, 600, "a whole number of seconds"), 15,
              help="hardware timeout systemd should program (RuntimeWatchdogSec)"),
))

TEMPERATURE_SCHEMA = Schema((
    FieldSpec("path", ABS_PATH, help="sysfs file with the SoC/board temperature"),
    FieldSpec("scale", integer(1, 1_000_000), 1000, help="raw value / scale = degrees C"),
))

BOARD_SCHEMA = Schema((
    FieldSpec("name", _ID, help="the profile name; must equal the file name"),
    FieldSpec("description", text(), "", help="one line for humans"),
    FieldSpec("serial_ports", any_mapping(mapping(PORT_SCHEMA), "a mapping of port names to "
                                          "{device, rs485, description}"), {},
              help="serial ports by name"),
    FieldSpec("watchdog", mapping(WATCHDOG_SCHEMA), None, help="hardware watchdog"),
    FieldSpec("leds", any_mapping(ABS_PATH, "a mapping of LED roles (status, fault, uplink) "
                                            "to sysfs LED directories"), {},
              help="status LEDs (/sys/class/leds/NAME)"),
    FieldSpec("temperature", mapping(TEMPERATURE_SCHEMA), None, help="temperature sensor"),
), help="a board profile")


DEFAULT_BOARD = "generic-linux"
BUILTIN_DEFAULT: dict[str, Any] = {"name": DEFAULT_BOARD, "description": "generic Linux host",
                                   "serial_ports": {}, "watchdog": None, "leds": {},
                                   "temperature": None}


def search_dirs(config_dir: str) -> list[Path]:
    return [Path(config_dir) / "boards", Path(SYSTEM_DIR), SHIPPED_DIR, installed_dir()]


def available(dirs: list[Path]) -> list[str]:
    names: set[str] = set()
    for d in dirs:
        try:
            names.update(p.stem for p in d.glob("*.yaml"))
        except OSError:
            pass
    return sorted(names)


def find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    return None


def load_board_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate one profile on its own (tests, ``tools/install.sh``).
    Raises ConfigError with file:line:col issues."""
    sub = Walker(path)
    values = _validate(sub)
    if values is None or sub.errors:
        raise sub.fail()
    return values


def _validate(sub: Walker) -> dict[str, Any] | None:
    values, entries = sub.document(BOARD_SCHEMA, "empty board profile")
    if values is not None and values["name"] != Path(sub.file).stem:
        node = entries["name"][1]
        sub.error(node, "name", f"expected {Path(sub.file).stem!r} (the file name), got "
                  f"{values['name']!r}")
        return None
    return values


def resolve_board(loader: Walker, top: dict[str, Any], gateway: dict[str, Any] | None,
                  drivers: list[Any]) -> dict[str, Any]:
    """The loader's board step: load the named profile, report its problems with the config's,
    and merge its defaults into the drivers' serial options. Returns the profile."""
    if gateway is None:
        return {}
    name = gateway["board"]
    gw_entry = top.get("gateway")
    where = (direct_value(gw_entry[1], "board") or gw_entry[0]) if gw_entry else None
    dirs = search_dirs(loader.base)
    path = find(name, dirs)
    if path is None and name == DEFAULT_BOARD:
        return {**BUILTIN_DEFAULT, "source": "built-in"}  # e.g. a pip install without boards/
    if path is None:
        names = available(dirs)
        hint = did_you_mean(name, names) or ("known boards: " + ", ".join(names)
                                               if names else "no boards/ directory found")
        loader.error(where, "gateway.board", f"unknown board {name!r}; {hint}")
        return {}
    sub = Walker(path)
    try:
        values = _validate(sub)
    except ConfigError as e:
        sub.errors = e.issues
        values = None
    loader.errors.extend(sub.errors)
    loader.warnings.extend(sub.warnings)
    if values is None:
        if not sub.errors:
            loader.error(where, "gateway.board", f"board profile {path} is invalid")
        return {}
    values["source"] = str(path)
    merge_into_drivers(values, drivers)
    return values


def merge_into_drivers(board: dict[str, Any], drivers: list[Any]) -> None:
    """A driver on one of the board's ports without its own ``rs485:`` gets the board's."""
    by_device = {p["device"]: p for p in board.get("serial_ports", {}).values()}
    for d in drivers:
        serial = d.options.get("serial") if isinstance(d.options, dict) else None
        if not isinstance(serial, dict) or serial.get("rs485") is not None:
            continue
        port = by_device.get(serial.get("port"))
        if port is not None and port.get("rs485") is not None:
            serial["rs485"] = copy.deepcopy(port["rs485"])

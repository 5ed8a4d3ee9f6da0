"""Board profiles (``boards/NAME.yaml``): the serial ports, watchdog, LEDs and temperature
sensor of a piece of hardware. They are validated and merged into the drivers' options by the
config loader, so they live in :mod:`gateway.config.board`; this module keeps the fleet's
name for them (``from gateway.fleet.boards import load_board_file``)."""

from __future__ import annotations

from ..config.board import (ABS_PATH, BOARD_SCHEMA, BUILTIN_DEFAULT, DEFAULT_BOARD,
                            PORT_SCHEMA, SHIPPED_DIR, SYSTEM_DIR, TEMPERATURE_SCHEMA,
                            WATCHDOG_SCHEMA, available, find, installed_dir, load_board_file,
                            merge_into_drivers, resolve_board, search_dirs)

__all__ = ["ABS_PATH", "BOARD_SCHEMA", "BUILTIN_DEFAULT", "DEFAULT_BOARD", "PORT_SCHEMA",
           "SHIPPED_DIR", "SYSTEM_DIR", "TEMPERATURE_SCHEMA", "WATCHDOG_SCHEMA", "available",
           "find", "installed_dir", "load_board_file", "merge_into_drivers", "resolve_board",
           "search_dirs"]

"""Driver type name -> module. Each driver module must be cheap to import (it imports its
bus's heavy dependencies, e.g. gurux, only when a driver starts) and defines:

* ``DRIVER``: the :class:`~gateway.drivers.base.Driver` subclass;
* ``SCHEMA`` (optional): its option schema, registered with the config loader so that
  ``gateway check-config`` validates its options with file:line:col errors.

Adding a bus = one new module + one line here.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any, Mapping

from .base import Driver, RecordSink

DRIVER_MODULES: dict[str, str] = {
    "simulated": "gateway.drivers.simulated",
    "zigbee": "gateway.drivers.zigbee",
    "dlms": "gateway.drivers.dlms", "iec62056-21": "gateway.drivers.iec62056_21",
    "mbus": "gateway.drivers.mbus", "wmbus": "gateway.drivers.wmbus",
}

def _module(type_name: str) -> ModuleType:
    try:
        return importlib.import_module(DRIVER_MODULES[type_name])
    except KeyError:
        raise ValueError(f"no driver for type {type_name!r}") from None


def load_schema(type_name: str) -> None:
    """Register one driver's option schema with the config loader (on first use)."""
    from ..config import DRIVER_SCHEMAS, register_driver_schema
    try:
        module = _module(type_name)
    except Exception as exc:  # a broken driver must not take check-config down with it
        logging.getLogger("gateway.drivers").error(
            "driver type %r is unavailable: its module failed to import: %s", type_name, exc)
        return
    schema = getattr(module, "SCHEMA", None)
    if schema is not None and type_name not in DRIVER_SCHEMAS:
        register_driver_schema(type_name, schema)


def load_schemas() -> None:
    """Register every driver's option schema (documentation, tests)."""
    for type_name in DRIVER_MODULES:
        load_schema(type_name)


def make_driver(type_name: str, name: str, options: Mapping[str, Any], sink: RecordSink) -> Driver:
    cls = getattr(_module(type_name), "DRIVER")
    return cls(name, options, sink)

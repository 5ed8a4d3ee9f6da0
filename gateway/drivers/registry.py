"""Driver type name -> module, imported by name on first use: a gateway imports only the
driver modules its configuration names. Each driver module must be cheap to import (it
imports its bus's heavy dependencies, e.g. gurux, only when a driver starts) and defines:

* ``DRIVER``: the :class:`~gateway.drivers.base.Driver` subclass;
* ``SCHEMA`` (optional): its option schema, which the config loader asks for here
  (:func:`driver_schema`) so that ``gateway check-config`` validates its options with
  file:line:col errors.

This module imports no driver and not the config package (which asks it for schemas), so
there is no import cycle between them. Adding a bus = one new module + one line here.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from ..config.schema import Schema
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


def driver_schema(type_name: str) -> Schema | None:
    """The ``SCHEMA`` of one driver type's module (imported now if it was not), or None."""
    try:
        module = _module(type_name)
    except Exception as exc:  # a broken driver must not take check-config down with it
        logging.getLogger("gateway.drivers").error(
            "driver type %r is unavailable: its module failed to import: %s", type_name, exc)
        return None
    return getattr(module, "SCHEMA", None)


def make_driver(type_name: str, name: str, options: Mapping[str, Any], sink: RecordSink) -> Driver:
    cls = getattr(_module(type_name), "DRIVER")
    return cls(name, options, sink)

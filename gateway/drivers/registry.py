"""Driver type name -> class. Drivers are imported lazily so that a gateway without a given
bus never imports (or fails on) that bus's dependencies."""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from .base import Driver, RecordSink

DRIVER_CLASSES: dict[str, str] = {
    "simulated": "gateway.drivers.simulated:SimulatedDriver",
}


def make_driver(type_name: str, name: str, options: Mapping[str, Any], sink: RecordSink) -> Driver:
    try:
        target = DRIVER_CLASSES[type_name]
    except KeyError:
        raise ValueError(f"no driver for type {type_name!r}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(name, options, sink)

"""Driver option schemas: registered by name, or found through gateway.drivers.registry,
which imports only the driver module of a type the config uses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..drivers import registry
from .checks import ID_PATTERN, integer, number, text
from .schema import DriverSchema, FieldSpec, Schema
from .show import did_you_mean

DRIVER_SCHEMAS: dict[str, DriverSchema] = {}


def driver_types() -> list[str]:
    """Every type a config may name: registered here, or listed by the driver registry."""
    return sorted(set(DRIVER_SCHEMAS) | set(registry.DRIVER_MODULES))


def driver_schema(type_name: str) -> DriverSchema | None:
    """The schema of a driver type, importing only that driver's module (a gateway with one
    bus should not pay the memory of every driver)."""
    if type_name not in DRIVER_SCHEMAS and type_name in registry.DRIVER_MODULES:
        schema = registry.driver_schema(type_name)
        if schema is not None and type_name not in DRIVER_SCHEMAS:
            register_driver_schema(type_name, schema)
    return DRIVER_SCHEMAS.get(type_name)


def load_schemas() -> None:
    """Register every driver's option schema (documentation, tests)."""
    for type_name in registry.DRIVER_MODULES:
        driver_schema(type_name)


DRIVER_COMMON = ("type", "name")


def register_driver_schema(type_name: str, schema: DriverSchema) -> None:
    """Declare the options of a driver type. Call at import time of the driver module.

    Registering the same schema twice is harmless (module reloads); a different schema under
    an existing name is a programming error.
    """
    if not re.fullmatch(ID_PATTERN, type_name):
        raise ValueError(f"invalid driver type name {type_name!r}")
    if not isinstance(schema, Schema):
        raise TypeError("schema must be a DriverSchema")
    names = schema.field_names()
    if len(set(names)) != len(names) or set(names) & set(DRIVER_COMMON):
        raise ValueError(f"driver {type_name!r}: option names must be unique and not "
                         f"{' or '.join(DRIVER_COMMON)}")
    old = DRIVER_SCHEMAS.get(type_name)
    if old is not None and old != schema:
        raise ValueError(f"driver type {type_name!r} is already registered")
    DRIVER_SCHEMAS[type_name] = schema


register_driver_schema("simulated", DriverSchema((
    FieldSpec("meters", integer(1, 100000), 1, help="number of simulated meters"),
    FieldSpec("interval_s", number(gt=0, what="a number of seconds"), 60,
              help="seconds between readings of one meter"),
    FieldSpec("meter_prefix", text("a string of 0-32 characters from A-Z a-z 0-9 . _ -",
                                   r"[A-Za-z0-9._-]{0,32}"), "sim-",
              help="prefix of the simulated meter ids"),
    FieldSpec("seed", integer(), 0, help="random seed, for reproducible runs"),
), help="generates plausible readings without hardware"))


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """One driver instance; options are validated and defaulted by its type's schema."""

    type: str
    name: str
    options: dict[str, Any]
    line: int


def check_driver_type(v: Any, types: list[str]) -> str:
    if not isinstance(v, str):
        raise TypeError()
    if v not in types:
        raise ValueError(did_you_mean(v, types) or "")
    return v

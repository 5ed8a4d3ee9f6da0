"""load_config: the top-level sections, the drivers list and the board profile of one file."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Union

from yaml.nodes import Node, ScalarNode, SequenceNode

from .control import CONTROL_SCHEMA, ControlConfig
from .core import (GATEWAY_SCHEMA, LOGGING_SCHEMA, STORE_SCHEMA, GatewayConfig, LoggingConfig,
                   StoreConfig)
from .board import resolve_board
from .checks import ID
from .drivers import DRIVER_COMMON, DriverConfig, check_driver_type, driver_schema, driver_types
from .edge import EDGE_SCHEMA, EdgeConfig
from .fleet import FLEET_SCHEMA, FleetConfig
from .issues import tidy
from .metrics import METRICS_SCHEMA, MetricsConfig
from .nodes import is_null, node_kind
from .result import Config
from .schema import Check, FieldSpec, Schema
from .show import join_key, quote
from .uplink import UPLINK_SCHEMA, UplinkConfig
from .walker import Walker

SECTIONS: dict[str, tuple[Schema, bool]] = {
    "gateway": (GATEWAY_SCHEMA, True),
    "store": (STORE_SCHEMA, True),
    "uplink": (UPLINK_SCHEMA, True),
    "logging": (LOGGING_SCHEMA, False),
    "control": (CONTROL_SCHEMA, False),
    "edge": (EDGE_SCHEMA, False),
    "fleet": (FLEET_SCHEMA, False),
    "metrics": (METRICS_SCHEMA, False),
}
TOP_LEVEL_KEYS = [*SECTIONS, "drivers"]


def load_config(path: Union[str, os.PathLike[str]], data: bytes | None = None, *,
                check_files: bool = True) -> Config:
    """Read, validate and default a config file. Raises ConfigError listing every problem.

    ``data``: the file's bytes, already read by the caller (the console opens the file once,
    checks it and hands its content over, so the file cannot be swapped in between).
    ``check_files=False`` skips the existence and mode checks of key, certificate and CA
    files (``gateway check-config --no-file-checks``: a config prepared for another machine).
    """
    return ConfigLoader(path, data, check_files=check_files).load()


class ConfigLoader(Walker):
    """The config file's sections, drivers and board; the walking is Walker's."""

    def load(self) -> Config:
        data = self.read()
        root = self.compose(data)
        if self.errors:
            raise self.fail()
        if root is None or is_null(root):
            self.error(None, "", "file is empty; expected a mapping with the sections "
                       + ", ".join(TOP_LEVEL_KEYS))
            raise self.fail()
        top = self.entries(root, "", "a mapping with the sections " + ", ".join(TOP_LEVEL_KEYS))
        if top is None:
            raise self.fail()
        self.unknown_keys(top, TOP_LEVEL_KEYS, "")

        values: dict[str, dict[str, Any] | None] = {}
        for name, (schema, required) in SECTIONS.items():
            entry = top.get(name)
            if entry is None and required:
                self.error(root, name, "required section is missing")
                values[name] = None
                continue
            key_node, node = entry if entry else (root, None)
            entries = self.section_entries(node, name, schema)
            values[name] = None if entries is None else self.fields(schema, entries, name,
                                                                     key_node)
        drivers = self._drivers(top.get("drivers"), root)
        board = resolve_board(self, top, values.get("gateway"), drivers)
        self._check_inline_secrets()
        if self.errors:
            raise self.fail()

        g, s, u, lg = (values[k] for k in ("gateway", "store", "uplink", "logging"))
        assert g is not None and s is not None and u is not None and lg is not None
        if u["client_id"] is None:
            u["client_id"] = g["id"]
        ctl = dict(values.get("control") or {})
        store_dir = os.path.dirname(s["path"])
        if ctl.get("audit_log") is None:
            ctl["audit_log"] = os.path.join(store_dir, "audit.log")
        if ctl.get("keys_dir") is None:
            ctl["keys_dir"] = os.path.join(store_dir, "keys")
        return Config(
            gateway=GatewayConfig(**g), store=StoreConfig(**s), uplink=UplinkConfig(**u),
            logging=LoggingConfig(**lg), drivers=tuple(drivers), source_path=self.abs,
            config_hash=hashlib.sha256(data).hexdigest(), warnings=tidy(self.warnings),
            control=ControlConfig(**ctl), edge=EdgeConfig.from_values(values.get("edge") or {}),
            fleet=FleetConfig.from_values(values.get("fleet") or {}), board=board,
            metrics=MetricsConfig(**(values.get("metrics") or {})))

    def _drivers(self, entry: tuple[Node, Node] | None, root: Node) -> list[DriverConfig]:
        if entry is None:
            self.error(root, "drivers", "required section is missing")
            return []
        _, node = entry
        if not isinstance(node, SequenceNode):
            self.error(node, "drivers", "expected a list of driver entries, got "
                       + node_kind(node, self))
            return []
        if not node.value:
            self.error(node, "drivers", "expected at least one driver, got an empty list")
            return []
        types = driver_types()
        type_check = Check("a registered driver type: " + ", ".join(quote(t) for t in types),
                           lambda v: check_driver_type(v, types), as_text=True)
        common = (FieldSpec("type", type_check, help="driver type, one of " + ", ".join(types)),
                  FieldSpec("name", ID, None, help="unique driver name; defaults to the type"))
        out: list[DriverConfig] = []
        first_of: dict[str, int] = {}
        for i, item in enumerate(node.value):
            kp = f"drivers[{i}]"
            entries = self.entries(item, kp, "a mapping with type, name and driver options")
            if entries is None:
                continue
            type_node = entries.get("type")
            schema = None
            if type_node is not None and isinstance(type_node[1], ScalarNode):
                schema = driver_schema(type_node[1].value)
            if schema is None:
                # Unknown type: report it (and a bad name) but not options we cannot judge.
                filtered = {k: v for k, v in entries.items() if k in DRIVER_COMMON}
                self.fields(Schema(common), filtered, kp, item)
                continue
            full = Schema(common + schema.fields, schema.check)
            values = self.fields(full, entries, kp, item)
            if values is None:
                continue
            dtype = values.pop("type")
            name = values.pop("name") or dtype
            if name in first_of:
                where = entries["name"][1] if "name" in entries else item
                self.error(where, join_key(kp, "name"), f"expected a unique driver name, got "
                           f"{quote(name)} again (first used at line {first_of[name]})")
                continue
            line = item.start_mark.line + 1
            first_of[name] = line
            out.append(DriverConfig(dtype, name, values, line))
        return out

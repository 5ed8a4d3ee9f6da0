"""The ``control`` section: the field-tech console's socket, audit log, keys and roles."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .checks import PATH, any_mapping, integer, one_of, size, text
from .schema import FieldSpec, Schema

CONTROL_SCHEMA = Schema((
    FieldSpec("socket", PATH, "/run/gateway/control.sock", path=True,
              help="Unix socket of the field-tech console (`gateway console`); no TCP"),
    FieldSpec("group", text("a group name", r"[A-Za-z_][A-Za-z0-9_.-]{0,31}"), None,
              help="group allowed to use the console (socket mode 0660); default: the "
                   "gateway user's group"),
    FieldSpec("audit_log", PATH, None, path=True,
              help="audit log of console changes; default: audit.log next to the store"),
    FieldSpec("audit_max_bytes", size(4096), 1024**2, help="rotate the audit log beyond this"),
    FieldSpec("audit_backups", integer(0, 100), 5, help="rotated audit logs kept"),
    FieldSpec("keys_dir", PATH, None, path=True,
              help="where `keys set` stores meter keys (mode 0600); default: keys/ next to "
                   "the store"),
    FieldSpec("roles", any_mapping(one_of("viewer", "technician", "admin"),
                                   "a mapping of Unix group names to viewer, technician or "
                                   "admin"), {},
              help="console roles by Unix group: viewer (status, meters, diag, tail), "
                   "technician (also read, listen, scan, permit-join, keys set), admin (also "
                   "config apply, fleet actions); none = every console user is admin"),
), help="the local control socket", check=lambda v: _control_rules(v))


def _control_rules(v: dict[str, Any]) -> list[tuple[str, str]]:
    bad = [g for g in v.get("roles") or {} if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", g)]
    return [("roles", f"expected group names as keys, got {len(bad)} that are not")] if bad else []


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: str = "/run/gateway/control.sock"
    group: str | None = None
    audit_log: str | None = None  # filled in by the loader: next to the store
    audit_max_bytes: int = 1024**2
    audit_backups: int = 5
    keys_dir: str | None = None  # filled in by the loader: next to the store
    roles: Mapping[str, str] = field(default_factory=dict)  # Unix group -> console role

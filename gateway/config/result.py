"""The loaded configuration: one frozen dataclass per section, and the summary
``gateway check-config`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .control import ControlConfig
from .core import GatewayConfig, LoggingConfig, StoreConfig
from .drivers import DRIVER_SCHEMAS, DriverConfig
from .edge import EdgeConfig
from .fleet import FleetConfig
from .issues import ConfigIssue
from .metrics import MetricsConfig
from .schema import Check, FieldSpec, Schema
from .show import quote, show_plain
from .sizes import format_size
from .uplink import UplinkConfig


@dataclass(frozen=True, slots=True)
class Config:
    gateway: GatewayConfig
    store: StoreConfig
    uplink: UplinkConfig
    logging: LoggingConfig
    drivers: tuple[DriverConfig, ...]
    source_path: str
    config_hash: str
    warnings: list[ConfigIssue] = field(default_factory=list, compare=False)
    control: ControlConfig = field(default_factory=ControlConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    board: dict[str, Any] = field(default_factory=dict)  # the validated boards/NAME.yaml

    def summary(self) -> str:
        """A few human lines for ``gateway check-config``; secrets are masked."""
        s, u = self.store, self.uplink
        lines = [
            f"config:  {self.source_path} (sha256 {self.config_hash[:16]})",
            f"gateway: {self.gateway.id} (board {self.gateway.board})",
            f"store:   {s.path}, cap {format_size(s.max_bytes)}"
            + (f", max {s.max_rows} rows" if s.max_rows is not None else "")
            + f", group commit {s.commit_interval_ms} ms / {s.commit_max_records} records",
            f"uplink:  {u.host}:{u.port} (TLS >= {u.tls_version}), client id {u.client_id}, "
            f"topic prefix {quote(u.topic_prefix)}",
            f"logging: {self.logging.level} ({self.logging.format})",
            f"control: {self.control.socket}"
            + (f" (group {self.control.group})" if self.control.group else "")
            + f", audit log {self.control.audit_log}",
            "metrics: " + ("off" if self.metrics.listen is None else
                           "http://%s/metrics" % (f"[{self.metrics.listen[0]}]:{self.metrics.listen[1]}"
                                                  if ":" in self.metrics.listen[0] else
                                                  f"{self.metrics.listen[0]}:{self.metrics.listen[1]}")),
            "edge:    " + (f"deltas on a {self.edge.interval_s} s grid, diagnostics every "
                            f"{self.edge.diag_interval_s:g} s"
                            + (", report by exception"
                               if self.edge.report_by_exception.enabled else "")
                            if self.edge.enabled else "off"),
            f"fleet:   {len(self.fleet.command_keys)} command keys, "
            f"{len(self.fleet.release_keys)} release keys, OTA "
            + (f"into {self.fleet.releases_dir}" if self.fleet.releases_dir else "off"),
            f"drivers: {len(self.drivers)}",
        ]
        for d in self.drivers:
            schema = DRIVER_SCHEMAS.get(d.type)
            opts = _show_options(d.options, schema)
            lines.append(f"  - {d.name} ({d.type})" + (f": {opts}" if opts else ""))
        return "\n".join(lines)


def _show_options(values: Mapping[str, Any], schema: Schema | None) -> str:
    """``k=v, ...`` for the summary; secrets are masked at any depth."""
    specs = {f.name: f for f in schema.fields} if schema else {}
    return ", ".join(f"{k}={_show_option(v, specs.get(k))}" for k, v in values.items())


def _show_option(v: Any, spec: FieldSpec | None) -> str:
    if spec is not None and spec.secret:
        return "***"
    return _show_checked(v, spec.check if spec else None)


def _show_checked(v: Any, check: Check | None) -> str:
    if isinstance(v, dict):
        if check is not None and check.schema is not None:
            return "{" + _show_options(v, check.schema) + "}"
        inner = check.values if check is not None else None
        return "{" + ", ".join(f"{k}={_show_checked(x, inner)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        if v and all(isinstance(x, dict) for x in v):
            return f"[{len(v)} " + ("entry]" if len(v) == 1 else "entries]")
        inner = check.items if check is not None else None
        return "[" + ", ".join(_show_checked(x, inner) for x in v) + "]"
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return show_plain(v)

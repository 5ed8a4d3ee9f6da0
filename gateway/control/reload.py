"""``config apply``: restart only the drivers a new config changes.

The store and the uplink are never touched, so nothing buffered is lost and the seq numbers
simply continue. Everything that can fail (validation, building the new drivers) happens
before anything is stopped; if starting fails half-way, the old drivers are rebuilt from
the old config. Sections other than ``drivers`` and ``logging`` (store, uplink, control,
...) are refused with "restart needed" rather than half-applied.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import Config, DriverConfig
from ..driverset import BuildFailed, DriverSet, StartFailed
from ..model import Event, now_ms
from .. import events as kinds

log = logging.getLogger("gateway.control")

HOT_SECTIONS = frozenset({"drivers", "logging", "source_path", "config_hash", "warnings"})


class ReloadRefused(Exception):
    """The new config was not applied; the running one is unchanged."""


@dataclass
class ReloadPlan:
    stop: list[str] = field(default_factory=list)          # running drivers to stop
    start: list[DriverConfig] = field(default_factory=list)  # drivers to build and start
    unchanged: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)  # sections that need a restart
    logging_changed: bool = False

    @property
    def changes(self) -> bool:
        return bool(self.stop or self.start or self.logging_changed)

    def to_dict(self) -> dict[str, Any]:
        started = [d.name for d in self.start]
        return {"added": [n for n in started if n not in self.stop],
                "removed": [n for n in self.stop if n not in started],
                "changed": [n for n in started if n in self.stop],
                "unchanged": list(self.unchanged), "restart_needed": list(self.restart_needed),
                "logging_changed": self.logging_changed}


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    plan = ReloadPlan()
    for f in dataclasses.fields(old):
        if f.name not in HOT_SECTIONS and getattr(old, f.name) != getattr(new, f.name, None):
            plan.restart_needed.append(f.name)
    plan.logging_changed = old.logging != new.logging
    before = {d.name: d for d in old.drivers}
    after = {d.name: d for d in new.drivers}
    for name, d in before.items():
        n = after.get(name)
        if n is not None and (n.type, n.options) == (d.type, d.options):
            plan.unchanged.append(name)
        else:
            plan.stop.append(name)
    plan.start = [d for d in new.drivers if d.name not in plan.unchanged]
    return plan


def hot_reload(drivers: DriverSet, old: Config, new: Config,
               emit: Callable[[Event], None]) -> dict[str, Any]:
    """Apply ``new``'s drivers and logging to the running ``drivers`` (call with the
    runtime's reconfig lock held); the caller then makes ``new`` its config."""
    plan = plan_reload(old, new)
    if plan.restart_needed:
        raise ReloadRefused(", ".join(plan.restart_needed) + " changed; these sections need a "
                            "restart of the gateway (nothing was changed)")
    result = plan.to_dict()
    if not plan.changes:
        result["message"] = "no driver changed"
        return result
    try:
        stuck = drivers.replace(old, new, plan.stop, plan.start)
    except BuildFailed as exc:
        raise ReloadRefused(f"cannot build the new drivers: {exc} (nothing was changed)") from exc
    except StartFailed as exc:
        raise ReloadRefused(f"cannot start the new drivers: {exc}; the old config is back") \
            from exc
    if plan.logging_changed:
        from ..logs import apply_logging
        apply_logging(new.logging.level, new.logging.format)
    if stuck:
        result["stuck"] = stuck
        log.warning("config apply: drivers %s did not stop within their timeout", stuck)
    log.info("config apply: %s (config %s)", _describe(result), new.config_hash[:16])
    emit(Event(kinds.CONFIG_APPLIED, now_ms(), "control", detail={
        "config_hash": new.config_hash, **{k: result[k] for k in ("added", "removed", "changed")}}))
    return result


def _describe(r: dict[str, Any]) -> str:
    parts = [f"{k} {', '.join(r[k])}" for k in ("added", "removed", "changed") if r[k]]
    if r.get("logging_changed"):
        parts.append("logging level changed")
    return "; ".join(parts) or "nothing changed"

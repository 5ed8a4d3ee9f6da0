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
from typing import TYPE_CHECKING, Any

from ..config import Config, DriverConfig
from ..drivers.registry import make_driver
from ..model import Event, now_ms
from .. import events as kinds

if TYPE_CHECKING:
    from ..drivers.base import Driver
    from ..runtime import Runtime

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


def hot_reload(rt: "Runtime", new: Config) -> dict[str, Any]:
    """Apply ``new`` to the running runtime (call with the runtime's reconfig lock held)."""
    old = rt.config
    plan = plan_reload(old, new)
    if plan.restart_needed:
        raise ReloadRefused(", ".join(plan.restart_needed) + " changed; these sections need a "
                            "restart of the gateway (nothing was changed)")
    result = plan.to_dict()
    if not plan.changes:
        rt.config = new
        result["message"] = "no driver changed"
        return result
    try:
        fresh = {d.name: make_driver(d.type, d.name, d.options, rt.driver_context(new, d.name))
                 for d in plan.start}
    except Exception as exc:
        raise ReloadRefused(f"cannot build the new drivers: {exc} (nothing was changed)") from exc
    running = {d.bus: d for d in rt.drivers}
    stuck = []
    for name in plan.stop:
        drv = running.get(name)
        if drv is not None:
            drv.stop()
            if drv.is_alive():
                stuck.append(name)
    started: list["Driver"] = []
    try:
        for drv in fresh.values():
            drv.start()
            started.append(drv)
    except Exception as exc:
        for drv in started:
            drv.stop()
        restored = [_rebuild(rt, old, name) for name in plan.stop]
        for drv in restored:
            drv.start()
        by_name = {**running, **{d.bus: d for d in restored}}
        rt.drivers = [by_name[d.name] for d in old.drivers if d.name in by_name]
        raise ReloadRefused(f"cannot start the new drivers: {exc}; the old config is back") \
            from exc
    keep = {**running, **fresh}
    rt.drivers = [keep[d.name] for d in new.drivers]
    rt.config = new
    if plan.logging_changed:
        from ..logs import apply_logging
        apply_logging(new.logging.level, new.logging.format)
    if stuck:
        result["stuck"] = stuck
        log.warning("config apply: drivers %s did not stop within their timeout", stuck)
    log.info("config apply: %s (config %s)", _describe(result), new.config_hash[:16])
    rt.emit_event(Event(kinds.CONFIG_APPLIED, now_ms(), "control", detail={
        "config_hash": new.config_hash, **{k: result[k] for k in ("added", "removed", "changed")}}))
    return result


def _rebuild(rt: "Runtime", cfg: Config, name: str) -> "Driver":
    d = next(d for d in cfg.drivers if d.name == name)
    return make_driver(d.type, d.name, d.options, rt.driver_context(cfg, d.name))


def _describe(r: dict[str, Any]) -> str:
    parts = [f"{k} {', '.join(r[k])}" for k in ("added", "removed", "changed") if r[k]]
    if r.get("logging_changed"):
        parts.append("logging level changed")
    return "; ".join(parts) or "nothing changed"

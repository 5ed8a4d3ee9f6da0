"""DriverSet: the one owner of the running drivers (build, start, stop, replace)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.drivers.base import Driver
from gateway.driverset import BuildFailed, DriverSet, StartFailed
from tests.sinks import Sink


class Idle(Driver):
    type_name = "idle"

    def loop(self) -> None:
        self.stopping.wait()


class WontStart(Idle):
    def start(self) -> None:
        raise RuntimeError("port /dev/ttyX is gone")


@dataclass
class D:
    name: str
    type: str = "idle"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cfg:
    drivers: list[D]


def _make(cfg: Cfg, d: D) -> Driver:
    if d.type == "broken":
        raise ValueError("no such port")
    return (WontStart if d.type == "wontstart" else Idle)(d.name, d.options, Sink())


def _running(ds: DriverSet) -> list[tuple[str, bool]]:
    return [(d.bus, d.is_alive()) for d in ds]


def test_replace_keeps_unchanged_drivers_and_config_order() -> None:
    ds = DriverSet(_make)
    old = Cfg([D("a"), D("b")])
    ds.build(old)
    ds.start()
    a = next(iter(ds))
    new = Cfg([D("c"), D("a"), D("b", options={"x": 1})])
    assert ds.replace(old, new, stop=["b"], start=[new.drivers[0], new.drivers[2]]) == []
    assert _running(ds) == [("c", True), ("a", True), ("b", True)]
    assert next(d for d in ds if d.bus == "a") is a  # never restarted
    ds.stop()
    assert all(not alive for _, alive in _running(ds))


def test_a_driver_that_cannot_be_built_changes_nothing() -> None:
    ds = DriverSet(_make)
    old = Cfg([D("a")])
    ds.build(old)
    ds.start()
    before = list(ds)
    new = Cfg([D("a", type="broken")])
    with pytest.raises(BuildFailed, match="no such port"):
        ds.replace(old, new, stop=["a"], start=new.drivers)
    assert list(ds) == before and before[0].is_alive()
    ds.stop()


def test_a_driver_that_cannot_start_brings_the_old_ones_back() -> None:
    ds = DriverSet(_make)
    old = Cfg([D("a"), D("b")])
    ds.build(old)
    ds.start()
    new = Cfg([D("a"), D("b", type="wontstart")])
    with pytest.raises(StartFailed, match="ttyX is gone"):
        ds.replace(old, new, stop=["b"], start=[new.drivers[1]])
    assert _running(ds) == [("a", True), ("b", True)]
    assert type(list(ds)[1]) is Idle  # rebuilt from the old config
    ds.stop()

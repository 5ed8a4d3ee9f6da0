"""What the console and the fleet ask of the running drivers, written once.

Why: the console's ``read ID``, the fleet's ``read_now`` request and the diagnostics each
had their own meter lookup and their own (bounded or not) call into a driver. These helpers
talk to drivers only through the Driver base API (``meter_stats()``, ``read_now()``,
``bus``), so a caller never needs the runtime, only the list of drivers. :class:`DriverSet`
owns that list: build, start, stop and replace (hot reload).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Iterator

from .model import Record

READ_TIMEOUT_S = 60.0  # a read_now that has not answered by then is reported as a timeout


class ReadTimeout(TimeoutError):
    """A driver call did not answer in time; it goes on in the background, result dropped."""


def safe_call(fn: Callable[[], Any], default: Any = None) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a driver's broken getter must not break a report
        return default


def meter_stats(drv: Any) -> dict[str, dict[str, Any]]:
    """The driver's per-meter counters, ``{}`` when it has none or its getter fails."""
    fn = getattr(drv, "meter_stats", None)
    stats = safe_call(fn, {}) if callable(fn) else {}
    return stats if isinstance(stats, dict) else {}


def driver_state(drv: Any) -> str:
    """running / stopping / stopped / dead (crashed) / not started."""
    if drv.is_alive():
        return "stopping" if drv.stopping.is_set() else "running"
    if drv.stopping.is_set():
        return "stopped"
    return "dead" if drv.ident is not None else "not started"


def find_driver(drivers: Iterable[Any], meter_id: str) -> tuple[Any | None, dict[str, Any] | None]:
    """The driver whose meter_stats lists ``meter_id`` and that meter's counters."""
    for drv in drivers:
        stats = meter_stats(drv)
        if meter_id in stats:
            return drv, stats[meter_id]
    return None, None


def bounded_call(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run a driver call on its own thread and wait at most ``timeout`` seconds.

    The call cannot be interrupted (it may be inside a serial read); on timeout it finishes
    in the background and :class:`ReadTimeout` is raised with a message for a person.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"console-{what}", daemon=True).start()
    if not done.wait(timeout):
        raise ReadTimeout(f"{what}: no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def read_now(drv: Any, meter_id: str, timeout: float = READ_TIMEOUT_S) -> list[Record]:
    """The one bounded ``read_now``: KeyError for a meter the driver does not have,
    ReadTimeout when it does not answer, AttributeError when the driver cannot be asked."""
    fn = getattr(drv, "read_now", None)
    if not callable(fn):
        raise AttributeError(f"read is not supported by driver {drv.bus} (type {drv.type_name})")
    return list(bounded_call(lambda: fn(meter_id), timeout, f"read {meter_id}") or [])


class BuildFailed(Exception):
    """A driver of the new config could not be built; nothing was stopped."""


class StartFailed(Exception):
    """A new driver did not start; the drivers of the old config are running again."""


class DriverSet:
    """The running drivers: built from a config, started, stopped and replaced in place.

    Why one owner: hot reload used to assign the runtime's driver list from the control
    package, and the console, the fleet and the edge each walked that list their own way.
    Now the list changes only here (under a lock, so a reader sees the old set or the new,
    never half), and readers iterate over a snapshot.
    """

    def __init__(self, make: Callable[[Any, Any], Any]) -> None:
        """``make(config, driver_config)`` builds one driver for ``config``."""
        self._make = make
        self._drivers: list[Any] = []
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[Any]:
        with self._lock:
            return iter(list(self._drivers))

    def __len__(self) -> int:
        return len(self._drivers)

    def build(self, config: Any) -> None:
        """Build every driver of ``config`` (not started)."""
        built = [self._make(config, d) for d in config.drivers]
        with self._lock:
            self._drivers = built

    def add(self, drv: Any) -> None:
        """One more driver, already built (tests, a driver made outside a config)."""
        with self._lock:
            self._drivers = [*self._drivers, drv]

    def start(self) -> None:
        for drv in self:
            drv.start()

    def stop(self) -> None:
        for drv in self:
            drv.stop()

    def find(self, meter_id: str) -> tuple[Any | None, dict[str, Any] | None]:
        return find_driver(self, meter_id)

    def replace(self, old: Any, new: Any, stop: list[str], start: list[Any]) -> list[str]:
        """Stop the drivers named in ``stop``, start the ones configured in ``start`` (of
        ``new``) and return the names of the ones that did not stop in time.

        Everything that can fail before a change (building) raises BuildFailed with nothing
        touched; a start that fails stops what started, rebuilds the stopped drivers from
        ``old``, starts them again and raises StartFailed.
        """
        try:
            fresh = {d.name: self._make(new, d) for d in start}
        except Exception as exc:  # noqa: BLE001 - any driver's constructor may refuse
            raise BuildFailed(str(exc)) from exc
        running = {d.bus: d for d in self}
        stuck = []
        for name in stop:
            drv = running.get(name)
            if drv is not None:
                drv.stop()
                if drv.is_alive():
                    stuck.append(name)
        started: list[Any] = []
        try:
            for drv in fresh.values():
                drv.start()
                started.append(drv)
        except Exception as exc:  # noqa: BLE001 - roll back whatever went wrong
            for drv in started:
                drv.stop()
            restored = {d.name: self._make(old, d) for d in old.drivers if d.name in stop}
            for drv in restored.values():
                drv.start()
            self._set(old, {**running, **restored})
            raise StartFailed(str(exc)) from exc
        self._set(new, {**running, **fresh})
        return stuck

    def _set(self, config: Any, by_name: dict[str, Any]) -> None:
        with self._lock:
            self._drivers = [by_name[d.name] for d in config.drivers if d.name in by_name]

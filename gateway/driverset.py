"""What the console and the fleet ask of the running drivers, written once.

Why: the console's ``read ID``, the fleet's ``read_now`` request and the diagnostics each
had their own meter lookup and their own (bounded or not) call into a driver. These helpers
talk to drivers only through the Driver base API (``meter_stats()``, ``read_now()``,
``bus``), so a caller never needs the runtime, only the list of drivers.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

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

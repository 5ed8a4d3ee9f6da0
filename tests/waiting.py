"""One bounded polling wait for the tests."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, step: float = 0.05) -> Any:
    """Poll cond() until it returns something truthy (returned) or timeout seconds pass
    (then its last, falsy, value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def poll_until(get: Callable[[], Any], ok: Callable[[Any], Any], timeout: float = 20.0,
               step: float = 0.1) -> Any:
    """Poll ``get()`` until ``ok(value)``: the value, or an assertion naming the last one
    (so a failing wait says what it saw)."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value):
            return value
        assert time.monotonic() < deadline, value
        time.sleep(step)

"""The one bounded polling wait for the tests.

Both helpers fail the same way: on timeout they raise ``AssertionError`` naming the last
value seen (and the caller's context, if given), so a test can never pass because a wait
quietly ran out.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def poll_until(get: Callable[[], Any], ok: Callable[[Any], Any], timeout: float = 20.0,
               step: float = 0.1, context: Callable[[], Any] | None = None) -> Any:
    """Poll ``get()`` until ``ok(value)`` and return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value):
            return value
        if time.monotonic() >= deadline:
            extra = f"; {context()!r}" if context is not None else ""
            raise AssertionError(f"not met within {timeout} s; last value {value!r}"[:4000]
                                 + extra[:4000])
        time.sleep(step)


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, step: float = 0.05,
             context: Callable[[], Any] | None = None) -> Any:
    """Poll ``cond()`` until it returns something truthy, and return it."""
    return poll_until(cond, bool, timeout, step, context)

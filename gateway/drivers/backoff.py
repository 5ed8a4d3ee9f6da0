"""Exponential backoff with jitter, shared by every driver and the uplink's style.

A wrong key or a refused authentication is *not* retried like a timeout: callers use
``Backoff.fail(permanent=True)`` to jump straight to the longest delay.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    min_s: float = 1.0
    max_s: float = 300.0
    factor: float = 2.0
    current: float = field(init=False, default=0.0)
    failures: int = field(init=False, default=0)

    def fail(self, permanent: bool = False) -> float:
        """Record a failure; return how long to wait (jittered, never above max_s)."""
        self.failures += 1
        if permanent:
            self.current = self.max_s
        else:
            self.current = self.min_s if self.current == 0 else min(self.max_s, self.current * self.factor)
        return random.uniform(self.current / 2, self.current)

    def ok(self) -> None:
        self.current = 0.0
        self.failures = 0

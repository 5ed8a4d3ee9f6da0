"""Proves a trial (new release, config or credentials) healthy, or undoes it.

Healthy = the config loaded and the store opened (we are running), the broker was reached,
and every driver thread is still alive after ``settle_s``: all within the trial's deadline.
A trial for a release this process is not running from (an install interrupted before the
switch) fails at once, so old code never commits new code's trial.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gateway

from .launcher import finish_trial

log = logging.getLogger("gateway.fleet")


def running_from(root: str | Path) -> bool:
    try:
        return Path(gateway.__file__).resolve().is_relative_to(Path(root).resolve())
    except OSError:
        return False


class TrialMonitor(threading.Thread):
    def __init__(self, state_dir: Path, trial: dict[str, Any], *,
                 broker_reached: Callable[[], bool],
                 drivers: Callable[[], list[tuple[str, bool]]],
                 on_done: Callable[[bool, str], None], settle_s: float = 10.0) -> None:
        super().__init__(name="fleet-health", daemon=True)
        self.state_dir = state_dir
        self.trial = trial
        self.broker_reached = broker_reached
        self.drivers = drivers
        self.on_done = on_done
        self.settle_s = settle_s
        self.stopping = threading.Event()
        self.result: tuple[bool, str] | None = None

    def run(self) -> None:
        expect = self.trial.get("expect_root")
        what = self.trial.get("kind", "change")
        if expect and not running_from(expect):
            ok, reason = False, f"not running the new release from {expect} (install interrupted?)"
        else:
            got = wait_healthy(float(self.trial.get("deadline_s", 120)), self.settle_s,
                               self.broker_reached, self.drivers, self.stopping)
            if got is None:
                return  # runtime stopping: the next start decides (the attempt was counted)
            ok, reason = got
        log.log(logging.INFO if ok else logging.ERROR, "fleet: trial of the new %s %s: %s",
                what, "passed" if ok else "FAILED", reason)
        finish_trial(self.state_dir, self.trial, ok, reason if ok else reason + "; rolled back")
        self.result = (ok, reason)
        self.on_done(ok, reason)


def wait_healthy(deadline_s: float, settle_s: float, broker_reached: Callable[[], bool],
                 drivers: Callable[[], list[tuple[str, bool]]],
                 stopping: threading.Event) -> tuple[bool, str] | None:
    """(ok, why) once healthy or failed; None if ``stopping`` was set first."""
    start = time.monotonic()
    while not stopping.wait(0.2):
        elapsed = time.monotonic() - start
        dead = [n for n, alive in drivers() if not alive]
        if dead:
            return False, f"driver {', '.join(dead)} stopped during the health check"
        reached = broker_reached()
        if reached and elapsed >= settle_s:
            return True, f"health checks passed in {elapsed:.1f} s"
        if elapsed >= deadline_s:
            return False, (f"health checks not passed within {deadline_s:g} s: "
                           + ("broker not reachable" if not reached else "not settled"))
    return None

"""Simulated electricity meters, so the whole pipeline runs before any real bus is wired.

Every meter's import register is a pure function of wall-clock time (a per-meter base and
load), so values keep rising across restarts, exactly as a real register would.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

from ..model import QUALITY_SIMULATED, Reading, now_ms
from .base import Driver, RecordSink


class SimulatedDriver(Driver):
    type_name = "simulated"

    def __init__(self, name: str, options: Mapping[str, Any], sink: RecordSink) -> None:
        super().__init__(name, options, sink)
        self.n = int(options.get("meters", 1))
        self.interval_ms = max(1, int(float(options.get("interval_s", 60)) * 1000))
        prefix = str(options.get("meter_prefix", "sim-"))
        rng = random.Random(int(options.get("seed", 0)))
        width = max(5, len(str(self.n)))
        self.meters = [f"{prefix}{i:0{width}d}" for i in range(1, self.n + 1)]
        # base register (Wh) and average load (W) per meter
        self.base = [rng.randrange(1_000_000, 50_000_000) for _ in range(self.n)]
        self.load_w = [rng.randrange(100, 5_000) for _ in range(self.n)]
        self.ticks = 0

    def readings_at(self, tick_ms: int) -> list[Reading]:
        rx = now_ms()
        return [self._reading(i, tick_ms, rx) for i in range(self.n)]

    def _reading(self, i: int, tick_ms: int, rx: int) -> Reading:
        return Reading(self.meters[i], "1-0:1.8.0", self.base[i] + self.load_w[i] * tick_ms
                       // 3_600_000, -3, "kWh", tick_ms, rx, (QUALITY_SIMULATED,), self.bus)

    # Console capabilities (see drivers.base.ConsoleCapabilities).
    def meter_stats(self) -> dict[str, dict[str, Any]]:
        return {m: {"success": self.ticks, "failures": 0} for m in self.meters}

    def read_now(self, meter_id: str) -> list[Reading]:
        """``read ID``: the register right now; stored like any other reading."""
        try:
            i = self.meters.index(meter_id)
        except ValueError:
            raise KeyError(meter_id) from None
        now = now_ms()
        reading = self._reading(i, now, now)
        self.emit([reading])
        return [reading]

    def loop(self) -> None:
        self.log.info("simulated bus %s: %d meters every %.3f s", self.bus, self.n,
                      self.interval_ms / 1000)
        last_tick = None
        while not self.stopping.is_set():
            now = now_ms()
            tick = now - now % self.interval_ms  # aligned to interval boundaries
            if tick != last_tick:
                if last_tick is not None and tick - last_tick > self.interval_ms:
                    self.log.warning("simulated bus %s: %d ticks missed (process stalled?)",
                                     self.bus, (tick - last_tick) // self.interval_ms - 1)
                self.emit(self.readings_at(tick))
                self.ticks += 1
                last_tick = tick
            next_tick = tick + self.interval_ms
            self.stopping.wait(max(0.0, (next_tick - now_ms()) / 1000))
DRIVER = SimulatedDriver

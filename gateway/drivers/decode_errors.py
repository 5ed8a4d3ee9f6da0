"""``meter.decode_error``: a frame the codec could not handle, whatever it raised.

One odd frame must never stop a bus (over radio or a shared line, anyone can send one), so
drivers catch every exception of a codec on a frame, count it and go on. The event carries
the frame's hex so the frame can be replayed with ``gateway decode``; it is rate-limited
per meter (a meter sending garbage every second gives one event a minute, with the count
of the ones held back).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..model import Event, now_ms
from .. import events as kinds

MAX_HEX_BYTES = 1024  # a P1 telegram fits; longer frames are cut (``truncated``)


@dataclass
class DecodeErrors:
    source: str                 # the bus name (Event.source)
    interval_s: float = 60.0
    total: int = 0
    _last: dict[str | None, float] = field(default_factory=dict)
    _held: dict[str | None, int] = field(default_factory=dict)

    def report(self, meter_id: str | None, frame: bytes, exc: BaseException,
               **detail: Any) -> Event | None:
        """Count one; the event to emit, or None while this meter's events are held back."""
        self.total += 1
        now = time.monotonic()
        last = self._last.get(meter_id)
        if last is not None and now - last < self.interval_s:
            self._held[meter_id] = self._held.get(meter_id, 0) + 1
            return None
        self._last[meter_id] = now
        held = self._held.pop(meter_id, 0)
        frame = bytes(frame)
        info: dict[str, Any] = {
            "error": f"{type(exc).__name__}: {exc}"[:300], "hex": frame[:MAX_HEX_BYTES].hex(),
            "length": len(frame), "count": self.total, "suppressed": held, **detail}
        if len(frame) > MAX_HEX_BYTES:
            info["truncated"] = True
        return Event(kinds.DECODE_ERROR, now_ms(), self.source, meter_id, "warning", info)

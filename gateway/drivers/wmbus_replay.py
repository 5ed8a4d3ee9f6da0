"""Meter-side replay guard for wireless M-Bus: a recorded telegram sent again over the air
must not count as new consumption.

Three checks, after a telegram decoded (so only a meter's genuine bytes are judged):

* an exact repeat within ``duplicate_window_s`` is dropped by the driver before decoding;
* a security counter must rise: the AFL message counter (mode 7) strictly, the ELL session
  number never fall;
* the meter's own clock (the telegram's date/time record) must not run backwards.

The last accepted values are a durable per-meter cursor (``wmbus.replay_guard``), committed
with the readings they came with, so a restart does not reopen the window. ``keys set``
clears the guard: a re-keyed meter is usually a replaced one whose counters start again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..model import QUALITY_HISTORIC, Reading

REPLAY_CURSOR = "wmbus.replay_guard"


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str = ""
    state: dict[str, int] | None = None  # what to store when ok (None: nothing changed)


def telegram_marks(extra: dict[str, Any], readings: Iterable[Reading]) -> dict[str, int]:
    """The monotonic marks a telegram carries: AFL counter, ELL session, meter time."""
    marks: dict[str, int] = {}
    afl = extra.get("afl") or {}
    if isinstance(afl.get("counter"), int):
        marks["afl_counter"] = afl["counter"]
    ell = extra.get("ell") or {}
    if isinstance(ell.get("session"), int):
        marks["ell_session"] = ell["session"]
    times = [r.meter_ts_ms for r in readings
             if r.meter_ts_ms is not None and QUALITY_HISTORIC not in r.quality]
    if times:
        marks["meter_ts_ms"] = max(times)
    return marks


# mark -> (must rise strictly, what it is called in a message)
RULES = {"afl_counter": (True, "AFL message counter"),
         "ell_session": (False, "ELL session number"),
         "meter_ts_ms": (False, "meter time")}


def judge(last: dict[str, Any] | None, marks: dict[str, int]) -> Verdict:
    """Compare a telegram's marks with the last accepted ones of its meter."""
    last = last if isinstance(last, dict) else {}
    for name, value in marks.items():
        prev = last.get(name)
        if not isinstance(prev, int):
            continue
        strict, what = RULES[name]
        if value < prev or (strict and value == prev):
            return Verdict(False, f"{what} {value} is {'not above' if strict else 'below'} the "
                                  f"last accepted {prev}")
    if not marks:
        return Verdict(True)
    state = {**{k: v for k, v in last.items() if k in RULES and isinstance(v, int)}, **marks}
    return Verdict(True, state=None if state == last else state)

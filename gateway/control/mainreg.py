"""Which of a meter's registers is its main one: the cumulative index a technician reads off
the meter's display (energy, volume, heat), not whatever record happened to come last (a
temperature, a flags word, a value from a storage slot)."""

from __future__ import annotations

import re
from typing import Mapping

_OBIS = re.compile(r"(\d+)-(\d+):(\d+)\.(\d+)\.(\d+)(?:[*&]\d+)?")
# (A, C, D, E) of the main register per medium, best first; B (channel) may be anything.
# 1 electricity: +A total (1.8.0), |A| (15.8.0), -A (2.8.0); 4 heat cost allocator;
# 5/6 cooling/heat energy; 7 gas volume; 8/9 cold/hot water volume;
# 0-n:24.2.x the M-Bus channel reading of a DSMR P1 telegram (gas, water, heat).
_OBIS_RANK: tuple[tuple[int, int, int, int | None], ...] = (
    (1, 1, 8, 0), (1, 15, 8, 0), (1, 2, 8, 0), (6, 1, 0, 0), (6, 8, 0, 0), (5, 1, 0, 0),
    (7, 3, 0, 0), (7, 13, 2, 0), (7, 13, 0, 0), (8, 1, 0, 0), (9, 1, 0, 0), (4, 1, 0, 0),
    (0, 24, 2, 1), (0, 24, 2, 3), (0, 24, 2, None),
)
# M-Bus record keys (see protocols.mbus.records.DataRecord.key): instantaneous value,
# storage 0, tariff 0, subunit 0 carry no "/" suffix; a descriptor may follow in brackets.
_MBUS_RANK = ("Energy", "Volume", "Mass", "HCA")
_ZCL_MAIN = ("zcl:0702:CurrentSummationDelivered",)
CUMULATIVE_UNITS = frozenset({"Wh", "kWh", "MWh", "GWh", "J", "kJ", "MJ", "GJ", "m3", "m³",
                              "l", "L", "ft3", "gal(US)", "varh", "kvarh", "t", "kg"})


def rank(quantity: str, unit: str | None = None) -> int | None:
    """How good a main register ``quantity`` is (lower is better), None if it is not one."""
    m = _OBIS.fullmatch(quantity)
    if m:
        a, _b, c, d, e = (int(x) for x in m.groups())
        for i, (ra, rc, rd, re_) in enumerate(_OBIS_RANK):
            if (a, c, d) == (ra, rc, rd) and (re_ is None or e == re_):
                return i
        return None
    if "/" not in quantity:
        base = quantity.split(" (", 1)[0]
        if base in _MBUS_RANK:
            return 100 + _MBUS_RANK.index(base)
    if quantity in _ZCL_MAIN:
        return 200
    if unit in CUMULATIVE_UNITS and "/" not in quantity:
        return 300  # some other cumulative register in an energy or volume unit
    return None


def main_quantity(units: Mapping[str, str | None]) -> str | None:
    """The main register among ``quantity -> unit``, or None when none qualifies."""
    best: tuple[int, str] | None = None
    for q, unit in units.items():
        r = rank(q, unit)
        if r is not None and (best is None or (r, q) < best):
            best = (r, q)
    return best[1] if best else None

"""Zenner (ZRI) water meters, version 0x0B, cold water: after the standard header and
2F2F comes DIF 0x0F and the manufacturer data: a 32-bit status word, the consumption of
the current month and the total volume, both 32-bit counts of 1/256000 m3."""

from __future__ import annotations

from .engine import MFCT_DATA, Field, Profile

MANUFACTURERS = ("ZRI",)

_M3 = dict(unit="m3", divisor=256000)

PROFILES = [
    Profile("zenner-0b", MANUFACTURERS, (0x7A, 0x72), versions=(0x0B,), device_types=(0x16,),
            source=MFCT_DATA,
            fields=(Field("error_flags", 0, 4, "bits", quantity="Error flags (manufacturer)"),
                    Field("current_period_volume", 4, 4, quantity="Volume (current month)",
                          **_M3),
                    Field("total_volume", 8, 4, quantity="Volume", **_M3)),
            note="Zenner water meter, manufacturer data after DIF 0x0F"),
]

"""Qundis (QDS) walk-by telegrams: one LVAR record with VIF 0xFF 0x5F holding a fixed
structure. Bytes 7-9 of its data are a DIF/VIF-like header whose VIF (byte 9) gives the
quantity and scale of every value (0x13 litres, 0x05 0.1 kWh, 0x0D 0.1 MJ, 0x6E HCA
units); then the current value (4-byte BCD), the year-end due date (type G) and value,
the month-end date and value (EN 13757-3 storage numbers 1 and 17, as Qundis' own
standard-record telegrams use them), and monthly deltas. Byte 7 is 0x07 in this structure;
a record whose data differ (scrambled, another layout) is left as raw bytes. Water (Q water), heat (Q heat)
and heat cost allocators (Q caloric) share the structure.
"""

from __future__ import annotations

from .engine import Field, Profile, vif_record

MANUFACTURERS = ("QDS",)

_walk_by = (
    Field("total_{q}", 12, 4, "bcd", vif_at=9),
    Field("due_date", 16, 2, "date_g", storage=1, invalid=(0xFFFF,), optional=True),
    Field("due_date_{q}", 18, 4, "bcd", vif_at=9, storage=1, optional=True),
    Field("month_end_date", 22, 2, "date_g", storage=17, invalid=(0xFFFF,), optional=True),
    Field("month_end_{q}", 24, 4, "bcd", vif_at=9, storage=17, optional=True),
)

PROFILES = [
    Profile("qundis-walk-by", MANUFACTURERS, (0x78, 0x7A, 0x72), source=vif_record(b"\xff\x5f"),
            signature=((7, b"\x07"),), fields=_walk_by, note="Q water / Q heat / Q caloric walk-by structure"),
]

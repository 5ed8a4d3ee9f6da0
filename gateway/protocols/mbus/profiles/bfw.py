"""BFW 240 radio heat cost allocator (BFW, version 2, type 8), CI 0x7A, unencrypted:
after 2F2F the payload is BFW's own layout, 38 bytes: the HCA units at the last due date
(16-bit big-endian at 2), the current units (at 4), 18 packed 12-bit monthly values, and
the device date as day, month, year BCD in the last three bytes (at 35).
"""

from __future__ import annotations

from .engine import Field, Profile

MANUFACTURERS = ("BFW",)

PROFILES = [
    Profile("bfw-240radio", MANUFACTURERS, (0x7A,), versions=(0x02,), device_types=(0x08,),
            skip=b"\x2f\x2f",
            fields=(Field("due_date_hca", 2, 2, "uint_be", quantity="HCA units", storage=1),
                    Field("hca", 4, 2, "uint_be", quantity="HCA units"),
                    Field("meter_date", 35, 3, "date_bcd_dmy", quantity="Date (current)")),
            note="BFW 240 radio heat cost allocator"),
]

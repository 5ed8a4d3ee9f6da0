"""Sontex (SON): standard EN 13757-3 records (the 868 heat cost allocator sends mode 5);
the profile names which records are the main register and the due-date value."""

from __future__ import annotations

from .engine import RECORDS, Profile, RecordName

MANUFACTURERS = ("SON",)

PROFILES = [
    Profile("sontex-868", MANUFACTURERS, (0x7A, 0x72), versions=(0x16,), device_types=(0x08,),
            source=RECORDS,
            names=(RecordName("hca", "HCA units"), RecordName("due_date_hca", "HCA units", 1),
                   RecordName("due_date", "Date", 1)),
            note="Sontex 868 heat cost allocator"),
    Profile("sontex-supercom587", MANUFACTURERS, (0x7A, 0x72), versions=(0x3C,),
            device_types=(0x06, 0x07), source=RECORDS,
            names=(RecordName("total_volume", "Volume"),
                   RecordName("due_date_volume", "Volume", 1),
                   RecordName("due_date", "Date", 1)),
            note="Sontex Supercom 587 water meter"),
]

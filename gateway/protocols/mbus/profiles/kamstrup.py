"""Kamstrup (KAM) water and heat meters.

Their compact frames (CI 0x79) name only the format signature (a CRC over the records'
DIF/VIF bytes); ``COMPACT_FORMATS`` are the DIF/VIF sequences Kamstrup's Multical 21 /
flowIQ use, so a compact frame decodes before any full frame was heard (the signature
equals the EN 13757 CRC of these bytes, which the tests check). The info-code record
(VIF 0xFF 0x20, 16 bits) carries the dry, reverse, leak and burst flags.
"""

from __future__ import annotations

from .engine import Field, Profile, RecordName

MANUFACTURERS = ("KAM",)

COMPACT_FORMATS: dict[tuple[str, int], bytes] = {
    ("KAM", 0xA8ED): bytes.fromhex("02FF2004134413615B6167"),
    ("KAM", 0xC412): bytes.fromhex("02FF20041392013BA1015B8101E7FF0F"),
    ("KAM", 0x61EB): bytes.fromhex("02FF2004134413A1015B8101E7FF0F"),
    ("KAM", 0xD2F7): bytes.fromhex("02FF2004134413615B5167"),
}

_info = (
    Field("dry", 0, 2, "bits", quantity="Alarm dry", shift=0, mask=1),
    Field("backflow", 0, 2, "bits", quantity="Alarm reverse flow", shift=1, mask=1),
    Field("leak", 0, 2, "bits", quantity="Alarm leak", shift=2, mask=1),
    Field("burst", 0, 2, "bits", quantity="Alarm burst", shift=3, mask=1),
)

PROFILES = [
    Profile("kamstrup-water", MANUFACTURERS, (0x78, 0x79, 0x7A, 0x72), device_types=(0x06, 0x07,
                                                                                    0x16, 0x15),
            source="records", record_fields=(("FF20", _info),),
            names=(RecordName("total_volume", "Volume"),
                   RecordName("due_date_volume", "Volume", 1)),
            note="Multical 21 / flowIQ water meter"),
    Profile("kamstrup-heat", MANUFACTURERS, (0x78, 0x79, 0x7A, 0x72),
            device_types=(0x04, 0x0C, 0x0D), source="records",
            names=(RecordName("total_energy", "Energy"),
                   RecordName("total_volume", "Volume"),
                   RecordName("due_date_energy", "Energy", 1)),
            note="Multical heat meter"),
]

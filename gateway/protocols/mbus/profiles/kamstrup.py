"""Kamstrup (KAM, KAW) water and heat meters.

Their compact frames (CI 0x79) name only the format signature (a CRC over the records'
DIF/VIF bytes); ``COMPACT_FORMATS`` are the DIF/VIF sequences Kamstrup's Multical 21 /
flowIQ use, so a compact frame decodes before any full frame was heard (the signature
equals the EN 13757 CRC of these bytes, which the tests check). The info-code record
(VIF 0xFF 0x20, 16 bits) carries the dry, reverse, leak and burst flags.
"""

from __future__ import annotations

from ..crc import crc_en13757
from .engine import Field, Profile, RecordName

MANUFACTURERS = ("KAM", "KAW")  # KAW: the code of Kamstrup's water meters

_FORMATS = (  # DIF/VIF sequences of Multical 21, flowIQ 2200/3100 and KWM2231 frames
    "02FF2004134413615B6167", "02FF20041392013BA1015B8101E7FF0F",
    "02FF2004134413A1015B8101E7FF0F", "02FF2004134413615B5167", "02FF2004134413",
    "02FF200413523B", "02FF2004134413426C523B615B616751678101E7FF0F06FF1B",
    "04FF2304134413426C023B92013BA2013B06FF1BA1015B91015BA10167",
    "04FF234413523B06FF1B426C61675167023B04138101E7FF0F",
)
COMPACT_FORMATS: dict[tuple[str, int], bytes] = {
    (m, crc_en13757(bytes.fromhex(f))): bytes.fromhex(f) for f in _FORMATS for m in MANUFACTURERS}

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
            device_types=(0x04, 0x0A, 0x0B, 0x0C, 0x0D), source="records",
            names=(RecordName("total_energy", "Energy"),
                   RecordName("total_volume", "Volume"),
                   RecordName("due_date_energy", "Energy", 1)),
            note="Multical heat meter"),
]

"""Bmeters Hydrodigit water meters (BMT, versions 0x13/0x15/0x17): standard records for the
volume and date, then manufacturer data after DIF 0x0F: a contents byte whose bits say
which blocks follow (0x01 battery voltage, 0x02 fraud, 0x80 leak date, 0x04 backflow,
0x10 twelve monthly values), in that order: the voltage code (low nibble), the fraud type
(bits 5-7) and its date, the leak date (3 BCD bytes, year first), the backflow (32-bit,
litres) and the monthly totals.
"""

from __future__ import annotations

from .engine import MFCT_DATA, Field, Profile, RecordName

MANUFACTURERS = ("BMT",)

_VOLTS = ((0x1, "1.9"), (0x2, "2.1"), (0x3, "2.2"), (0x4, "2.3"), (0x5, "2.4"), (0x6, "2.5"),
          (0x7, "2.65"), (0x8, "2.8"), (0x9, "2.9"), (0xA, "3.05"), (0xB, "3.2"),
          (0xC, "3.35"), (0xD, "3.5"), (0x0, "3.7"), (0xE, "3.7"), (0xF, "3.7"))

PROFILES = [
    Profile("bmeters-hydrodigit", MANUFACTURERS, (0x7A, 0x72), versions=(0x13, 0x15, 0x17),
            device_types=(0x06, 0x07), source=MFCT_DATA,
            names=(RecordName("total_volume", "Volume"),),
            sequence_start=1,
            sequence=(
                Field("battery_voltage", 0, 1, "table", quantity="Battery voltage", unit="V",
                      table=tuple((hi << 4 | lo, v) for hi in range(16) for lo, v in _VOLTS),
                      when=(0, 0x01)),
                Field("tamper", 0, 1, "bits", quantity="Alarm fraud", shift=5, mask=0x07,
                      when=(0, 0x02)),  # magnetic 0x80, sensor 0x40, module removed 0x20
                Field("", 0, 3, when=(0, 0x02)),  # fraud date
                Field("leak_date", 0, 3, "date_bcd_ymd", quantity="Date (leak)",
                      when=(0, 0x80), invalid=(0,)),
                Field("backflow_volume", 0, 4, quantity="Volume (backflow)", unit="m3",
                      exponent=-3, when=(0, 0x04)),
            ),
            note="Hydrodigit water meter"),
]

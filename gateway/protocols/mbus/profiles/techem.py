"""Techem radio meters (TCH): manufacturer CI 0xA0-0xA2 payloads.

Facts from the public layouts (wmbusmeters' mkradio3/mkradio4/mkradio3a/fhkvdataiii/
compact5 descriptions and their test telegrams): after the CI, byte 0 is a frame code,
then the billing-date register and its value, then the current date and the consumption
since that date. Dates are 16-bit little-endian: the due date as day | month << 5 |
(year - 2000) << 9, the current date as day << 4 | month << 9 with the year of the next
such day after the due date.
"""

from __future__ import annotations

from .engine import Derived, Field, Profile

MANUFACTURERS = ("TCH",)
_M3 = dict(quantity="Volume", unit="m3", exponent=-1)   # 0.1 m3 steps

_radio_water = (
    Field("due_date", 1, 2, "date_tch", storage=1),
    Field("due_date_volume", 3, 2, storage=1, **_M3),
    Field("meter_date", 5, 2, "date_tch_cur", relative_to="due_date", quantity="Date (current)"),
    Field("current_period_volume", 7, 2, quantity="Volume (current period)", unit="m3",
          exponent=-1),
)
_total = (Derived("total_volume", ("due_date_volume", "current_period_volume"),
                  quantity="Volume"),)


def _hca(temp_at: int) -> tuple[Field, ...]:
    return (
        Field("due_date", 1, 2, "date_tch", storage=1),
        Field("due_date_hca", 3, 2, quantity="HCA units", storage=1),
        Field("meter_date", 5, 2, "date_tch_cur", relative_to="due_date",
              quantity="Date (current)"),
        Field("hca", 7, 2, quantity="HCA units"),
        Field("room_temperature", temp_at, 2, quantity="External temperature", unit="°C",
              exponent=-2, optional=True),
        Field("radiator_temperature", temp_at + 2, 2, quantity="Flow temperature", unit="°C",
              exponent=-2, optional=True),
    )


PROFILES = [
    Profile("techem-mkradio3", MANUFACTURERS, (0xA2,), versions=(0x74,),
            device_types=(0x62, 0x72), fields=_radio_water, derived=_total,
            note="MK Radio 3 water meter"),
    Profile("techem-mkradio4", MANUFACTURERS, (0xA2,), versions=(0x95, 0x70),
            device_types=(0x62, 0x72),
            fields=(Field("due_date_volume", 3, 2, storage=1, **_M3),
                    Field("current_period_volume", 7, 2, quantity="Volume (current period)",
                          unit="m3", exponent=-1)),
            derived=_total, note="MK Radio 4 water meter"),
    Profile("techem-mkradio3a", MANUFACTURERS, (0xA2,), versions=(0x50,),
            device_types=(0x62, 0x72),
            fields=(Field("meter_date", 2, 2, "date_tch", quantity="Date (current)"),
                    Field("total_volume", 4, 3, **_M3)),
            note="MK Radio 3a water meter (12 monthly values follow)"),
    # FHKV data III: the frame code (first byte) fixes the layout, not the version
    Profile("techem-fhkvdataiii", MANUFACTURERS, (0xA0, 0xA2), versions=(0x69, 0x94),
            device_types=(0x80,), signature=((0, b"\x0f"),), fields=_hca(10),
            note="FHKV data III heat cost allocator (frame 0x0F: one extra byte)"),
    Profile("techem-fhkvdataiii", MANUFACTURERS, (0xA0, 0xA2), versions=(0x69, 0x94),
            device_types=(0x80,), signature=((0, b"\x11"),), fields=_hca(9),
            note="FHKV data III heat cost allocator (frame 0x11)"),
    Profile("techem-fhkvdataiii", MANUFACTURERS, (0xA0, 0xA2), versions=(0x69, 0x94),
            device_types=(0x80,), signature=((0, b"\x01"),), fields=_hca(9),
            note="FHKV data III heat cost allocator (older frame 0x01)"),
    Profile("techem-vario451", MANUFACTURERS, (0xA2,), versions=(0x27,),
            device_types=(0x04, 0xC3),
            fields=(Field("due_date", 1, 2, "date_tch", storage=1),
                    Field("due_date_energy", 3, 2, quantity="Energy", unit="J", exponent=6,
                          storage=1),
                    Field("meter_date", 5, 2, "date_tch_cur", relative_to="due_date",
                          quantity="Date (current)"),
                    Field("current_period_energy", 7, 2, quantity="Energy (current period)",
                          unit="J", exponent=6)),
            derived=(Derived("total_energy", ("due_date_energy", "current_period_energy"),
                             quantity="Energy"),),
            note="Vario 4 type 4.5.1 heat meter (MJ)"),
    Profile("techem-tsd2", MANUFACTURERS, (0xA0,), versions=(0x76,), device_types=(0xF0,),
            fields=(Field("smoke", 0, 1, "bits", quantity="Alarm smoke", mask=0x01),
                    Field("defect", 0, 1, "bits", quantity="Alarm defect", shift=7, mask=1),
                    Field("due_date", 1, 2, "date_tch", storage=1)),
            note="TSD2 smoke detector (status byte: 1 smoke, 0x80 defect)"),
    Profile("techem-compact5", MANUFACTURERS, (0xA1, 0xA2), versions=(0x22, 0x39, 0x45),
            device_types=(0x04, 0x43, 0xC3),
            fields=(Field("due_date_energy", 3, 3, quantity="Energy", unit="kWh", storage=1),
                    Field("current_period_energy", 7, 3, quantity="Energy (current period)",
                          unit="kWh")),
            derived=(Derived("total_energy", ("due_date_energy", "current_period_energy"),
                             quantity="Energy"),),
            note="Compact V / Vario heat meter"),
]

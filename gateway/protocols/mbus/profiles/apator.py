"""Apator water meters.

- Apator 08 (manufacturer code 0x8614, "APT", version/type 3/3 or 0x0F/0x0F), CI 0xA0:
  the payload starts with the volume as a 32-bit little-endian count of 1/3 litre; the
  Apator 17-2 (version 4, type 0x11) sends the same word counting 1/3 m3.
- Apator E-ITN heat cost allocators (version 4, type 8), CI 0xA0: season start, the HCA
  units at the due date, the seal-break date, the current units, the current date (Techem
  style day | month << 5 | year << 9) and the season's average room temperatures (1/256
  °C); CI 0xB6 frames put a counted block and 0xA0 before the same data.
- Apator AT-WMBUS-NA-1 (version 0x14, water), CI 0xA0/0xA1: one AES block under the
  meter's key holding a packed 28-bit litre count and its decimal scale.
- Apator AT-WMBUS-16-2 (APA, version 5, water), CI 0x7A: after 2F2F the payload is
  Apator's register stream: 8 bytes of frame code, date and fault flags, then one tag byte per
  register followed by its data, whose size the tag fixes; tag 0x10 is the total volume
  (32-bit litres); 0xFF pads to the encryption block; the last 2 bytes are a checksum.
"""

from __future__ import annotations

from typing import Any

from .. import security
from ..errors import DecryptError, FrameError, NoKeyError, TruncatedError
from .engine import Field, Profile, Tagged, transform

MANUFACTURERS = ("APT", "APA")

# tag -> data size (published register sizes of the 16-2 stream)
_SIZES_162: dict[int, int] = {
    0x00: 4, 0x01: 3, 0x10: 4, 0xA1: 4, 0x11: 2, 0x40: 6, 0x41: 2, 0x42: 4, 0x43: 2, 0x44: 3,
    **{t: 1 + 4 * (t - 0x6F) for t in range(0x71, 0x7D)},  # monthly history: n + 1 words
    0x80: 10, 0x81: 10, 0x82: 10, 0x83: 10, 0x84: 10, 0x86: 10, 0x87: 10,
    0x85: 11, 0x88: 11, 0x8F: 11, 0x8A: 9, 0x8B: 6, 0x8C: 6, 0x8E: 7,
    0xA0: 4, 0xA2: 1, 0xA3: 7, 0xA4: 4, 0xA5: 1, 0xA9: 1, 0xAF: 1, 0xA6: 3,
    0xA7: 2, 0xA8: 2, 0xAA: 2, 0xAB: 2, 0xAC: 2, 0xAD: 2,
    0xB0: 5, 0xB1: 8, 0xB2: 16, 0xB3: 8, 0xB4: 2, 0xB5: 16,
    **{t: 3 for t in range(0xB6, 0xC0)}, **{t: 3 for t in range(0xC0, 0xC8)},
    0xD0: 3, 0xD3: 3, 0xF0: 4,
}

@transform("apator-b6")
def _b6(payload: bytes, ctx: dict[str, Any]) -> bytes:
    """CI 0xB6 frames put a counted block (count byte, then that many bytes) and 0xA0
    before the same data a CI 0xA0 frame carries."""
    n = payload[0] if payload else 0
    rest = payload[1 + n:]
    if not payload or rest[:1] != b"\xa0":
        raise FrameError("Apator CI 0xB6 frame without the 0xA0 data block after its "
                         "counted prefix", ctx.get("header"))
    return rest[1:]


@transform("apator-na1")
def _na1(payload: bytes, ctx: dict[str, Any]) -> bytes:
    """AT-WMBUS-NA-1: byte 0 is the access number, bytes 2-17 one AES-128-CBC block under
    the meter's key with the mode 5 IV (M, A, access number x 8). Plain byte 0 is 0x2F;
    the volume is a 28-bit count (low nibble of byte 1, then bytes 2-4) of litres times
    10 ** (bits 4-5 of byte 1). -> the count (32-bit LE) and the VIF of its scale."""
    h = ctx.get("header")
    frame, key = ctx.get("frame"), ctx.get("key")
    if key is None:
        raise NoKeyError("Apator NA-1 payload is AES encrypted and no key is configured "
                         "for this meter", h)
    if frame is None:
        raise DecryptError("Apator NA-1 payload needs the radio link header for its IV", h)
    if len(payload) < 18:
        raise TruncatedError(f"Apator NA-1 payload needs 18 bytes, got {len(payload)}", h)
    iv = security.mode5_iv(frame[2:4], frame[4:10], payload[0])
    p = security.aes_cbc_decrypt(key, iv, bytes(payload[2:18]))
    if p[0] != 0x2F:
        raise DecryptError(f"decrypt failed: Apator NA-1 check byte is {p[0]:02X}, not 2F "
                           "(wrong key?)", h)
    count = p[4] << 20 | p[3] << 12 | p[2] << 4 | (p[1] & 0x0F)
    return count.to_bytes(4, "little") + bytes((0x13 + ((p[1] >> 4) & 0x03),))


def _eitn() -> tuple[Field, ...]:
    """E-ITN heat cost allocator data (after CI 0xA0, or the 0xB6 prefix)."""
    return (
        Field("due_date_hca", 3, 2, quantity="HCA units", storage=1),
        Field("tamper", 5, 2, "nonzero", quantity="Alarm seal broken"),  # seal-break date set
        Field("hca", 7, 2, quantity="HCA units"),
        Field("meter_date", 9, 2, "date_tch", quantity="Date (current)"),
        Field("room_temperature", 13, 2, quantity="External temperature (season average)",
              unit="°C", divisor=256),
    )


PROFILES = [
    Profile("apator-08", ("APT",), (0xA0,), versions=(0x03, 0x0F), device_types=(0x03, 0x0F),
            fields=(Field("total_volume", 0, 4, quantity="Volume", unit="m3", exponent=-3,
                          divisor=3),),
            note="Apator 08 water meter (1/3 litre counts)"),
    Profile("apator-172", ("APT",), (0xA0,), versions=(0x04,), device_types=(0x11,),
            fields=(Field("total_volume", 0, 4, quantity="Volume", unit="m3", divisor=3),),
            note="Apator 17-2 water meter (counts of 1/3 m3)"),
    Profile("apator-eitn", ("APA", "APT"), (0xA0,), versions=(0x04,), device_types=(0x08,),
            fields=_eitn(), note="Apator E-ITN 30 heat cost allocator"),
    Profile("apator-eitn", ("APA", "APT"), (0xB6,), versions=(0x04,), device_types=(0x08,),
            transform="apator-b6", fields=_eitn(),
            note="Apator E-ITN 30 heat cost allocator (CI 0xB6 frame)"),
    Profile("apator-na1", ("APA",), (0xA0, 0xA1), versions=(0x14,), device_types=(0x07,),
            transform="apator-na1",
            fields=(Field("total_volume", 0, 4, vif_at=4),),
            note="Apator AT-WMBUS-NA-1 water meter module (AES, meter key)"),
    Profile("apator-16-2", ("APA",), (0x7A, 0x72), versions=(0x05,), device_types=(0x06, 0x07),
            skip=b"\x2f\x2f", prefer_records=True,
            tagged=Tagged(start=8, sizes=_SIZES_162, end_tag=0xFF, trailer=2, fields={
                0x10: (Field("total_volume", 0, 4, quantity="Volume", unit="m3", exponent=-3),),
            }),
            note="Apator AT-WMBUS-16-2 register stream"),
]

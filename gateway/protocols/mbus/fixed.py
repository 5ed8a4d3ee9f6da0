"""The fixed data structure of wired M-Bus (EN 13757-3:2004 / EN 1434-3, CI 0x73; CI 0x77
sends its multi-byte fields most significant byte first):

    ident (4, BCD) | access | status | unit/medium 1 | unit/medium 2 | counter 1 | counter 2
    (counters: 4 bytes each)

Status bit 7: counters binary (1) or BCD (0); bit 6: historic (1) or actual values (0);
bits 0-4 as in the variable structure. The two top bits of each unit byte form the medium
(byte 1 bits 7-6 are medium bits 3-2, byte 2 bits 7-6 are bits 1-0, as libmbus reads
them). Unit 0x3E on counter 2: counter 1's unit, historic. Sans-I/O.
"""

from __future__ import annotations

from typing import Any

from .errors import FrameError, TruncatedError
from .records import DataRecord, decode_bcd
from .tables import CI_FIXED_MSB
from .telegram import Telegram, bcd_id

# (quantity, unit, exponent of the first code of a 1/10/100 triple), code -> triple start
_TRIPLES: dict[int, tuple[str, str, int]] = {
    0x02: ("Energy", "kWh", -3), 0x05: ("Energy", "kWh", 0), 0x08: ("Energy", "kWh", 3),
    0x0B: ("Energy", "J", 3), 0x0E: ("Energy", "J", 6), 0x11: ("Energy", "J", 9),
    0x14: ("Power", "W", 0), 0x17: ("Power", "W", 3), 0x1A: ("Power", "W", 6),
    0x1D: ("Power", "J/h", 3), 0x20: ("Power", "J/h", 6), 0x23: ("Power", "J/h", 9),
    0x26: ("Volume", "m3", -6), 0x29: ("Volume", "m3", -3), 0x2C: ("Volume", "m3", 0),
    0x2F: ("Volume flow", "m3/h", -6), 0x32: ("Volume flow", "m3/h", -3),
    0x35: ("Volume flow", "m3/h", 0),
}
UNITS: dict[int, tuple[str, str, int]] = {
    base + k: (q, u, e + k) for base, (q, u, e) in _TRIPLES.items() for k in range(3)}
UNITS[0x00] = ("Time (h,m,s)", "", 0)
UNITS[0x01] = ("Date (D,M,Y)", "", 0)
UNITS[0x38] = ("Temperature", "°C", -3)
UNITS[0x39] = ("HCA units", "", 0)
UNITS[0x3F] = ("Dimensionless", "", 0)
SAME_BUT_HISTORIC = 0x3E

# fixed-structure medium -> device type of the variable structure (Table 3)
MEDIA = {0x00: 0x00, 0x01: 0x01, 0x02: 0x02, 0x03: 0x03, 0x04: 0x04, 0x05: 0x05,
         0x06: 0x06, 0x07: 0x07, 0x08: 0x08, 0x0A: 0x03, 0x0B: 0x04, 0x0C: 0x06,
         0x0D: 0x07, 0x0E: 0x08}


def medium(unit1: int, unit2: int) -> int:
    return ((unit1 & 0xC0) >> 4) | ((unit2 & 0xC0) >> 6)


def decode_fixed(ci: int, data: bytes, pos: int, header: dict[str, Any], *,
                 c_field: int | None = None, address: int | None = None) -> Telegram:
    if len(data) - pos < 16:
        raise TruncatedError(f"fixed data structure: needs 16 bytes, {len(data) - pos} left",
                             header)
    if len(data) - pos > 16:
        raise FrameError(f"fixed data structure: {len(data) - pos - 16} bytes more than its "
                         "16", header)
    b = bytes(data[pos:pos + 16])
    msb = ci == CI_FIXED_MSB
    ident = b[0:4][::-1] if msb else b[0:4]
    access, status, u1, u2 = b[4], b[5], b[6], b[7]
    c1, c2 = b[8:12], b[12:16]
    if msb:
        c1, c2 = c1[::-1], c2[::-1]
    med = medium(u1, u2)
    header.update(id=bcd_id(ident), device_type=MEDIA.get(med, 0x0F), access_number=access)
    historic = 1 if status & 0x40 else 0
    binary = bool(status & 0x80)
    records = []
    first_key = None
    for n, (unit_code, raw) in enumerate(((u1 & 0x3F, c1), (u2 & 0x3F, c2)), start=1):
        storage = historic
        if n == 2 and unit_code == SAME_BUT_HISTORIC:
            unit_code, storage = u1 & 0x3F, 1
        q, unit, exp = UNITS.get(unit_code, (f"Reserved unit 0x{unit_code:02X}", "", 0))
        error = None
        if binary:
            value: int | None = int.from_bytes(raw, "little", signed=False)
        else:
            value = decode_bcd(raw)
            if value is None:
                error = "invalid BCD " + raw[::-1].hex().upper()
        if unit_code not in UNITS:
            error = error or f"reserved unit code 0x{unit_code:02X}"
        if first_key == (q, storage):
            q = f"{q} (counter 2)"
        first_key = first_key or (q, storage)
        records.append(DataRecord(q, unit, "number", None if error else value, exp,
                                  "instantaneous", storage, 0, 0, b"", b"", raw, error))
    # bits 6-7 are the coding flags above, not the manufacturer's status bits
    t = Telegram("", header["id"], 0, header["device_type"], access, status & 0x3F, records, ci,
                 link="wired", c_field=c_field, address=address)
    t.extra["fixed_structure"] = {"medium": med, "counter_coding": "binary" if binary
                                  else "BCD", "historic": bool(historic)}
    return t


def encode_fixed(ident: str, access: int, status: int, unit1: int, unit2: int, counter1: int,
                 counter2: int, *, msb: bool = False) -> bytes:
    """The 16 bytes after CI 0x73 (0x77 with ``msb``); status bit 7 picks binary counters.
    ``unit1``/``unit2`` are the whole bytes (medium bits included)."""
    def counter(v: int) -> bytes:
        if status & 0x80:
            return v.to_bytes(4, "little")
        return bytes.fromhex(f"{v:08d}")[::-1]

    ident_b = bytes.fromhex(ident)[::-1]
    c1, c2 = counter(counter1), counter(counter2)
    if msb:
        ident_b, c1, c2 = ident_b[::-1], c1[::-1], c2[::-1]
    return ident_b + bytes((access, status, unit1, unit2)) + c1 + c2

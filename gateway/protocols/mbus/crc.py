"""The two CRCs of this codec family, table-driven.

* EN 13757-4 (wM-Bus blocks, ELL payload): CRC-16 poly 0x3D65, init 0, not reflected,
  final XOR 0xFFFF, sent most significant byte first.
* CRC-16/X-25 (iM871A HCI frames): poly 0x1021 reflected, init 0xFFFF, final XOR 0xFFFF,
  sent least significant byte first.
"""

from __future__ import annotations


def _table_msb(poly: int) -> list[int]:
    out = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ poly) if c & 0x8000 else (c << 1)
        out.append(c & 0xFFFF)
    return out


def _table_lsb(poly_reflected: int) -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly_reflected if c & 1 else c >> 1
        out.append(c)
    return out


_EN13757 = _table_msb(0x3D65)
_X25 = _table_lsb(0x8408)


def crc_en13757(data: bytes) -> int:
    crc = 0
    t = _EN13757
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ t[(crc >> 8) ^ b]
    return crc ^ 0xFFFF


def crc_x25(data: bytes) -> int:
    crc = 0xFFFF
    t = _X25
    for b in data:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFF

"""General-Block-Transfer (Green Book §9.3.x, APDU tag 0xE0) reassembly, sans-I/O.

Landis+Gyr E450 meters push a Data-Notification (often general-glo-ciphered) split into
GBT blocks, one per HDLC frame::

    E0 | block-control | block-number (2) | block-number-ack (2) | block-data (A-XDR octet-string)

block-control: bit 7 = last block, bit 6 = streaming, bits 5..0 = window size. Blocks are
numbered from 1. The blocks' data joined in order is the APDU. A missing block loses the
whole APDU (one :class:`GbtError`, no partial value), and its later blocks are dropped
quietly until a new transfer starts at block 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from . import DlmsError
from .axdr import decode_length

GENERAL_BLOCK_TRANSFER: Final = 0xE0
LAST_BLOCK: Final = 0x80


class GbtError(DlmsError):
    """A General-Block-Transfer that cannot be reassembled (lost or malformed block)."""


@dataclass(frozen=True, slots=True)
class GbtBlock:
    last: bool
    number: int
    ack: int
    data: bytes


def parse_block(apdu: bytes) -> GbtBlock:
    apdu = bytes(apdu)
    if len(apdu) < 7 or apdu[0] != GENERAL_BLOCK_TRANSFER:
        raise GbtError(f"general-block-transfer APDU truncated ({len(apdu)} bytes)")
    n, pos = decode_length(apdu, 6)
    if pos + n != len(apdu):
        raise GbtError(f"GBT block-data length {n} does not match the {len(apdu) - pos} "
                       "bytes present")
    return GbtBlock(bool(apdu[1] & LAST_BLOCK), int.from_bytes(apdu[2:4], "big"),
                    int.from_bytes(apdu[4:6], "big"), apdu[pos:])


@dataclass
class GbtAssembler:
    """Feed APDUs of one sender; get the reassembled APDU when its last block arrived.

    Non-GBT APDUs pass straight through. ``add`` raises GbtError once per lost transfer.
    """

    max_bytes: int = 64 * 1024
    lost: int = 0
    _parts: list[bytes] = field(default_factory=list)
    _next: int = 0       # block number expected next (0: no transfer in progress)
    _skipping: bool = False  # the rest of a transfer that lost a block

    def add(self, apdu: bytes) -> bytes | None:
        if apdu[:1] != bytes([GENERAL_BLOCK_TRANSFER]):
            return apdu
        try:
            b = parse_block(apdu)
        except GbtError:
            self._reset()
            raise
        if b.number == 1:
            unfinished = bool(self._parts)
            self._reset()
            self._start(b)
            if unfinished:
                self.lost += 1
                if b.last:
                    self._reset()
                raise GbtError("general-block-transfer: a new transfer began before the "
                               "last block of the previous one; the previous is lost")
        elif self._skipping:
            if b.last:
                self._reset()
            return None  # the tail of a transfer already reported lost
        elif b.number != self._next:
            what = (f"block {b.number} arrived, {self._next} expected" if self._next
                    else f"block {b.number} arrived without block 1")
            self._reset()
            self._skipping = not b.last
            self.lost += 1
            raise GbtError(f"general-block-transfer: {what}; the APDU is lost")
        else:
            self._parts.append(b.data)
            self._next += 1
        if sum(map(len, self._parts)) > self.max_bytes:
            self._reset()
            raise GbtError(f"general-block-transfer longer than {self.max_bytes} bytes")
        return self._finish() if b.last else None

    def _start(self, b: GbtBlock) -> None:
        self._parts = [b.data]
        self._next = 2

    def _finish(self) -> bytes:
        out = b"".join(self._parts)
        self._reset()
        return out

    def _reset(self) -> None:
        self._parts = []
        self._next = 0
        self._skipping = False

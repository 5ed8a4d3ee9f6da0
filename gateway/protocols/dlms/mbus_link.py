"""DLMS APDUs carried in wired M-Bus long frames (EN 13757-2 link layer), sans-I/O: the HAN
port of Austrian Kaifa MA309 meters (TINETZ, Salzburg Netz, Vorarlberg, Netz NÖ).

    68 | L | L | 68 | C | A | CI | STSAP | DTSAP | APDU segment | CS | 16

L counts C..segment, CS is their sum mod 256. CI 0x00-0x1F is the DLMS transport: bits
0-3 the segment's sequence number, bit 4 set on the last segment. The segments joined are
one APDU (usually general-glo-ciphering). A lost or repeated segment loses the APDU (one
:class:`MbusLinkError`), never glues two APDUs together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Union

from .. import hdlc
from . import DlmsError

START: Final = 0x68
STOP: Final = 0x16
FIN: Final = 0x10


class MbusLinkError(DlmsError):
    """An M-Bus frame or segment sequence that cannot carry a DLMS APDU."""


@dataclass(frozen=True, slots=True)
class Segment:
    address: int
    ci: int
    data: bytes

    @property
    def last(self) -> bool:
        return bool(self.ci & FIN)

    @property
    def sequence(self) -> int:
        return self.ci & 0x0F


def parse_frame(frame: bytes) -> Segment:
    """One complete long frame -> its DLMS segment. Raises MbusLinkError."""
    if len(frame) < 11 or frame[0] != START or frame[3] != START or frame[1] != frame[2]:
        raise MbusLinkError("not an M-Bus long frame (68 L L 68)")
    n = frame[1]
    if len(frame) != n + 6 or frame[-1] != STOP:
        raise MbusLinkError(f"M-Bus long frame of L={n} must be {n + 6} bytes ending 16")
    body = frame[4:4 + n]
    if sum(body) & 0xFF != frame[4 + n]:
        raise MbusLinkError(f"M-Bus checksum mismatch: frame says {frame[4 + n]:02X}, "
                            f"computed {sum(body) & 0xFF:02X}")
    ci = body[2]
    if ci > 0x1F:
        raise MbusLinkError(f"M-Bus CI {ci:02X} is not the DLMS transport (00-1F)")
    return Segment(body[1], ci, bytes(body[5:]))  # after C, A, CI, STSAP, DTSAP


def frame(data: bytes, sequence: int = 0, last: bool = True, address: int = 0xFF,
          control: int = 0x53) -> bytes:
    """A long frame carrying one segment (for simulators and tests)."""
    body = bytes([control, address, (sequence & 0x0F) | (FIN if last else 0), 0x01, 0x67]) + data
    if len(body) > 255:
        raise ValueError("an M-Bus long frame carries at most 250 bytes of segment")
    return bytes([START, len(body), len(body), START]) + body + bytes([sum(body) & 0xFF, STOP])


@dataclass
class MbusLinkDecoder:
    """Bytes in; complete APDUs (bytes) or MbusLinkError instances out via next_event."""

    max_apdu: int = 16 * 1024
    garbage_bytes: int = 0
    _buf: bytearray = field(default_factory=bytearray)
    _parts: list[bytes] = field(default_factory=list)
    _next_seq: int = 0
    _skipping: bool = False
    _pending: bytes | None = None

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > 2 * self.max_apdu:
            drop = len(self._buf) - 2 * self.max_apdu
            del self._buf[:drop]
            self.garbage_bytes += drop

    def clear(self) -> None:
        self._buf.clear()
        self._parts, self._skipping, self._pending = [], False, None

    def next_event(self) -> Union[bytes, MbusLinkError, Any]:
        if self._pending is not None:
            out, self._pending = self._pending, None
            return out
        buf = self._buf
        while True:
            start = buf.find(bytes([START]))
            if start < 0:
                self.garbage_bytes += len(buf)
                buf.clear()
                return hdlc.NEED_DATA
            if start:
                self.garbage_bytes += start
                del buf[:start]
            if len(buf) < 4:
                return hdlc.NEED_DATA
            if buf[1] != buf[2] or buf[3] != START or buf[1] < 5:
                del buf[:1]
                self.garbage_bytes += 1
                continue
            total = buf[1] + 6
            if len(buf) < total:
                return hdlc.NEED_DATA
            raw = bytes(buf[:total])
            try:
                seg = parse_frame(raw)
            except MbusLinkError:
                del buf[:1]  # not a frame after all: look for the next start
                self.garbage_bytes += 1
                continue
            del buf[:total]
            out = self._add(seg)
            if out is not None:
                return out

    def _add(self, seg: Segment) -> Union[bytes, MbusLinkError, None]:
        if seg.sequence == 0:
            lost = bool(self._parts)
            self._parts, self._next_seq, self._skipping = [seg.data], 1, False
            if lost:
                if seg.last:  # this one is whole: it follows the error
                    self._pending = self._parts.pop()
                return MbusLinkError("M-Bus segment sequence restarted before the last "
                                     "segment: the APDU before is lost")
        elif self._skipping:
            self._skipping = not seg.last
            return None  # the rest of an APDU already reported lost
        elif not self._parts or seg.sequence != self._next_seq:
            expected = self._next_seq if self._parts else 0
            self._parts, self._skipping = [], not seg.last
            return MbusLinkError(f"M-Bus segment {seg.sequence} arrived, {expected} expected; "
                                 "the APDU is lost")
        else:
            self._parts.append(seg.data)
            self._next_seq = (seg.sequence + 1) & 0x0F
        if sum(map(len, self._parts)) > self.max_apdu:
            self._parts, self._skipping = [], not seg.last
            return MbusLinkError(f"APDU in M-Bus segments longer than {self.max_apdu} bytes")
        if not seg.last:
            return None
        apdu = b"".join(self._parts)
        self._parts = []
        return apdu

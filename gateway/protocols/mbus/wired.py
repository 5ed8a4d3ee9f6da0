"""Wired M-Bus link layer (EN 13757-2, FT 1.2 frames), sans-I/O.

    ACK            E5
    short frame    10 C A CS 16                      CS = (C + A) mod 256
    control frame  68 03 03 68 C A CI CS 16
    long frame     68 L L 68 C A CI data... CS 16    L = 3 + len(data), CS = sum(C..data)

``FrameDecoder`` is fed whatever the port delivers (``receive_data``) and hands out whole
frames (``next_event``), skipping garbage before a start byte and counting what it skipped.
Requests are built by the small functions at the end; the master's state (FCB per slave)
lives in the driver, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ..stream import NEED_DATA, NeedData  # the one codec sentinel (re-exported here)
from .dongle_stream import BoundedStreamBuffer
from .errors import ChecksumError, FrameError, MBusError, TruncatedError, guarded
from .tables import CI_SELECT, manufacturer_code, manufacturer_value
from .transport import Context, Telegram, bcd_id, decode_application

ACK_BYTE = 0xE5
START_SHORT = 0x10
START_LONG = 0x68
STOP = 0x16

# C field (EN 13757-2 Table 4); FCB = 0x20, FCV = 0x10 on master requests.
C_SND_NKE = 0x40
C_SND_UD = 0x53
C_REQ_UD2 = 0x5B
C_REQ_UD1 = 0x5A
C_RSP_UD = 0x08
FCB = 0x20

ADDRESS_NETWORK_LAYER = 0xFD   # the slave selected by secondary address
ADDRESS_BROADCAST_REPLY = 0xFE
ADDRESS_BROADCAST = 0xFF
MAX_PRIMARY = 250


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class ShortFrame:
    c: int
    a: int


@dataclass(frozen=True, slots=True)
class LongFrame:
    """A long frame; with empty ``data`` it is a control frame."""

    c: int
    a: int
    ci: int
    data: bytes = b""

    @property
    def is_rsp_ud(self) -> bool:
        return (self.c & 0xCF) == C_RSP_UD


Frame = Union[Ack, ShortFrame, LongFrame]




def encode(frame: Frame) -> bytes:
    if isinstance(frame, Ack):
        return bytes((ACK_BYTE,))
    if isinstance(frame, ShortFrame):
        return bytes((START_SHORT, frame.c, frame.a, (frame.c + frame.a) & 0xFF, STOP))
    if isinstance(frame, LongFrame):
        body = bytes((frame.c, frame.a, frame.ci)) + bytes(frame.data)
        ln = len(body)
        if ln > 255:
            raise ValueError(f"long frame user data too long ({len(frame.data)} > 252 bytes)")
        return bytes((START_LONG, ln, ln, START_LONG)) + body + bytes((sum(body) & 0xFF, STOP))
    raise TypeError(f"not an M-Bus frame: {frame!r}")


def deserialize(buf: bytes) -> tuple[Frame, bytes]:
    """One frame from the start of ``buf`` -> (frame, rest).

    Raises TruncatedError if buf holds only part of a frame, ChecksumError or FrameError if
    it is not a valid frame.
    """
    if not buf:
        raise TruncatedError("no data")
    s = buf[0]
    if s == ACK_BYTE:
        return Ack(), bytes(buf[1:])
    if s == START_SHORT:
        if len(buf) < 5:
            raise TruncatedError(f"short frame: {len(buf)} of 5 bytes")
        c, a, cs, stop = buf[1], buf[2], buf[3], buf[4]
        if stop != STOP:
            raise FrameError(f"short frame: stop byte 0x{stop:02X}, expected 0x16")
        if (c + a) & 0xFF != cs:
            raise ChecksumError(f"short frame: checksum 0x{cs:02X}, computed "
                                f"0x{(c + a) & 0xFF:02X}")
        return ShortFrame(c, a), bytes(buf[5:])
    if s == START_LONG:
        if len(buf) < 4:
            raise TruncatedError(f"long frame header: {len(buf)} of 4 bytes")
        l1, l2, s2 = buf[1], buf[2], buf[3]
        if l1 != l2 or s2 != START_LONG:
            raise FrameError(f"long frame header 68 {l1:02X} {l2:02X} {s2:02X}: lengths differ "
                             "or second start byte missing")
        if l1 < 3:
            raise FrameError(f"long frame length {l1} < 3")
        total = 4 + l1 + 2
        if len(buf) < total:
            raise TruncatedError(f"long frame: {len(buf)} of {total} bytes")
        body = buf[4:4 + l1]
        cs, stop = buf[4 + l1], buf[5 + l1]
        if stop != STOP:
            raise FrameError(f"long frame: stop byte 0x{stop:02X}, expected 0x16")
        if sum(body) & 0xFF != cs:
            raise ChecksumError(f"long frame: checksum 0x{cs:02X}, computed "
                                f"0x{sum(body) & 0xFF:02X}")
        return LongFrame(body[0], body[1], body[2], bytes(body[3:])), bytes(buf[total:])
    raise FrameError(f"0x{s:02X} is not a start byte (E5, 10 or 68)")


class FrameDecoder(BoundedStreamBuffer):
    """Buffers bytes from the line and yields frames; resyncs after garbage.

    ``skipped`` counts bytes thrown away, ``errors`` frames that failed their checks; the
    last error is kept in ``last_error`` for the driver's diagnostics.
    """

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        self.skipped += len(self._buf)
        self._buf.clear()

    def next_event(self) -> Frame | NeedData:
        while self._buf:
            try:
                frame, rest = deserialize(bytes(self._buf))
            except TruncatedError:
                return NEED_DATA
            except MBusError as exc:
                self.errors += 1
                if isinstance(exc, ChecksumError):
                    self.crc_errors += 1
                self.last_error = exc
                # drop the bad start byte and look for the next one
                del self._buf[:1]
                self.skipped += 1
                self._skip_to_start()
                continue
            consumed = len(self._buf) - len(rest)
            del self._buf[:consumed]
            return frame
        return NEED_DATA

    def _skip_to_start(self) -> None:
        i = 0
        while i < len(self._buf) and self._buf[i] not in (ACK_BYTE, START_SHORT, START_LONG):
            i += 1
        if i:
            del self._buf[:i]
            self.skipped += i


# --------------------------------------------------------------------------- application

@guarded
def decode_rsp_ud(frame: LongFrame | bytes, key: bytes | None = None, *,
                  formats: Any = None) -> Telegram:
    """Decode an RSP_UD long frame (or its bytes) into a Telegram. Bytes after the stop
    byte are reported (``trailing_bytes``), not a reason to refuse a whole frame."""
    rest = b""
    if not isinstance(frame, LongFrame):
        f, rest = deserialize(bytes(frame))
        if not isinstance(f, LongFrame):
            raise FrameError(f"expected a long frame (RSP_UD), got {type(f).__name__}")
        frame = f
    if not frame.is_rsp_ud:
        raise FrameError(f"C field 0x{frame.c:02X} is not RSP_UD")
    data = bytes((frame.ci,)) + frame.data
    ctx = Context(header={"address": frame.a}, key=key, frame=data, formats=formats)
    t = decode_application(frame.ci, data, 1, ctx, link="wired", c_field=frame.c,
                           address=frame.a)
    if rest:
        t.extra["trailing_bytes"] = rest.hex().upper()
    return t


def decode_session(frames: list[bytes], key: bytes | None = None, *,
                   formats: Any = None) -> list[Any]:
    """RSP_UD frames in order as one session (compact frames after full ones); each item
    is a Telegram or the MBusError it raised."""
    from .compact import Formats
    formats = Formats() if formats is None else formats
    out: list[Any] = []
    for f in frames:
        try:
            out.append(decode_rsp_ud(f, key, formats=formats))
        except MBusError as exc:
            out.append(exc)
    return out


def encode_rsp_ud(address: int, ci: int, payload: bytes, *, acd: bool = False,
                  dfc: bool = False) -> bytes:
    c = C_RSP_UD | (0x20 if acd else 0) | (0x10 if dfc else 0)
    return encode(LongFrame(c, address, ci, payload))


def long_header(ident: str, manufacturer: str, version: int, medium: int, access: int,
                status: int, signature: int = 0) -> bytes:
    """The 12-byte header after CI 0x72 (EN 13757-3 6.1)."""
    return (bytes.fromhex(ident)[::-1] + manufacturer_value(manufacturer).to_bytes(2, "little")
            + bytes((version, medium, access, status)) + signature.to_bytes(2, "little"))


# --------------------------------------------------------------------------- requests

def snd_nke(address: int) -> bytes:
    return encode(ShortFrame(C_SND_NKE, address))


def req_ud2(address: int, fcb: bool) -> bytes:
    return encode(ShortFrame(C_REQ_UD2 | (FCB if fcb else 0), address))


def check_primary(address: int) -> None:
    if not 0 <= address <= MAX_PRIMARY:
        raise ValueError(f"primary address {address} outside 0..{MAX_PRIMARY}")


@dataclass(frozen=True, slots=True)
class SecondaryMask:
    """A secondary address or a wildcard pattern: 8 id digits where F is "any digit",
    manufacturer (None = any), version and medium (None = any)."""

    id: str = "FFFFFFFF"
    manufacturer: str | None = None
    version: int | None = None
    medium: int | None = None

    def __post_init__(self) -> None:
        if len(self.id) != 8 or any(c not in "0123456789Ff" for c in self.id):
            raise ValueError(f"a secondary id is 8 digits (F = wildcard), got {self.id!r}")

    @classmethod
    def parse(cls, text: str) -> "SecondaryMask":
        """``12345678``, ``1234FFFF``, or the 16-hex-digit form ``IIIIIIIIMMMMVVDD`` as
        libmbus prints it (manufacturer bytes in wire order, "2D2C" = KAM; FFFF/FF = any)."""
        t = text.strip().upper()
        if len(t) == 8:
            return cls(t)
        if len(t) == 16:
            m, v, d = t[8:12], t[12:14], t[14:16]
            try:
                mv = int.from_bytes(bytes.fromhex(m), "little")
                return cls(t[:8], None if mv == 0xFFFF else manufacturer_code(mv),
                           None if v == "FF" else int(v, 16), None if d == "FF" else int(d, 16))
            except ValueError:
                pass
        raise ValueError(f"not a secondary address or mask: {text!r} (8 or 16 hex digits)")

    @property
    def is_complete(self) -> bool:
        return "F" not in self.id.upper()

    def encode(self) -> bytes:
        mfr = 0xFFFF if self.manufacturer is None else manufacturer_value(self.manufacturer)
        return (bytes.fromhex(self.id)[::-1] + mfr.to_bytes(2, "little")
                + bytes((0xFF if self.version is None else self.version,
                         0xFF if self.medium is None else self.medium)))

    @classmethod
    def decode(cls, data: bytes) -> "SecondaryMask":
        if len(data) != 8:
            raise FrameError(f"secondary address is 8 bytes, got {len(data)}")
        ident = bcd_id(data[:4])
        if any(c not in "0123456789F" for c in ident):
            raise FrameError(f"secondary id {ident} is not BCD")
        mv = int.from_bytes(data[4:6], "little")
        return cls(ident, None if mv == 0xFFFF else manufacturer_code(mv),
                   None if data[6] == 0xFF else data[6], None if data[7] == 0xFF else data[7])

    def matches(self, ident: str, manufacturer: str, version: int, medium: int) -> bool:
        if any(p not in ("F", "f") and p != d for p, d in zip(self.id, ident)):
            return False
        return ((self.manufacturer is None or self.manufacturer == manufacturer)
                and (self.version is None or self.version == version)
                and (self.medium is None or self.medium == medium))

    def __str__(self) -> str:
        mfr = "FFFF" if self.manufacturer is None else \
            manufacturer_value(self.manufacturer).to_bytes(2, "little").hex().upper()
        v = "FF" if self.version is None else f"{self.version:02X}"
        d = "FF" if self.medium is None else f"{self.medium:02X}"
        return f"{self.id.upper()}{mfr}{v}{d}"


def select_secondary(mask: SecondaryMask) -> bytes:
    """SND_UD to address 253 with CI 0x52: selects the slave(s) matching the mask."""
    return encode(LongFrame(C_SND_UD, ADDRESS_NETWORK_LAYER, CI_SELECT, mask.encode()))

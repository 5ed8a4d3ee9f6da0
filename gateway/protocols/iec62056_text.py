"""The text both IEC 62056-21 readouts and P1 (mode D) telegrams share, sans-I/O.

Kept apart so that :mod:`.iec62056_21` (modes A-C, the push splitter) and :mod:`.p1` (the
telegram's data lines) each import it and never each other: the identification line, the
BCC and CRC-16/ARC checks, the error classes and the framing of a ``/ident ... !CRC``
telegram.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

CRLF: Final = b"\r\n"
MAX_TELEGRAM: Final = 64 * 1024
_END_MARK = re.compile(rb"(?:^|\n)!")

# §6.3.14 baud rate identification character -> baud, by mode.
BAUD_MODE_C: Final[dict[str, int]] = {"0": 300, "1": 600, "2": 1200, "3": 2400, "4": 4800,
                                      "5": 9600, "6": 19200}
BAUD_MODE_B: Final[dict[str, int]] = {"A": 600, "B": 1200, "C": 2400, "D": 4800, "E": 9600,
                                      "F": 19200}
BAUD_CHAR_C: Final[dict[int, str]] = {v: k for k, v in BAUD_MODE_C.items()}

MAX_LINE: Final = 128         # identification message: at most 5 + 16 + CR LF characters


class Iec62056Error(ValueError):
    """Bytes that are not valid IEC 62056-21: the meter (or the line) is at fault."""


class BccError(Iec62056Error):
    """A complete block whose BCC (or telegram CRC) does not match."""


def bcc(data: bytes) -> int:
    """Block check character: XOR of ``data`` (callers pass the bytes after SOH/STX)."""
    x = 0
    for b in data:
        x ^= b
    return x


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC (poly 0x8005 reflected, init 0): the CRC of P1/mode D telegrams."""
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class P1Error(Iec62056Error):
    """Bytes that are not a valid P1 telegram."""


@dataclass(frozen=True, slots=True)
class Identification:
    """``/XXXZ[\\W]ident CRLF``: manufacturer, baud character and identification."""

    manufacturer: str
    baud_char: str
    ident: str

    @property
    def mode(self) -> str:
        if self.baud_char in BAUD_MODE_C:
            return "C"
        if self.baud_char in BAUD_MODE_B:
            return "B"
        return "A"

    @property
    def max_baud(self) -> int:
        return BAUD_MODE_C.get(self.baud_char) or BAUD_MODE_B.get(self.baud_char) or 300

    def serialize(self) -> bytes:
        return ("/" + self.manufacturer + self.baud_char + self.ident).encode("ascii") + CRLF

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["Identification", bytes]:
        end = data.find(CRLF)
        if end < 0:
            raise Iec62056Error("identification message without CR LF")
        line = data[:end]
        if not line.startswith(b"/") or len(line) < 5:
            raise Iec62056Error(f"not an identification message: {_show(line)}")
        if len(line) > MAX_LINE:
            raise Iec62056Error(f"identification message too long ({len(line)} bytes)")
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise Iec62056Error(f"identification message is not ASCII: {_show(line)}") from None
        if not text.isprintable():
            raise Iec62056Error(f"identification message has control characters: {_show(line)}")
        return cls(text[1:4], text[4], text[5:]), data[end + 2:]


def frame_telegram(data: bytes) -> tuple[Identification, bytes, str]:
    """(identification, data lines between the identification line and '!', check) of a
    telegram, its CRC verified when present. Raises P1Error / BccError."""
    if len(data) > MAX_TELEGRAM:
        raise P1Error(f"telegram of {len(data)} bytes is longer than {MAX_TELEGRAM}")
    raw = bytes(b & 0x7F for b in data)  # a 7E1 line read as 8N1 has parity in bit 7
    start = len(raw) - len(raw.lstrip(b"\r\n \x00"))
    if raw[start:start + 1] != b"/":
        raise P1Error("a P1 telegram starts with '/' (the identification line)")
    head_end = raw.find(b"\n", start)
    if head_end < 0:
        raise P1Error("identification line without a line end")
    ident = _identification(raw[start:head_end].rstrip(b"\r"))
    m = _END_MARK.search(raw, head_end)
    if m is None:
        raise P1Error("telegram without the end mark '!'")
    bang = m.end() - 1
    crc_text = _crc_field(raw, bang)
    check = "none"
    if crc_text:
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,4}", crc_text):
            raise P1Error(f"telegram CRC must be 1-4 hex digits, got {_show(crc_text)}")
        said = int(crc_text, 16)
        crc = crc16_arc(raw[start:bang + 1])
        if crc != said:
            raise BccError(f"telegram CRC mismatch: says {said:04X}, computed {crc:04X}")
        check = "crc16"
    return ident, raw[head_end + 1:bang], check


def _identification(line: bytes) -> Identification:
    if len(line) < 5:
        raise P1Error(f"identification line too short: {_show(line)}")
    try:
        ident, _ = Identification.deserialize(line + b"\r\n")
    except Iec62056Error as exc:
        raise P1Error(str(exc)) from None
    return ident


def _crc_field(raw: bytes, bang: int) -> bytes:
    """What the end-mark line says after '!': up to its line end, a next telegram's '/',
    or noise (a control byte; letters and digits stay, a damaged CRC must be refused)."""
    out = bytearray()
    for c in raw[bang + 1:bang + 1 + 64]:
        if c in (0x0A, 0x2F) or not (chr(c).isalnum() or c in b" \r"):
            break
        out.append(c)
    return bytes(out).strip(b"\r ")


def _show(b: bytes, limit: int = 40) -> str:
    s = repr(bytes(b[:limit]))
    return s + ("..." if len(b) > limit else "")

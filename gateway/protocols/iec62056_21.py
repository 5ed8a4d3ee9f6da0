"""IEC 62056-21 (ex IEC 61107) direct local data exchange, modes A, B and C, sans-I/O.

The protocol is ASCII at 7E1: the client sends a sign-on ``/?address!CRLF``, the meter
answers with its identification ``/XXXZident CRLF`` whose 5th character Z gives the
highest baud rate and, by its class, the mode (§6.3.14: '0'-'6' mode C, 'A'-'I' mode B,
anything else mode A). In mode C the client acknowledges with an option select
``ACK V Z Y CRLF`` (Y '0' = data readout, '1' = programming) and both sides switch baud.
Data messages are ``STX data ETX BCC``; BCC is the XOR of every byte after the first
SOH/STX up to and including ETX/EOT (§6.3.12).

Data lines hold data sets ``address(value*unit)`` (§6.5); values are kept as the exact
decimal text the meter sent. Also parsed: the P1-style push telegram ``/ident ... !CRC16``
(mode D / DSMR-like), whose CRC is CRC-16/ARC over ``/`` through ``!``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final, Union

from .iec62056_text import (  # noqa: F401  (re-exported: the codec's public names)
    BAUD_CHAR_C, BAUD_MODE_B, BAUD_MODE_C, CRLF, MAX_LINE, BccError, Identification,
    Iec62056Error, _show, bcc, crc16_arc, frame_telegram,
)

SOH: Final = 0x01
STX: Final = 0x02
ETX: Final = 0x03
EOT: Final = 0x04   # end of a partial block (§6.3.12), BCC follows like ETX
ACK: Final = 0x06
NAK: Final = 0x15

# §6.3.2 option select: protocol control character V and mode control character Y.
PROTOCOL_NORMAL: Final = "0"
MODE_READOUT: Final = "0"
MODE_PROGRAMMING: Final = "1"

# §6.3.4 command message identifiers (SOH C D STX data ETX BCC).
COMMANDS: Final[dict[str, str]] = {
    "P0": "password seed from the meter (operand for the secure algorithm)",
    "P1": "password (clear text)",
    "P2": "password (secured, encrypted with the seed)",
    "R1": "read (ASCII data)",
    "W1": "write (ASCII data)",
    "B0": "break (complete sign-off)",
}

MAX_BLOCK: Final = 64 * 1024  # a whole readout of a big meter fits


# --------------------------------------------------------------------------- 7E1 framing

# A 7E1 character on the wire (start, 7 data bits, even parity, stop) is bit for bit an 8N1
# character whose bit 7 is the parity bit. Doing the parity in software lets any UART, USB
# adapter or pty (which refuses CS7|PARENB) carry 7E1.
_EVEN_PARITY: Final = bytes((b & 0x7F) | ((bin(b & 0x7F).count("1") & 1) << 7) for b in range(256))


def add_even_parity(data: bytes) -> bytes:
    """7-bit ASCII -> 8-bit bytes with the even parity bit in bit 7."""
    return bytes(data).translate(_EVEN_PARITY)


def parity_errors(data: bytes) -> int:
    """How many received 8-bit bytes have a wrong even parity bit."""
    return sum(1 for b in data if _EVEN_PARITY[b] != b)


# --------------------------------------------------------------------------- messages

def sign_on(address: str = "") -> bytes:
    """Request message ``/?address!CRLF`` (§6.3.1); address up to 32 characters."""
    if len(address) > 32 or any(c in address for c in "/?!\r\n") or not address.isascii():
        raise ValueError(f"invalid device address for sign-on: {address!r}")
    return b"/?" + address.encode("ascii") + b"!" + CRLF


def option_select(baud_char: str, mode: str = MODE_READOUT,
                  protocol: str = PROTOCOL_NORMAL) -> bytes:
    """Acknowledgement / option select message ``ACK V Z Y CRLF`` (§6.3.3)."""
    if len(baud_char) != 1 or len(mode) != 1 or len(protocol) != 1:
        raise ValueError("option select takes single characters")
    return bytes([ACK]) + (protocol + baud_char + mode).encode("ascii") + CRLF


def command(cmd: str, data: str = "") -> bytes:
    """Command message ``SOH C D STX data ETX BCC`` (§6.3.4); B0 has no data part."""
    if cmd not in COMMANDS:
        raise ValueError(f"unknown IEC 62056-21 command {cmd!r}")
    if cmd == "B0":
        body = b"B0" + bytes([ETX])
    else:
        body = cmd.encode("ascii") + bytes([STX]) + data.encode("ascii") + bytes([ETX])
    return bytes([SOH]) + body + bytes([bcc(body)])


def data_message(text: str, end: bytes = b"!\r\n") -> bytes:
    """Data message ``STX text [! CR LF] ETX BCC`` (§6.3.5); used by readouts and replies."""
    body = text.encode("ascii") + end + bytes([ETX])
    return bytes([STX]) + body + bytes([bcc(body)])


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class Nak:
    pass


@dataclass(frozen=True, slots=True)
class OptionSelect:
    protocol: str
    baud_char: str
    mode: str


@dataclass(frozen=True, slots=True)
class SignOn:
    address: str


@dataclass(frozen=True, slots=True)
class DataBlock:
    """``STX payload ETX BCC``; ``partial`` for an EOT-terminated block (§6.3.12)."""

    payload: bytes
    partial: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    """``SOH cmd [STX data] ETX BCC``."""

    cmd: str
    data: str


@dataclass(frozen=True, slots=True)
class BadBlock:
    """A block that failed its BCC or framing; the decoder went on. The reason says why."""

    reason: str


Event = Union[Identification, Ack, Nak, OptionSelect, SignOn, DataBlock, Command, BadBlock]


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class Iec62056Decoder:
    """Stream decoder for both sides of the link (meter replies and client requests).

    Bytes are masked to 7 bits (a 7E1 line read as 8N1, as some USB adapters deliver it,
    has the parity bit in bit 7). A bad BCC yields a :class:`BadBlock` (the driver NAKs and
    the meter repeats, §6.3.12); garbage between messages is skipped and counted.
    """

    def __init__(self, meter_side: bool = False) -> None:
        self.meter_side = meter_side  # True in a meter (simulator): ACK starts an option select
        self._buf = bytearray()
        self.garbage_bytes = 0
        self.bcc_errors = 0

    def receive_data(self, data: bytes) -> None:
        self._buf += bytes(b & 0x7F for b in data)
        if len(self._buf) > MAX_BLOCK:
            drop = len(self._buf) - MAX_BLOCK
            del self._buf[:drop]
            self.garbage_bytes += drop

    def clear(self) -> None:
        self._buf.clear()

    def next_event(self) -> Union[Event, _NeedData]:
        buf = self._buf
        while buf:
            b = buf[0]
            if b == ACK:
                if not self.meter_side:  # a meter never sends an option select
                    del buf[:1]
                    return Ack()
                if len(buf) < 6:
                    return NEED_DATA
                text = bytes(buf[1:4]).decode("ascii", "replace")
                ok = bytes(buf[4:6]) == CRLF
                del buf[:6 if ok else 1]
                if not ok:
                    return BadBlock("malformed option select (ACK V Z Y CR LF)")
                return OptionSelect(text[0], text[1], text[2])
            if b == NAK:
                del buf[:1]
                return Nak()
            if b == ord("/"):
                end = buf.find(CRLF)
                if end < 0:
                    if len(buf) > MAX_LINE:
                        self._skip(1)
                        continue
                    return NEED_DATA
                line = bytes(buf[:end + 2])
                del buf[:end + 2]
                if line.startswith(b"/?") and line.endswith(b"!\r\n"):
                    return SignOn(line[2:-3].decode("ascii", "replace"))
                try:
                    ident, _ = Identification.deserialize(line)
                except Iec62056Error as exc:
                    return BadBlock(str(exc))
                return ident
            if b in (STX, SOH):
                end = _find_end(buf)
                if end < 0:
                    return NEED_DATA
                block = bytes(buf[:end + 2])
                del buf[:end + 2]
                if bcc(block[1:-1]) != block[-1]:
                    self.bcc_errors += 1
                    return BadBlock(f"BCC mismatch: block says {block[-1]:02X}, "
                                    f"computed {bcc(block[1:-1]):02X}")
                return _parse_block(block)
            self._skip(1)
        return NEED_DATA

    def _skip(self, n: int) -> None:
        del self._buf[:n]
        self.garbage_bytes += n


def _find_end(buf: bytearray) -> int:
    """Index of the ETX/EOT closing a block, if the BCC after it has arrived; else -1."""
    for i in range(1, len(buf) - 1):
        if buf[i] in (ETX, EOT):
            return i
    return -1


def _parse_block(block: bytes) -> Union[DataBlock, Command, BadBlock]:
    if block[0] == STX:
        return DataBlock(block[1:-2], partial=block[-2] == EOT)
    head = block[1:-2]
    cmd = head[:2].decode("ascii", "replace")
    if cmd not in COMMANDS:
        return BadBlock(f"unknown command {cmd!r}")
    rest = head[2:]
    if rest[:1] == bytes([STX]):
        rest = rest[1:]
    return Command(cmd, rest.decode("ascii", "replace"))


# --------------------------------------------------------------------------- data sets

_DATA_SET = re.compile(rb"([^()\r\n!/]*)\(([^()]*)\)")


@dataclass(frozen=True, slots=True)
class DataSet:
    """``address(value*unit)``; more ``(value)`` groups on the same line go to ``extra``."""

    address: str
    value: str
    unit: str
    extra: tuple[str, ...] = ()

    def exact(self) -> tuple[int, int] | None:
        """(mantissa, exponent) of a numeric value, else None (a date, a serial number...)."""
        return exact_decimal(self.value)


def exact_decimal(text: str) -> tuple[int, int] | None:
    t = text.strip()
    if not t or not re.fullmatch(r"[+-]?\d+(\.\d+)?", t):
        return None
    try:
        d = Decimal(t)
    except InvalidOperation:
        return None
    sign, digits, exp = d.as_tuple()
    mantissa = int("".join(map(str, digits)))
    return (-mantissa if sign else mantissa), int(exp)


def parse_data_sets(data: bytes) -> list[DataSet]:
    """Data sets from the data part of a readout (lines of ``address(value*unit)...``); a
    line starting with ``(`` continues the data set before it (DSMR 2.2/3 gas)."""
    out: list[DataSet] = []
    for raw_line in bytes(data).split(b"\n"):
        line = raw_line.strip(b"\r")
        if not line or line.startswith(b"!") or line.startswith(b"/"):
            continue
        current: DataSet | None = None
        pos = 0
        for m in _DATA_SET.finditer(line):
            if m.start() != pos and current is None:
                break  # text that is not a data set
            pos = m.end()
            address = m[1].decode("ascii", "replace").strip()
            value, _, unit = m[2].decode("ascii", "replace").partition("*")
            if not address and current is None and out:
                current = out.pop()  # a line that starts with '(' continues the last one
                current = DataSet(current.address, current.value, current.unit,
                                  current.extra + (m[2].decode("ascii", "replace"),))
                continue
            if address or current is None:
                if current is not None:
                    out.append(current)
                current = DataSet(address, value, unit)
            else:
                current = DataSet(current.address, current.value, current.unit,
                                  current.extra + (m[2].decode("ascii", "replace"),))
        if current is not None:
            out.append(current)
    return out


@dataclass(frozen=True, slots=True)
class Readout:
    identification: Identification | None
    data_sets: tuple[DataSet, ...]
    check: str   # "bcc", "crc16" or "none": what was verified


def parse_readout(data: bytes) -> Readout:
    """A captured readout: ``[/ident CRLF] STX data ! CRLF ETX BCC`` (modes A-C) or a
    push telegram ``/ident CRLF CRLF data ! CRC16 [CRLF]`` (mode D / P1).

    Raises Iec62056Error (BccError for a checksum mismatch).
    """
    data = bytes(b & 0x7F for b in data)
    ident = None
    rest = data.lstrip(b"\r\n ")
    if rest.startswith(b"/"):
        ident, rest = Identification.deserialize(rest)
    stx = rest.find(bytes([STX]))
    if stx >= 0:
        if rest[:stx].strip(b"\r\n\x06"):  # only an ACK/option echo may precede STX
            if not rest[:stx].lstrip(b"\r\n").startswith(bytes([ACK])):
                raise Iec62056Error(f"unexpected bytes before STX: {_show(rest[:stx])}")
        end = _find_end(bytearray(rest[stx:]))
        if end < 0:
            raise Iec62056Error("readout without ETX and BCC: truncated?")
        block = rest[stx:stx + end + 2]
        if bcc(block[1:-1]) != block[-1]:
            raise BccError(f"BCC mismatch: readout says {block[-1]:02X}, "
                           f"computed {bcc(block[1:-1]):02X}")
        body = block[1:-2]
        if b"!" not in body:
            raise Iec62056Error("readout data without the end mark '!'")
        return Readout(ident, tuple(parse_data_sets(body[:body.rindex(b"!")])), "bcc")
    if ident is None:
        raise Iec62056Error("neither a readout (STX ... ETX BCC) nor a telegram (/ident ...)")
    _ident, body, check = frame_telegram(data)
    return Readout(ident, tuple(parse_data_sets(body)), check)


class PushSplitter:
    """Cuts the byte stream of a meter that pushes (mode D, P1-like) into telegrams for
    :func:`parse_readout`: ``/ident CRLF ... STX data ETX BCC`` or ``/ident CRLF ... ! [CRC]
    CRLF``. Bytes before a ``/`` are skipped and counted; a telegram that outgrows
    MAX_BLOCK is dropped (counted) and the search starts again; one cut short by a ``/``
    (the next telegram's start; never data, §6.5) is handed over as it is, for the parser to
    refuse, so the next one is not lost with it."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.garbage_bytes = 0
        self.oversized = 0
        self.truncated = 0  # telegrams cut short by the start of the next one

    def receive_data(self, data: bytes) -> None:
        self._buf += bytes(b & 0x7F for b in data)

    def pending(self) -> bytes:
        """What is buffered and not yet a telegram (for diagnostics)."""
        return bytes(self._buf)

    def next_telegram(self) -> bytes | None:
        buf = self._buf
        while True:
            start = buf.find(b"/")
            if start < 0:
                self.garbage_bytes += len(buf.strip(b"\r\n"))
                buf.clear()
                return None
            if start:
                self.garbage_bytes += len(buf[:start].strip(b"\r\n"))  # line ends are not noise
                del buf[:start]
            head_end = buf.find(CRLF)
            # '/' is never data (§6.5): a second one in the identification line means the
            # first was noise; one later, before the telegram ended, starts the next one
            again = buf.find(b"/", 1, head_end if head_end >= 0 else len(buf))
            if again < 0:
                break
            self.garbage_bytes += again
            del buf[:again]
        end = -1
        if head_end >= 0:
            stx = buf.find(bytes([STX]), head_end)
            bang = _end_mark(buf, head_end)
            cut = buf.find(b"/", head_end)
            if stx >= 0 and (bang < 0 or stx < bang):
                etx = _find_end(buf[stx:])
                if cut >= 0 and (etx < 0 or cut < stx + etx):  # the BCC may be a '/'
                    return self._truncated(cut)
                end = stx + etx + 2 if etx >= 0 else -1
            elif cut >= 0 and (bang < 0 or cut < bang):
                return self._truncated(cut)
            elif bang >= 0:
                end = _push_end(buf, bang)
        if end < 0:
            if len(buf) > MAX_BLOCK:
                self.oversized += 1
                del buf[:1]  # the next '/' may start a good telegram
            return None
        telegram = bytes(buf[:end])
        del buf[:end]
        return telegram

    def _truncated(self, cut: int) -> bytes:
        """The telegram up to ``cut`` (where the next one starts), for the parser to
        refuse: counted, and the next one is not lost with it."""
        self.truncated += 1
        telegram = bytes(self._buf[:cut])
        del self._buf[:cut]
        return telegram

    def flush(self) -> bytes | None:
        """The line went quiet: a push telegram that ends in '!' or '!CRC' with no line end
        after it is complete (a meter may send no CR LF after the CRC)."""
        t = self.next_telegram()
        if t is not None:
            return t
        buf = self._buf
        head_end = buf.find(CRLF)
        if not buf.startswith(b"/") or head_end < 0 or buf.find(bytes([STX]), head_end) >= 0:
            return None
        bang = _end_mark(buf, head_end)
        if bang < 0:
            return None
        end = _push_end(buf, bang, final=True)
        telegram = bytes(buf[:end])
        del buf[:end]
        return telegram


_HEX = frozenset(b"0123456789ABCDEFabcdef")


def _end_mark(buf: bytearray, head_end: int) -> int:
    """Index of the end mark '!' that starts a line after the identification, or -1."""
    i = buf.find(b"\n!", head_end)
    return i + 1 if i >= 0 else -1


CRC_LINE_MAX: Final = 8  # '!' is followed by at most 4 hex digits and CR LF (some slack)


def _push_end(buf: bytearray, bang: int, final: bool = False) -> int:
    """End of a push telegram whose end mark '!' is at bang: the end of its line (the CRC,
    1-4 hex digits as some meters drop leading zeros, then CR LF), or where the next
    telegram's '/' starts. -1 while the line may still grow (unless ``final``: the line
    went quiet). A byte that could be a corrupted CRC digit stays on the line for parse_p1
    to refuse, so a damaged CRC is never taken for "no CRC"; noise (control bytes) after a
    bare '!' is not part of the telegram; neither are the lines after the CRC line."""
    tail = bytes(buf[bang + 1:bang + 1 + CRC_LINE_MAX])
    for i, c in enumerate(tail):
        if c == 0x0A:  # LF: the line ends
            return bang + 2 + i
        if c == 0x2F:  # '/': the next telegram
            return bang + 1 + i
        if c in _HEX or c in b" \r" or chr(c).isalnum():
            continue  # CRC digits, or what may be a damaged one
        return bang + 1 + i  # noise: the telegram ends before it
    if len(tail) < CRC_LINE_MAX and not final:
        return -1
    return bang + 1 + len(tail)  # a CRC line too long: parse_p1 refuses it


def normalise_obis(address: str, prefix: str = "1-0:") -> str:
    """``1.8.0`` -> ``1-0:1.8.0`` (short C.D.E codes get the configured A-B prefix)."""
    if re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}(\*\d{1,3})?", address) and prefix:
        return prefix + address
    return address

"""Würth/Amber AMB8465 (and AMB8665) command-mode framing, sans-I/O.

    FF | cmd | len | payload | [RSSI] | CS        CS = XOR of every byte before it

Confirmations are the request code | 0x80. A received radio telegram arrives as
CMD_DATA_IND (0x03) whose payload is the wM-Bus frame without its L field and CRCs; when
RSSI output is enabled in the module, one RSSI byte follows the payload (two's
complement, dBm = value / 2 - 74).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .dongle_stream import DongleStreamDecoder
from .errors import ChecksumError, FrameError, TruncatedError

SOF: Final = 0xFF
CMD_DATA_REQ: Final = 0x00
CMD_DATA_IND: Final = 0x03
CMD_SET_MODE_REQ: Final = 0x04
CMD_RESET_REQ: Final = 0x05
CMD_SET_REQ: Final = 0x09
CMD_GET_REQ: Final = 0x0A
CMD_SERIALNO_REQ: Final = 0x0B
CMD_FWV_REQ: Final = 0x0C
CNF: Final = 0x80

KNOWN_CMDS: Final = frozenset({0x00, 0x02, 0x03, 0x04, 0x05, 0x06, 0x09, 0x0A, 0x0B, 0x0C, 0x0D,
                               0x10, 0x11, 0x30, 0x31, 0x50})

# CMD_SET_MODE_REQ mode bytes for a receiving "other" device (AMB8465 manual, Table 10)
MODES: Final[dict[str, int]] = {"S1": 0x03, "T1": 0x08, "C1": 0x0E, "T1+C1": 0x09}


def xor(data: bytes) -> int:
    c = 0
    for b in data:
        c ^= b
    return c


@dataclass(frozen=True, slots=True)
class AmberMessage:
    cmd: int
    payload: bytes = b""
    rssi: int | None = None   # raw byte, DATA_IND only
    damaged: str | None = None  # set by the decoder: checksum failed, content unreliable

    @property
    def is_telegram(self) -> bool:
        return self.cmd in (CMD_DATA_IND, CMD_DATA_IND | CNF)

    def telegram(self) -> bytes:
        return bytes((len(self.payload),)) + self.payload

    @property
    def rssi_dbm(self) -> int | None:
        if self.rssi is None:
            return None
        v = self.rssi - 256 if self.rssi >= 128 else self.rssi
        return v // 2 - 74


def encode(msg: AmberMessage) -> bytes:
    if len(msg.payload) > 255:
        raise ValueError("AMB8465 payload longer than 255 bytes")
    body = bytes((SOF, msg.cmd, len(msg.payload))) + msg.payload
    if msg.rssi is not None:
        body += bytes((msg.rssi,))
    return body + bytes((xor(body),))


def deserialize(buf: bytes, *, rssi: bool = True,
                check: bool = True) -> tuple[AmberMessage, bytes]:
    """One message from the start of buf. ``rssi``: the module appends RSSI to DATA_IND.
    ``check=False`` skips the checksum comparison (to look inside a damaged message)."""
    if not buf:
        raise TruncatedError("no data")
    if buf[0] != SOF:
        raise FrameError(f"0x{buf[0]:02X} is not the AMB8465 start byte FF")
    if len(buf) < 3:
        raise TruncatedError("AMB8465 header incomplete")
    cmd, ln = buf[1], buf[2]
    if cmd & 0x7F not in KNOWN_CMDS:
        raise FrameError(f"AMB8465 command 0x{cmd:02X} does not exist")
    has_rssi = rssi and cmd in (CMD_DATA_IND, CMD_DATA_IND | CNF)
    total = 3 + ln + (1 if has_rssi else 0) + 1
    if len(buf) < total:
        raise TruncatedError(f"AMB8465 message: {len(buf)} of {total} bytes")
    if check and xor(bytes(buf[:total - 1])) != buf[total - 1]:
        raise ChecksumError("AMB8465 XOR checksum does not match")
    payload = bytes(buf[3:3 + ln])
    r = buf[3 + ln] if has_rssi else None
    return AmberMessage(cmd, payload, r), bytes(buf[total:])


class AmberDecoder(DongleStreamDecoder[AmberMessage]):
    """receive_data(bytes) / next_event() -> AmberMessage | None, resyncing on FF."""

    def __init__(self, rssi: bool = True) -> None:
        super().__init__(SOF, deserialize, rssi=rssi)
        self.rssi = rssi


def set_mode(mode: str) -> bytes:
    try:
        m = MODES[mode.upper()]
    except KeyError:
        raise ValueError(f"AMB8465 mode {mode!r}: one of {', '.join(MODES)}") from None
    return encode(AmberMessage(CMD_SET_MODE_REQ, bytes((m,))))


def ping() -> bytes:
    """The module has no ping; asking for its serial number serves as one."""
    return encode(AmberMessage(CMD_SERIALNO_REQ))


def reset() -> bytes:
    return encode(AmberMessage(CMD_RESET_REQ))

"""IMST iM871A (WiMOD HCI) serial framing, sans-I/O.

    A5 | ctrl<<4 | endpoint | msg id | len | payload | [timestamp(4)] | [RSSI(1)] | [CRC16(2)]

ctrl bits: 0x2 timestamp attached, 0x4 RSSI attached, 0x8 CRC16 attached (0x1 reserved).
The CRC is CRC-16/X-25 over everything after the A5, sent LSB first. A received radio
telegram arrives as RADIOLINK/WMBUSMSG_IND whose payload is the wM-Bus frame without its
L field (and without block CRCs): L = len.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .crc import crc_x25
from .dongle_stream import DongleStreamDecoder
from .errors import ChecksumError, FrameError, TruncatedError

SOF: Final = 0xA5
CTRL_TIMESTAMP: Final = 0x2
CTRL_RSSI: Final = 0x4
CTRL_CRC: Final = 0x8

# Endpoints
DEVMGMT: Final = 0x01
RADIOLINK: Final = 0x02
RADIOLINKTEST: Final = 0x03
HWTEST: Final = 0x04

# DEVMGMT message ids
PING_REQ: Final = 0x01
PING_RSP: Final = 0x02
SET_CONFIG_REQ: Final = 0x03
SET_CONFIG_RSP: Final = 0x04
GET_CONFIG_REQ: Final = 0x05
GET_CONFIG_RSP: Final = 0x06
RESET_REQ: Final = 0x07
RESET_RSP: Final = 0x08
GET_DEVICEINFO_REQ: Final = 0x0F
GET_DEVICEINFO_RSP: Final = 0x10

# RADIOLINK message ids
WMBUSMSG_REQ: Final = 0x01
WMBUSMSG_RSP: Final = 0x02
WMBUSMSG_IND: Final = 0x03

MAX_MSG_ID: Final[dict[int, int]] = {DEVMGMT: 0x27, RADIOLINK: 0x05, RADIOLINKTEST: 0x07,
                                     HWTEST: 0x02}

# SET_CONFIG link mode values (WiMOD wM-Bus HCI spec, "Link Modes")
LINK_MODES: Final[dict[str, int]] = {"S1": 0, "S1M": 1, "S2": 2, "T1": 3, "T2": 4, "R2": 5,
                                     "C1": 6, "C2": 8}

# SET_CONFIG IIFlag bits
IIF1_LINK_MODE: Final = 0x02
IIF2_RSSI: Final = 0x10
IIF2_TIMESTAMP: Final = 0x20


@dataclass(frozen=True, slots=True)
class HciMessage:
    endpoint: int
    msg_id: int
    payload: bytes = b""
    timestamp: int | None = None   # the dongle's clock (ticks), if attached
    rssi: int | None = None        # raw RSSI byte, if attached
    damaged: str | None = None     # set by the decoder: the CRC failed, content unreliable

    @property
    def is_telegram(self) -> bool:
        return self.endpoint == RADIOLINK and self.msg_id == WMBUSMSG_IND

    def telegram(self) -> bytes:
        """The wM-Bus frame with its L field restored (CRC-stripped)."""
        return bytes((len(self.payload),)) + self.payload

    @property
    def rssi_dbm(self) -> int | None:
        """Approximate dBm: the module's RSSI scale is linear from -100 dBm (45) to 0 dBm."""
        if self.rssi is None:
            return None
        return min(0, round(-100 + (self.rssi - 45) * 0.5))


def encode(msg: HciMessage, *, crc: bool = True) -> bytes:
    if len(msg.payload) > 255:
        raise ValueError("HCI payload longer than 255 bytes")
    ctrl = (CTRL_TIMESTAMP if msg.timestamp is not None else 0) \
        | (CTRL_RSSI if msg.rssi is not None else 0) | (CTRL_CRC if crc else 0)
    body = bytes(((ctrl << 4) | msg.endpoint, msg.msg_id, len(msg.payload))) + msg.payload
    if msg.timestamp is not None:
        body += (msg.timestamp & 0xFFFFFFFF).to_bytes(4, "little")
    if msg.rssi is not None:
        body += bytes((msg.rssi,))
    if crc:
        body += crc_x25(body).to_bytes(2, "little")
    return bytes((SOF,)) + body


def deserialize(buf: bytes, *, check: bool = True) -> tuple[HciMessage, bytes]:
    """One HCI message from the start of buf -> (message, rest). TruncatedError = need
    more bytes; FrameError/ChecksumError = not a valid message at this position.
    ``check=False`` skips the CRC comparison (to look inside a damaged message)."""
    if not buf:
        raise TruncatedError("no data")
    if buf[0] != SOF:
        raise FrameError(f"0x{buf[0]:02X} is not the HCI start byte A5")
    if len(buf) < 4:
        raise TruncatedError("HCI header incomplete")
    ctrl, endpoint, msg_id, ln = buf[1] >> 4, buf[1] & 0x0F, buf[2], buf[3]
    if ctrl & 0x1:
        raise FrameError("HCI control bit 0 (reserved) is set")
    if endpoint not in MAX_MSG_ID:
        raise FrameError(f"HCI endpoint {endpoint} does not exist")
    if not 1 <= msg_id <= MAX_MSG_ID[endpoint]:
        raise FrameError(f"HCI message id 0x{msg_id:02X} invalid for endpoint {endpoint}")
    total = 4 + ln + (4 if ctrl & CTRL_TIMESTAMP else 0) + (1 if ctrl & CTRL_RSSI else 0) \
        + (2 if ctrl & CTRL_CRC else 0)
    if len(buf) < total:
        raise TruncatedError(f"HCI message: {len(buf)} of {total} bytes")
    p = 4 + ln
    payload = bytes(buf[4:p])
    ts = rssi = None
    if ctrl & CTRL_TIMESTAMP:
        ts = int.from_bytes(buf[p:p + 4], "little")
        p += 4
    if ctrl & CTRL_RSSI:
        rssi = buf[p]
        p += 1
    if ctrl & CTRL_CRC:
        got = int.from_bytes(buf[p:p + 2], "little")
        if check and crc_x25(bytes(buf[1:p])) != got:
            raise ChecksumError("HCI CRC16 does not match")
    return HciMessage(endpoint, msg_id, payload, ts, rssi), bytes(buf[total:])


class HciDecoder(DongleStreamDecoder[HciMessage]):
    """receive_data(bytes) / next_event() -> HciMessage | None; resyncs on A5 after
    garbage, counts skipped bytes and CRC errors."""

    def __init__(self) -> None:
        super().__init__(SOF, deserialize)


# --------------------------------------------------------------------------- requests

def ping() -> bytes:
    return encode(HciMessage(DEVMGMT, PING_REQ))


def reset() -> bytes:
    return encode(HciMessage(DEVMGMT, RESET_REQ))


def get_device_info() -> bytes:
    return encode(HciMessage(DEVMGMT, GET_DEVICEINFO_REQ))


def set_mode(mode: str, *, rssi: bool = True, timestamp: bool = True) -> bytes:
    """SET_CONFIG (volatile): link mode, and RSSI/timestamp attachment on received frames."""
    try:
        lm = LINK_MODES[mode.upper()]
    except KeyError:
        raise ValueError(f"iM871A link mode {mode!r}: one of {', '.join(LINK_MODES)}") from None
    payload = bytes((0x00, IIF1_LINK_MODE, lm, IIF2_RSSI | IIF2_TIMESTAMP, int(rssi),
                     int(timestamp)))
    return encode(HciMessage(DEVMGMT, SET_CONFIG_REQ, payload))


def parse_set_mode(payload: bytes) -> tuple[str, bool, bool]:
    """Inverse of :func:`set_mode`'s payload (for the simulator): (mode, rssi, timestamp)."""
    if len(payload) < 3 or not payload[1] & IIF1_LINK_MODE:
        raise FrameError("SET_CONFIG without a link mode")
    names = {v: k for k, v in LINK_MODES.items()}
    mode = names.get(payload[2])
    if mode is None:
        raise FrameError(f"unknown link mode {payload[2]}")
    rssi = ts = False
    if len(payload) >= 6 and payload[3] & IIF2_RSSI:
        rssi = bool(payload[4])
        ts = bool(payload[5]) if payload[3] & IIF2_TIMESTAMP else False
    return mode, rssi, ts

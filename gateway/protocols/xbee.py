"""Digi XBee (Zigbee firmware) API frames: a sans-I/O codec.

Bytes in, typed frames out; typed frames in, bytes to send out. No port, no clock, no thread:
the driver owns those. Reference: Digi "XBee/XBee-PRO S2C Zigbee RF Module User Guide"
(90002002), chapter "API Operation" and the per-frame sections cited on each table entry.

Framing (user guide "API frame format"): ``0x7E | length (2, BE) | frame data | checksum``,
where length counts the frame data and checksum = 0xFF - (sum(frame data) & 0xFF).
API mode 2 (AP=2) escapes every byte after the start delimiter that is 0x7E, 0x7D, 0x11 or
0x13 as ``0x7D, byte ^ 0x20``; length and checksum are computed over the *unescaped* data.
In mode 2 an unescaped 0x7E always starts a frame, which is what makes resync exact.

Multi-byte XBee fields are big-endian; the ZCL payload carried inside is little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Union

START = 0x7E
ESCAPE = 0x7D
XON = 0x11
XOFF = 0x13
ESCAPED_BYTES = frozenset((START, ESCAPE, XON, XOFF))
BROADCAST64 = 0x000000000000FFFF
UNKNOWN16 = 0xFFFE


class XBeeDecodeError(ValueError):
    """The bytes from the module (or a pasted capture) are not a valid API frame.

    Always a remote-side protocol error; local misuse (e.g. a frame id out of range when
    encoding) raises plain ValueError instead.
    """


# --------------------------------------------------------------------------- tables

# Frame type -> name (user guide "API frames" overview).
FRAME_TYPE_NAMES: dict[int, str] = {
    0x08: "AT Command",
    0x09: "AT Command - Queue Parameter Value",
    0x10: "Transmit Request",
    0x11: "Explicit Addressing Command",
    0x17: "Remote AT Command Request",
    0x88: "AT Command Response",
    0x8A: "Modem Status",
    0x8B: "Transmit Status",
    0x90: "Receive Packet",           # "Rx Indicator"
    0x91: "Explicit Rx Indicator",
    0x95: "Node Identification Indicator",
    0x97: "Remote AT Command Response",
}

# AT Command Response status (frame 0x88).
AT_STATUS: dict[int, str] = {0: "OK", 1: "ERROR", 2: "Invalid command", 3: "Invalid parameter",
                             4: "Tx failure"}

# Modem Status (frame 0x8A).
MODEM_STATUS: dict[int, str] = {
    0x00: "Hardware reset", 0x01: "Watchdog timer reset", 0x02: "Joined network",
    0x03: "Disassociated", 0x06: "Coordinator started", 0x07: "Network security key updated",
    0x0D: "Voltage supply limit exceeded", 0x11: "Modem configuration changed while join "
    "in progress", 0x3B: "Secure session successfully established", 0x3C: "Secure session "
    "ended", 0x3D: "Secure session authentication failed",
}

# Transmit Status delivery status (frame 0x8B).
DELIVERY_STATUS: dict[int, str] = {
    0x00: "Success", 0x01: "MAC ACK failure", 0x02: "CCA failure",
    0x15: "Invalid destination endpoint", 0x21: "Network ACK failure",
    0x22: "Not joined to network", 0x23: "Self-addressed", 0x24: "Address not found",
    0x25: "Route not found", 0x26: "Broadcast source failed to hear a neighbor relay",
    0x2B: "Invalid binding table index", 0x2C: "Resource error: lack of free buffers",
    0x2D: "Attempted broadcast with APS transmission",
    0x2E: "Attempted unicast with APS transmission, but EE=0",
    0x32: "Resource error: lack of free buffers", 0x74: "Data payload too large",
    0x75: "Indirect message unrequested",
}

# Transmit Status discovery status (frame 0x8B).
DISCOVERY_STATUS: dict[int, str] = {0x00: "No discovery overhead", 0x01: "Address discovery",
                                    0x02: "Route discovery", 0x03: "Address and route",
                                    0x40: "Extended timeout discovery"}

# Receive options bits (frames 0x90/0x91).
RECEIVE_OPTIONS: dict[int, str] = {0x01: "acknowledged", 0x02: "broadcast",
                                   0x20: "APS encrypted", 0x40: "from end device"}

# Node Identification: device type and source event (frame 0x95).
NODE_DEVICE_TYPE: dict[int, str] = {0: "coordinator", 1: "router", 2: "end device"}
NODE_SOURCE_EVENT: dict[int, str] = {1: "pushbutton", 2: "joined", 3: "power cycle"}


# --------------------------------------------------------------------------- framing


def checksum(frame_data: bytes) -> int:
    return 0xFF - (sum(frame_data) & 0xFF)


def escape(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in ESCAPED_BYTES:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo mode 2 escaping of a complete (start-delimiter-less) byte string."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ESCAPE:
            nxt = next(it, None)
            if nxt is None:
                raise XBeeDecodeError("escape byte 0x7D at the end of the data")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def encode_frame(frame_data: bytes, escaped: bool = True) -> bytes:
    """Wrap frame data (type byte first) into an API frame; mode 2 if ``escaped``."""
    if not 1 <= len(frame_data) <= 0xFFFF:
        raise ValueError(f"frame data must be 1..65535 bytes, got {len(frame_data)}")
    body = struct.pack(">H", len(frame_data)) + frame_data + bytes((checksum(frame_data),))
    return bytes((START,)) + (escape(body) if escaped else body)


def decode_frame(raw: bytes, escaped: bool = True) -> bytes:
    """One complete API frame -> its frame data; XBeeDecodeError says what is wrong."""
    if not raw or raw[0] != START:
        raise XBeeDecodeError("frame does not start with 0x7E")
    body = raw[1:]
    if escaped:
        if START in body:
            raise XBeeDecodeError("unescaped 0x7E inside the frame (truncated frame?)")
        body = unescape(body)
    if len(body) < 2:
        raise XBeeDecodeError(f"truncated frame: {len(raw)} bytes, no length field")
    (length,) = struct.unpack_from(">H", body)
    if length == 0:
        raise XBeeDecodeError("frame length is 0")
    if len(body) < 2 + length + 1:
        raise XBeeDecodeError(f"truncated frame: length field says {length} bytes of frame "
                              f"data, {max(0, len(body) - 3)} present")
    if len(body) > 2 + length + 1:
        raise XBeeDecodeError(f"{len(body) - length - 3} extra bytes after the checksum")
    data, csum = body[2:2 + length], body[2 + length]
    if checksum(data) != csum:
        raise XBeeDecodeError(f"bad checksum 0x{csum:02X}, expected 0x{checksum(data):02X}")
    return bytes(data)


# --------------------------------------------------------------------------- typed frames


def eui64_hex(addr: int) -> str:
    """16 lowercase hex digits, the form used in meter ids and JSON."""
    return f"{addr:016x}"


def _need(data: bytes, n: int, what: str) -> None:
    if len(data) < n:
        raise XBeeDecodeError(f"truncated {what}: {len(data)} bytes, need at least {n}")


def _u8(v: int, what: str) -> int:
    if not 0 <= v <= 0xFF:
        raise ValueError(f"{what} must be 0..255, got {v}")
    return v


def _at_name(cmd: bytes) -> str:
    return cmd.decode("latin-1")


def _at_bytes(cmd: str) -> bytes:
    raw = cmd.encode("latin-1")
    if len(raw) != 2:
        raise ValueError(f"AT command must be 2 characters, got {cmd!r}")
    return raw


@dataclass(frozen=True, slots=True)
class ATCommand:
    """0x08: read (no parameter) or set a local AT parameter; frame_id 0 = no response."""

    FRAME_TYPE: ClassVar[int] = 0x08
    frame_id: int
    command: str
    parameter: bytes = b""

    def serialize(self) -> bytes:
        return bytes((self.FRAME_TYPE, _u8(self.frame_id, "frame id"))) \
            + _at_bytes(self.command) + self.parameter

    @classmethod
    def deserialize(cls, body: bytes) -> tuple["ATCommand", bytes]:
        _need(body, 3, "AT Command")
        return cls(body[0], _at_name(body[1:3]), bytes(body[3:])), b""


@dataclass(frozen=True, slots=True)
class ATCommandResponse:
    """0x88: status 0 = OK; data is the parameter value read (empty after a set)."""

    FRAME_TYPE: ClassVar[int] = 0x88
    frame_id: int
    command: str
    status: int
    data: bytes = b""

    def serialize(self) -> bytes:
        return bytes((self.FRAME_TYPE, _u8(self.frame_id, "frame id"))) \
            + _at_bytes(self.command) + bytes((_u8(self.status, "status"),)) + self.data

    @classmethod
    def deserialize(cls, body: bytes) -> tuple["ATCommandResponse", bytes]:
        _need(body, 4, "AT Command Response")
        return cls(body[0], _at_name(body[1:3]), body[3], bytes(body[4:])), b""


@dataclass(frozen=True, slots=True)
class ModemStatus:
    """0x8A: module events (reset, joined, coordinator started...)."""

    FRAME_TYPE: ClassVar[int] = 0x8A
    status: int

    def serialize(self) -> bytes:
        return bytes((self.FRAME_TYPE, _u8(self.status, "status")))

    @classmethod
    def deserialize(cls, body: bytes) -> tuple["ModemStatus", bytes]:
        _need(body, 1, "Modem Status")
        return cls(body[0]), bytes(body[1:])


_TX_HDR = struct.Struct(">BQHBB")


@dataclass(frozen=True, slots=True)
class TransmitRequest:
    """0x10: data to the Digi data endpoint (0xE8) of a remote XBee."""

    FRAME_TYPE: ClassVar[int] = 0x10
    frame_id: int
    dest64: int
    dest16: int
    radius: int
    options: int
    data: bytes

    def serialize(self) -> bytes:
        return bytes((self.FRAME_TYPE,)) + _TX_HDR.pack(
            _u8(self.frame_id, "frame id"), self.dest64, self.dest16, self.radius,
            self.options) + self.data

    @classmethod
    def deserialize(cls, body: bytes) -> tuple["TransmitRequest", bytes]:
        _need(body, _TX_HDR.size, "Transmit Request")
        fid, d64, d16, radius, opts = _TX_HDR.unpack_from(body)
        return cls(fid, d64, d16, radius, opts, bytes(body[_TX_HDR.size:])), b""


_EXPL_HDR = struct.Struct(">BQHBBHHBB")


@dataclass(frozen=True, slots=True)
class ExplicitAddressingCommand:
    """0x11: a frame to any endpoint/cluster/profile: how ZCL and ZDO requests leave."""

    FRAME_TYPE: ClassVar[int] = 0x11
    frame_id: int
    dest64: int
    dest16: int
    src_endpoint: int
    dst_endpoint: int
    cluster: int
    profile: int
    radius: int
    options: int
    data: bytes

    def serialize(self) -> bytes:
        return bytes((self.FRAME_TYPE,)) + _EXPL_HDR.pack(
            _u8(self.frame_id, "frame id"), self.dest64, self.dest16, self.src_endpoint,
            self.dst_endpoint, self.cluster, self.profile, self.radius,
            self.options) + self.data

    @classmethod
    def deserialize(cls, body: bytes) -> tuple["ExplicitAddressingCommand", bytes]:
        _need(body, _EXPL_HDR.size, "Explicit Addressing Command")
        f = _EXPL_HDR.unpack_from(body)
        return cls(*f, bytes(body[_EXPL_HDR.size:])), b""


_TXS = struct.Struct(">BHBBB")


@dataclass(frozen=True, slots=True)
class TransmitStatus:
    """0x8B: the fate of a 0x10/0x11 frame, matched by frame id; 0 = delivered."""

    FRAME_TYPE: ClassVar[int] = 0x8B
    frame_id: int
    dest16: int
    retries: int
    delivery_status: int
    discovery_status: int

    @property
    def ok(self) -> bool:
        return self.delivery_status == 0

    def serialize(self) -> bytes:
        return bytes((self.FRAME_TYPE,)) + _TXS.pack(
            _u8(self.frame_id, "frame id"), self.dest16, self.retries, self.delivery_status,
            self.discovery_status)

    @classmethod
    def deserialize(cls, body: bytes) -> tuple["TransmitStatus", bytes]:
        _need(body, _TXS.size, "Transmit Status")
        return cls(*_TXS.unpack_from(body)), bytes(body[_TXS.size:])


_RX_HDR = struct.Struct(">QHB")


@dataclass(frozen=True, slots=True)
class RxIndicator:
    """0x90: data received with AO=0 (no endpoint/cluster/profile information)."""

    FRAME_TYPE: ClassVar[int] = 0x90
    source64: int
    source16: int
    options: int
    data: bytes

    def serialize(self) -> bytes:
        return bytes((self.FRAME_TYPE,)) + _RX_HDR.pack(
            self.source64, self.source16, self.options) + self.data

    @classmethod
    def deserialize(cls, body: bytes) -> tuple["RxIndicator", bytes]:
        _need(body, _RX_HDR.size, "Rx Indicator")
        s64, s16, opts = _RX_HDR.unpack_from(body)
        return cls(s64, s16, opts, bytes(body[_RX_HDR.size:])), b""


_ERX_HDR = struct.Struct(">QHBBHHB")


@dataclass(frozen=True, slots=True)
class ExplicitRxIndicator:
    """0x91: data received with AO=1: carries the ZCL/ZDO frame with its addressing."""

    FRAME_TYPE: ClassVar[int] = 0x91
    source64: int
    source16: int
    src_endpoint: int
    dst_endpoint: int
    cluster: int
    profile: int
    options: int
    data: bytes

    def serialize(self) -> bytes:
        return bytes((self.FRAME_TYPE,)) + _ERX_HDR.pack(
            self.source64, self.source16, self.src_endpoint, self.dst_endpoint, self.cluster,
            self.profile, self.options) + self.data

    @classmethod
    def deserialize(cls, body: bytes) -> tuple["ExplicitRxIndicator", bytes]:
        _need(body, _ERX_HDR.size, "Explicit Rx Indicator")
        f = _ERX_HDR.unpack_from(body)
        return cls(*f, bytes(body[_ERX_HDR.size:])), b""


_NI_HDR = struct.Struct(">QHBHQ")
_NI_TAIL = struct.Struct(">HBBHH")


@dataclass(frozen=True, slots=True)
class NodeIdentification:
    """0x95: a node joined or pressed its commissioning button (XBee devices send it)."""

    FRAME_TYPE: ClassVar[int] = 0x95
    source64: int
    source16: int
    options: int
    remote16: int
    remote64: int
    node_id: str
    parent16: int
    device_type: int
    source_event: int
    digi_profile: int
    manufacturer: int
    extra: bytes = b""  # device type identifier / RSSI on newer firmware (NO bit 0x04)

    def serialize(self) -> bytes:
        ni = self.node_id.encode("latin-1")
        if b"\0" in ni:
            raise ValueError("node id must not contain NUL")
        return bytes((self.FRAME_TYPE,)) + _NI_HDR.pack(
            self.source64, self.source16, self.options, self.remote16, self.remote64) \
            + ni + b"\0" + _NI_TAIL.pack(self.parent16, self.device_type, self.source_event,
                                         self.digi_profile, self.manufacturer) + self.extra

    @classmethod
    def deserialize(cls, body: bytes) -> tuple["NodeIdentification", bytes]:
        _need(body, _NI_HDR.size + 1 + _NI_TAIL.size, "Node Identification")
        s64, s16, opts, r16, r64 = _NI_HDR.unpack_from(body)
        end = body.find(b"\0", _NI_HDR.size)
        if end < 0:
            raise XBeeDecodeError("Node Identification: node id string is not NUL-terminated")
        rest = body[end + 1:]
        _need(rest, _NI_TAIL.size, "Node Identification tail")
        tail = _NI_TAIL.unpack_from(rest)
        return cls(s64, s16, opts, r16, r64, body[_NI_HDR.size:end].decode("latin-1"),
                   *tail, bytes(rest[_NI_TAIL.size:])), b""


@dataclass(frozen=True, slots=True)
class RemoteATCommandResponse:
    """0x97: the answer of a remote module to a Remote AT Command (0x17)."""

    FRAME_TYPE: ClassVar[int] = 0x97
    frame_id: int
    source64: int
    source16: int
    command: str
    status: int
    data: bytes = b""

    def serialize(self) -> bytes:
        return bytes((self.FRAME_TYPE, _u8(self.frame_id, "frame id"))) \
            + self.source64.to_bytes(8, "big") + self.source16.to_bytes(2, "big") \
            + _at_bytes(self.command) + bytes((_u8(self.status, "status"),)) + self.data

    @classmethod
    def deserialize(cls, body: bytes) -> tuple["RemoteATCommandResponse", bytes]:
        _need(body, 14, "Remote AT Command Response")
        return cls(body[0], int.from_bytes(body[1:9], "big"), int.from_bytes(body[9:11], "big"),
                   _at_name(body[11:13]), body[13], bytes(body[14:])), b""


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A frame type this codec does not model: kept whole so nothing is silently lost."""

    frame_type: int
    body: bytes

    def serialize(self) -> bytes:
        return bytes((self.frame_type,)) + self.body


Frame = Union[ATCommand, ATCommandResponse, ModemStatus, TransmitRequest,
              ExplicitAddressingCommand, TransmitStatus, RxIndicator, ExplicitRxIndicator,
              NodeIdentification, RemoteATCommandResponse, UnknownFrame]

# Frame type -> class (the modelled subset of FRAME_TYPE_NAMES).
FRAME_CLASSES: dict[int, Any] = {c.FRAME_TYPE: c for c in (
    ATCommand, ATCommandResponse, ModemStatus, TransmitRequest, ExplicitAddressingCommand,
    TransmitStatus, RxIndicator, ExplicitRxIndicator, NodeIdentification,
    RemoteATCommandResponse)}


def parse_frame(frame_data: bytes) -> Frame:
    """Frame data (type byte first, no framing) -> typed frame."""
    if not frame_data:
        raise XBeeDecodeError("empty frame data")
    cls = FRAME_CLASSES.get(frame_data[0])
    if cls is None:
        return UnknownFrame(frame_data[0], bytes(frame_data[1:]))
    frame, _rest = cls.deserialize(bytes(frame_data[1:]))
    return frame


def frame_name(frame_type: int) -> str:
    return FRAME_TYPE_NAMES.get(frame_type, f"unknown frame type 0x{frame_type:02X}")


def frame_type_of(frame: Frame) -> int:
    return frame.frame_type if isinstance(frame, UnknownFrame) else frame.FRAME_TYPE


def encode(frame: Frame, escaped: bool = True) -> bytes:
    return encode_frame(frame.serialize(), escaped)


def decode(raw: bytes, escaped: bool = True) -> Frame:
    """One complete framed API frame -> typed frame (for captures and tests)."""
    return parse_frame(decode_frame(raw, escaped))


# --------------------------------------------------------------------------- stream decoder


class NeedData:
    """Sentinel returned by :meth:`FrameDecoder.next_event` when more bytes are needed."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame that could not be used; the decoder has already resynchronised past it."""

    reason: str
    raw: bytes


class FrameDecoder:
    """h11-style stream decoder: ``receive_data(bytes)``, then ``next_event()`` until NEED_DATA.

    Bytes before a start delimiter are garbage (counted). A bad checksum, a truncated frame
    (mode 2: a raw 0x7E before the frame ended) or an undecodable body yields a
    :class:`BadFrame` and decoding resumes at the next start delimiter.
    """

    def __init__(self, escaped: bool = True, max_frame_data: int = 1024) -> None:
        self.escaped = escaped
        self.max_frame_data = max_frame_data
        self._buf = bytearray()
        self.frames = 0
        self.bad_frames = 0
        self.checksum_errors = 0
        self.garbage_bytes = 0

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_event(self) -> Union[Frame, BadFrame, NeedData]:
        while True:
            start = self._buf.find(START)
            if start < 0:
                self.garbage_bytes += len(self._buf)
                self._buf.clear()
                return NEED_DATA
            if start:
                self.garbage_bytes += start
                del self._buf[:start]
            result = self._scan()
            if result is not None:
                return result

    def _bad(self, reason: str, consumed: int) -> BadFrame:
        raw = bytes(self._buf[:consumed])
        del self._buf[:consumed]
        self.bad_frames += 1
        return BadFrame(reason, raw)

    def _scan(self) -> Union[Frame, BadFrame, NeedData, None]:
        """Buffer starts with 0x7E. Returns an event, or None to search again."""
        buf = self._buf
        body = bytearray()
        i = 1
        need = 3  # length (2) + checksum (1), then + length once known
        while len(body) < need:
            if i >= len(buf):
                return NEED_DATA
            b = buf[i]
            if self.escaped:
                if b == START:
                    return self._bad("truncated frame (new start delimiter inside it)", i)
                if b == ESCAPE:
                    if i + 1 >= len(buf):
                        return NEED_DATA
                    if buf[i + 1] == START:
                        return self._bad("truncated frame (new start delimiter inside it)",
                                         i + 1)
                    b = buf[i + 1] ^ 0x20
                    i += 1
            body.append(b)
            i += 1
            if len(body) == 2:
                length = (body[0] << 8) | body[1]
                if length == 0 or length > self.max_frame_data:
                    # Not a real frame start (or a length we refuse): skip this delimiter.
                    return self._bad(f"implausible frame length {length}", 1)
                need = 2 + length + 1
        data, csum = bytes(body[2:-1]), body[-1]
        if checksum(data) != csum:
            self.checksum_errors += 1
            # Mode 1 cannot know where the bad frame ends: only its delimiter is skipped.
            return self._bad(f"bad checksum 0x{csum:02X}, expected 0x{checksum(data):02X}",
                             i if self.escaped else 1)
        raw = bytes(buf[:i])
        try:
            frame = parse_frame(data)
        except XBeeDecodeError as exc:
            del buf[:i]
            self.bad_frames += 1
            return BadFrame(str(exc), raw)
        # Anything else raised above leaves the frame in the buffer, so that the caller can
        # show it (pending()) and skip() past its start delimiter.
        del buf[:i]
        self.frames += 1
        return frame

    def pending(self, limit: int = 1024) -> bytes:
        """The undecoded bytes, from the frame being decoded up to the next delimiter."""
        nxt = self._buf.find(START, 1)
        return bytes(self._buf[:nxt if nxt > 0 else limit][:limit])

    def skip(self, n: int = 1) -> None:
        """Drop ``n`` bytes (a frame the decoder failed on): decoding resumes after them."""
        del self._buf[:max(1, n)]
        self.bad_frames += 1


# --------------------------------------------------------------------------- frame ids


class FrameIdsExhausted(RuntimeError):
    """All 255 frame ids are awaiting a status: the caller is sending faster than it expires."""


class FrameIdAllocator:
    """Frame ids 1..255 matched to their response/status frames.

    No clock here: the caller passes a ``deadline`` (any monotonic number it likes) and later
    calls :meth:`expire` with its own "now". Id 0 is never allocated (it means "no reply").
    """

    def __init__(self) -> None:
        self._pending: dict[int, tuple[Any, float]] = {}
        self._next = 1

    def allocate(self, context: Any, deadline: float) -> int:
        for _ in range(255):
            fid = self._next
            self._next = self._next % 255 + 1
            if fid not in self._pending:
                self._pending[fid] = (context, deadline)
                return fid
        raise FrameIdsExhausted("all 255 XBee frame ids are in flight")

    def resolve(self, frame_id: int) -> Any:
        """The context of a pending id (and forget it); None if unknown or already expired."""
        entry = self._pending.pop(frame_id, None)
        return None if entry is None else entry[0]

    def peek(self, frame_id: int) -> Any:
        entry = self._pending.get(frame_id)
        return None if entry is None else entry[0]

    def expire(self, now: float) -> list[tuple[int, Any]]:
        """Forget and return (frame id, context) of every entry whose deadline has passed."""
        gone = [(fid, ctx) for fid, (ctx, dl) in self._pending.items() if dl <= now]
        for fid, _ in gone:
            del self._pending[fid]
        return gone

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, frame_id: int) -> bool:
        return frame_id in self._pending

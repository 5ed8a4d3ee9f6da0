"""Zigbee Cluster Library: frame header, general commands, data types and the metering tables.

Sans-I/O: bytes in, typed values out. References: ZCL specification rev. 6/7 (07-5123)
sections cited per table; Smart Energy 1.4 (07-5356) D.3 for the Metering cluster; ZCL
4.9 for Electrical Measurement. All ZCL integers are little-endian.

The two failures this module exists to prevent (seen in other Zigbee bridges): publishing a
register before its Multiplier/Divisor are known (energy 100x too high), and publishing the
"invalid" sentinel of a type as a value (0xFFFFFFFFFFFF = 2.8e14 kWh). Every TypedValue
therefore knows whether it is the sentinel (:attr:`TypedValue.invalid`), and :func:`scale`
is exact rational arithmetic, never a float.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar, Union


class ZCLDecodeError(ValueError):
    """The bytes are not a valid ZCL frame/value: a remote-side protocol error."""


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class DataType:
    """One ZCL data type (ZCL 2.6.2, Table 2-10).

    ``size`` is None for length-prefixed types; ``analog`` types carry a reportable change in
    Configure Reporting; ``invalid`` is the raw "non-value" sentinel, if the type has one.
    """

    type_id: int
    name: str
    kind: str
    size: int | None
    analog: bool = False
    invalid: int | None = None


def _types() -> dict[int, DataType]:
    t: dict[int, DataType] = {0x00: DataType(0x00, "nodata", "nodata", 0)}
    for n in range(1, 9):
        t[0x07 + n] = DataType(0x07 + n, f"data{8 * n}", "data", n)
        t[0x17 + n] = DataType(0x17 + n, f"bitmap{8 * n}", "bitmap", n)
        t[0x1F + n] = DataType(0x1F + n, f"uint{8 * n}", "uint", n, True, (1 << (8 * n)) - 1)
        t[0x27 + n] = DataType(0x27 + n, f"int{8 * n}", "int", n, True, -(1 << (8 * n - 1)))
    t.update({
        0x10: DataType(0x10, "bool", "bool", 1, False, 0xFF),
        0x30: DataType(0x30, "enum8", "uint", 1, False, 0xFF),
        0x31: DataType(0x31, "enum16", "uint", 2, False, 0xFFFF),
        0x38: DataType(0x38, "semi", "float", 2, True),
        0x39: DataType(0x39, "single", "float", 4, True),
        0x3A: DataType(0x3A, "double", "float", 8, True),
        0x41: DataType(0x41, "octstr", "octets", None, False, 0xFF),
        0x42: DataType(0x42, "string", "string", None, False, 0xFF),
        0x43: DataType(0x43, "octstr16", "octets16", None, False, 0xFFFF),
        0x44: DataType(0x44, "string16", "string16", None, False, 0xFFFF),
        0x48: DataType(0x48, "array", "array", None, False, 0xFFFF),
        0x4C: DataType(0x4C, "struct", "struct", None, False, 0xFFFF),
        0x50: DataType(0x50, "set", "array", None, False, 0xFFFF),
        0x51: DataType(0x51, "bag", "array", None, False, 0xFFFF),
        0xE0: DataType(0xE0, "ToD", "uint", 4, True, 0xFFFFFFFF),
        0xE1: DataType(0xE1, "date", "uint", 4, True, 0xFFFFFFFF),
        0xE2: DataType(0xE2, "UTC", "uint", 4, True, 0xFFFFFFFF),
        0xE8: DataType(0xE8, "clusterId", "uint", 2, False, 0xFFFF),
        0xE9: DataType(0xE9, "attribId", "uint", 2, False, 0xFFFF),
        0xEA: DataType(0xEA, "bacOID", "uint", 4, False, 0xFFFFFFFF),
        0xF0: DataType(0xF0, "EUI64", "uint", 8, False, 0xFFFFFFFFFFFFFFFF),
        0xF1: DataType(0xF1, "key128", "bytes", 16),
    })
    return t


DATA_TYPES: dict[int, DataType] = _types()
TYPE_BY_NAME: dict[str, int] = {d.name: d.type_id for d in DATA_TYPES.values()}

# Short names for the tables below.
BOOL, BMP8, BMP16, BMP32, BMP64 = 0x10, 0x18, 0x19, 0x1B, 0x1F
U8, U16, U24, U32, U48 = 0x20, 0x21, 0x22, 0x23, 0x25
S8, S16, S24, S32 = 0x28, 0x29, 0x2A, 0x2B
ENUM8, STR, OCTSTR, UTC = 0x30, 0x42, 0x41, 0xE2

_FLOAT_FMT = {2: "<e", 4: "<f", 8: "<d"}


@dataclass(frozen=True, slots=True)
class TypedValue:
    """A decoded attribute value with its ZCL type.

    ``value`` is an int for integer-like types (the raw number, sentinel included), a bool,
    a str, bytes, a Decimal (floats, exactly), or None when the encoding itself says
    "invalid" (bool 0xFF, string length 0xFF, float NaN). Arrays, sets, bags and
    structures (Xiaomi's 0xFF02 attribute...) hold a tuple of TypedValue. ``noncanonical``: the encoding
    was not the one the spec writes (a bool sent as 0x80: read as true, as zigpy and the
    devices that send it mean, and flagged rather than failing the whole frame).
    """

    type_id: int
    value: Any
    noncanonical: bool = False

    @property
    def type_name(self) -> str:
        return DATA_TYPES[self.type_id].name

    @property
    def invalid(self) -> bool:
        dt = DATA_TYPES[self.type_id]
        if dt.kind == "nodata":
            return False
        if self.value is None:
            return True
        return dt.invalid is not None and dt.kind in ("uint", "int") and self.value == dt.invalid

    def serialize(self) -> bytes:
        return encode_value(self.type_id, self.value)


def _data_type(type_id: int) -> DataType:
    dt = DATA_TYPES.get(type_id)
    if dt is None:
        raise ZCLDecodeError(f"unsupported ZCL data type 0x{type_id:02X}")
    return dt


MAX_NESTING = 8  # arrays/structures inside each other: deeper is refused, not recursed


def decode_value(type_id: int, data: bytes, _depth: int = 0) -> tuple[TypedValue, bytes]:
    """Decode one value of ``type_id`` from the front of ``data``; return it and the rest."""
    dt = _data_type(type_id)
    kind = dt.kind
    if kind in ("array", "struct"):
        return _decode_composite(dt, data, _depth)
    if dt.size is not None:
        if len(data) < dt.size:
            raise ZCLDecodeError(f"truncated {dt.name}: {len(data)} of {dt.size} bytes")
        raw, rest = data[:dt.size], data[dt.size:]
        if kind in ("uint", "data", "bitmap"):
            return TypedValue(type_id, int.from_bytes(raw, "little")), rest
        if kind == "int":
            return TypedValue(type_id, int.from_bytes(raw, "little", signed=True)), rest
        if kind == "bool":
            if raw[0] == 0xFF:
                return TypedValue(type_id, None), rest
            return TypedValue(type_id, bool(raw[0]), raw[0] > 1), rest
        if kind == "float":
            (f,) = struct.unpack(_FLOAT_FMT[dt.size], raw)
            return TypedValue(type_id, None if f != f else Decimal(f)), rest
        if kind == "nodata":
            return TypedValue(type_id, b""), rest
        return TypedValue(type_id, bytes(raw)), rest  # key128
    width = 2 if kind.endswith("16") else 1
    if len(data) < width:
        raise ZCLDecodeError(f"truncated {dt.name}: no length")
    n = int.from_bytes(data[:width], "little")
    if n == dt.invalid:
        return TypedValue(type_id, None), data[width:]
    if len(data) < width + n:
        raise ZCLDecodeError(f"truncated {dt.name}: length {n}, {len(data) - width} bytes")
    raw, rest = data[width:width + n], data[width + n:]
    if kind.startswith("string"):
        # devices pad names with NULs (Xiaomi, Tuya): the text ends at the first one
        return TypedValue(type_id, raw.split(b"\0")[0].decode("utf-8", errors="replace")), rest
    return TypedValue(type_id, bytes(raw)), rest


def _decode_composite(dt: DataType, data: bytes, depth: int) -> tuple[TypedValue, bytes]:
    """ZCL 2.6.2.10-13: array/set/bag = element type, count (2), elements; structure =
    count (2), then type + value per element. A count of 0xFFFF is the invalid value."""
    if depth >= MAX_NESTING:
        raise ZCLDecodeError(f"{dt.name} nested more than {MAX_NESTING} deep")
    head = 3 if dt.kind == "array" else 2
    if len(data) < head:
        raise ZCLDecodeError(f"truncated {dt.name}: {len(data)} of {head} header bytes")
    count = int.from_bytes(data[head - 2:head], "little")
    rest = bytes(data[head:])
    if count == 0xFFFF:
        return TypedValue(dt.type_id, None), rest
    if count > len(rest):  # every element takes a byte at least (its value or its type)
        raise ZCLDecodeError(f"truncated {dt.name}: {count} elements in {len(rest)} bytes")
    items = []
    for _ in range(count):
        if dt.kind == "array":
            elem_type = data[0]
        else:
            if not rest:
                raise ZCLDecodeError(f"truncated {dt.name}: {len(items)} of {count} elements")
            elem_type, rest = rest[0], rest[1:]
        item, rest = decode_value(elem_type, rest, depth + 1)
        items.append(item)
    return TypedValue(dt.type_id, tuple(items)), rest


def encode_value(type_id: int, value: Any) -> bytes:
    """Encode one value; a value that does not fit its type is local misuse (ValueError)."""
    dt = DATA_TYPES.get(type_id)
    if dt is None:
        raise ValueError(f"unsupported ZCL data type 0x{type_id:02X}")
    kind = dt.kind
    try:
        if kind in ("uint", "data", "bitmap"):
            return int(value).to_bytes(dt.size, "little")  # type: ignore[arg-type]
        if kind == "int":
            return int(value).to_bytes(dt.size, "little", signed=True)  # type: ignore[arg-type]
    except OverflowError:
        raise ValueError(f"{value!r} does not fit in {dt.name}") from None
    if kind == "bool":
        return b"\xff" if value is None else (b"\x01" if value else b"\x00")
    if kind == "float":
        return struct.pack(_FLOAT_FMT[dt.size], float("nan") if value is None else float(value))
    if kind == "nodata":
        return b""
    if kind in ("array", "struct"):
        if value is None:
            return (b"\x00" if kind == "array" else b"") + b"\xff\xff"
        items = list(value)
        if kind == "array":
            elem = items[0].type_id if items else 0x00
            if any(i.type_id != elem for i in items):
                raise ValueError(f"{dt.name} elements must share one type")
            return bytes([elem]) + len(items).to_bytes(2, "little") + b"".join(
                encode_value(i.type_id, i.value) for i in items)
        return len(items).to_bytes(2, "little") + b"".join(
            bytes([i.type_id]) + encode_value(i.type_id, i.value) for i in items)
    if kind == "bytes":
        if len(value) != dt.size:
            raise ValueError(f"{dt.name} needs exactly {dt.size} bytes")
        return bytes(value)
    width = 2 if kind.endswith("16") else 1
    if value is None:
        return (dt.invalid or 0).to_bytes(width, "little")
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(raw) >= (dt.invalid or 0):
        raise ValueError(f"{dt.name} of {len(raw)} bytes is too long")
    return len(raw).to_bytes(width, "little") + raw


# --------------------------------------------------------------------------- status codes

# ZCL 2.6.3, Table 2-12 (enumerated status values).
STATUS: dict[int, str] = {
    0x00: "SUCCESS", 0x01: "FAILURE", 0x7E: "NOT_AUTHORIZED", 0x7F: "RESERVED_FIELD_NOT_ZERO",
    0x80: "MALFORMED_COMMAND", 0x81: "UNSUP_CLUSTER_COMMAND", 0x82: "UNSUP_GENERAL_COMMAND",
    0x83: "UNSUP_MANUF_CLUSTER_COMMAND", 0x84: "UNSUP_MANUF_GENERAL_COMMAND",
    0x85: "INVALID_FIELD", 0x86: "UNSUPPORTED_ATTRIBUTE", 0x87: "INVALID_VALUE",
    0x88: "READ_ONLY", 0x89: "INSUFFICIENT_SPACE", 0x8A: "DUPLICATE_EXISTS", 0x8B: "NOT_FOUND",
    0x8C: "UNREPORTABLE_ATTRIBUTE", 0x8D: "INVALID_DATA_TYPE", 0x8E: "INVALID_SELECTOR",
    0x8F: "WRITE_ONLY", 0x90: "INCONSISTENT_STARTUP_STATE", 0x91: "DEFINED_OUT_OF_BAND",
    0x92: "INCONSISTENT", 0x93: "ACTION_DENIED", 0x94: "TIMEOUT", 0x95: "ABORT",
    0x96: "INVALID_IMAGE", 0x97: "WAIT_FOR_DATA", 0x98: "NO_IMAGE_AVAILABLE",
    0x99: "REQUIRE_MORE_IMAGE", 0x9A: "NOTIFICATION_PENDING", 0xC0: "HARDWARE_FAILURE",
    0xC1: "SOFTWARE_FAILURE", 0xC2: "CALIBRATION_ERROR", 0xC3: "UNSUPPORTED_CLUSTER",
}
SUCCESS = 0x00
UNSUP_GENERAL_COMMAND = 0x82
UNSUPPORTED_ATTRIBUTE = 0x86
UNREPORTABLE_ATTRIBUTE = 0x8C
UNSUPPORTED_CLUSTER = 0xC3


def status_name(code: int) -> str:
    return STATUS.get(code, f"0x{code:02X}")


# --------------------------------------------------------------------------- header

FRAME_TYPE_GLOBAL = 0b00
FRAME_TYPE_CLUSTER = 0b01
FRAME_TYPES_RESERVED = (0b10, 0b11)  # ZCL 2.4.1.1.1: reserved; the payload is kept raw
DIRECTION_TO_SERVER = 0
DIRECTION_TO_CLIENT = 1


@dataclass(frozen=True, slots=True)
class ZCLHeader:
    """ZCL 2.4.1: frame control, optional manufacturer code, sequence number, command id.

    Frame control bits: 0-1 frame type (00 global, 01 cluster-specific), 2 manufacturer
    specific, 3 direction (1 = server to client), 4 disable default response, 5-7 reserved.
    """

    frame_type: int
    command: int
    seq: int
    direction: int = DIRECTION_TO_SERVER
    disable_default_response: bool = False
    manufacturer: int | None = None

    @property
    def is_global(self) -> bool:
        return self.frame_type == FRAME_TYPE_GLOBAL

    @property
    def is_reserved(self) -> bool:
        return self.frame_type in FRAME_TYPES_RESERVED

    @property
    def frame_type_name(self) -> str:
        return {FRAME_TYPE_GLOBAL: "global", FRAME_TYPE_CLUSTER: "cluster-specific"}.get(
            self.frame_type, f"reserved ({self.frame_type:02b})")

    def serialize(self) -> bytes:
        if self.frame_type not in (0, 1, 2, 3) or self.direction not in (0, 1):
            raise ValueError("frame type must be 0..3 and direction 0 or 1")
        fc = self.frame_type | (self.direction << 3) | (int(self.disable_default_response) << 4)
        out = bytearray()
        if self.manufacturer is not None:
            fc |= 0x04
            out += bytes((fc,)) + self.manufacturer.to_bytes(2, "little")
        else:
            out.append(fc)
        return bytes(out) + bytes((self.seq, self.command))

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["ZCLHeader", bytes]:
        if not data:
            raise ZCLDecodeError("empty ZCL frame")
        fc = data[0]
        n = 5 if fc & 0x04 else 3
        if len(data) < n:
            raise ZCLDecodeError(f"truncated ZCL header: {len(data)} of {n} bytes")
        manuf = int.from_bytes(data[1:3], "little") if fc & 0x04 else None
        return cls(fc & 0x03, data[n - 1], data[n - 2], (fc >> 3) & 1, bool(fc & 0x10),
                   manuf), bytes(data[n:])


# --------------------------------------------------------------------------- general commands

# ZCL 2.5, Table 2-3 (general command ids).
GENERAL_COMMANDS: dict[int, str] = {
    0x00: "Read Attributes", 0x01: "Read Attributes Response", 0x02: "Write Attributes",
    0x03: "Write Attributes Undivided", 0x04: "Write Attributes Response",
    0x05: "Write Attributes No Response", 0x06: "Configure Reporting",
    0x07: "Configure Reporting Response", 0x08: "Read Reporting Configuration",
    0x09: "Read Reporting Configuration Response", 0x0A: "Report Attributes",
    0x0B: "Default Response", 0x0C: "Discover Attributes",
    0x0D: "Discover Attributes Response",
}
READ_ATTRIBUTES = 0x00
READ_ATTRIBUTES_RESPONSE = 0x01
CONFIGURE_REPORTING = 0x06
CONFIGURE_REPORTING_RESPONSE = 0x07
REPORT_ATTRIBUTES = 0x0A
DEFAULT_RESPONSE = 0x0B


def _u16(data: bytes, at: int) -> int:
    return data[at] | (data[at + 1] << 8)


@dataclass(frozen=True, slots=True)
class ReadAttributes:
    """ZCL 2.5.1: a list of attribute ids."""

    COMMAND: ClassVar[int] = READ_ATTRIBUTES
    attribute_ids: tuple[int, ...]

    def serialize(self) -> bytes:
        return b"".join(a.to_bytes(2, "little") for a in self.attribute_ids)

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["ReadAttributes", bytes]:
        if len(data) % 2:
            raise ZCLDecodeError("Read Attributes payload has an odd length")
        return cls(tuple(_u16(data, i) for i in range(0, len(data), 2))), b""


@dataclass(frozen=True, slots=True)
class AttributeStatus:
    """One record of a Read Attributes Response: a value only when status is SUCCESS."""

    attribute_id: int
    status: int
    value: TypedValue | None = None


@dataclass(frozen=True, slots=True)
class ReadAttributesResponse:
    """ZCL 2.5.2: records of attribute id, status and (on success) type and value."""

    COMMAND: ClassVar[int] = READ_ATTRIBUTES_RESPONSE
    records: tuple[AttributeStatus, ...]

    def serialize(self) -> bytes:
        out = bytearray()
        for r in self.records:
            out += r.attribute_id.to_bytes(2, "little") + bytes((r.status,))
            if r.status == SUCCESS:
                if r.value is None:
                    raise ValueError("a SUCCESS record needs a value")
                out += bytes((r.value.type_id,)) + r.value.serialize()
        return bytes(out)

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["ReadAttributesResponse", bytes]:
        records = []
        while data:
            if len(data) < 3:
                raise ZCLDecodeError("truncated Read Attributes Response record")
            attr, status = _u16(data, 0), data[2]
            data = data[3:]
            if status != SUCCESS:
                records.append(AttributeStatus(attr, status))
                continue
            if not data:
                raise ZCLDecodeError("Read Attributes Response record without a data type")
            value, data = decode_value(data[0], data[1:])
            records.append(AttributeStatus(attr, status, value))
        return cls(tuple(records)), b""


@dataclass(frozen=True, slots=True)
class AttributeReport:
    attribute_id: int
    value: TypedValue


@dataclass(frozen=True, slots=True)
class ReportAttributes:
    """ZCL 2.5.11: records of attribute id, data type and value."""

    COMMAND: ClassVar[int] = REPORT_ATTRIBUTES
    reports: tuple[AttributeReport, ...]

    def serialize(self) -> bytes:
        return b"".join(r.attribute_id.to_bytes(2, "little") + bytes((r.value.type_id,))
                        + r.value.serialize() for r in self.reports)

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["ReportAttributes", bytes]:
        reports = []
        while data:
            if len(data) < 3:
                raise ZCLDecodeError("truncated Report Attributes record")
            attr = _u16(data, 0)
            value, data = decode_value(data[2], data[3:])
            reports.append(AttributeReport(attr, value))
        return cls(tuple(reports)), b""


@dataclass(frozen=True, slots=True)
class ReportingConfig:
    """One Configure Reporting record (ZCL 2.5.7.1).

    Direction 0 (the device reports): type, min/max interval (s) and, for analog types, the
    reportable change (raw units). Direction 1 (we expect reports): timeout period (s).
    """

    direction: int
    attribute_id: int
    type_id: int = 0
    min_interval: int = 0
    max_interval: int = 0
    reportable_change: int | None = None
    timeout: int = 0


@dataclass(frozen=True, slots=True)
class ConfigureReporting:
    COMMAND: ClassVar[int] = CONFIGURE_REPORTING
    records: tuple[ReportingConfig, ...]

    def serialize(self) -> bytes:
        out = bytearray()
        for r in self.records:
            out += bytes((r.direction,)) + r.attribute_id.to_bytes(2, "little")
            if r.direction == 0:
                out += bytes((r.type_id,)) + struct.pack("<HH", r.min_interval, r.max_interval)
                if _data_type_local(r.type_id).analog:
                    out += encode_value(r.type_id, r.reportable_change or 0)
            else:
                out += struct.pack("<H", r.timeout)
        return bytes(out)

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["ConfigureReporting", bytes]:
        records = []
        while data:
            if len(data) < 3:
                raise ZCLDecodeError("truncated Configure Reporting record")
            direction, attr = data[0], _u16(data, 1)
            if direction == 0:
                if len(data) < 8:
                    raise ZCLDecodeError("truncated Configure Reporting record")
                type_id = data[3]
                lo, hi = struct.unpack_from("<HH", data, 4)
                data = data[8:]
                change = None
                if _data_type(type_id).analog:
                    v, data = decode_value(type_id, data)
                    change = v.value
                    if not isinstance(change, int):
                        raise ZCLDecodeError("only integer reportable changes are supported")
                records.append(ReportingConfig(0, attr, type_id, lo, hi, change))
            elif direction == 1:
                if len(data) < 5:
                    raise ZCLDecodeError("truncated Configure Reporting record")
                records.append(ReportingConfig(1, attr, timeout=_u16(data, 3)))
                data = data[5:]
            else:
                raise ZCLDecodeError(f"Configure Reporting direction {direction} is not 0 or 1")
        return cls(tuple(records)), b""


def _data_type_local(type_id: int) -> DataType:
    dt = DATA_TYPES.get(type_id)
    if dt is None:
        raise ValueError(f"unsupported ZCL data type 0x{type_id:02X}")
    return dt


@dataclass(frozen=True, slots=True)
class ReportingStatus:
    """One Configure Reporting Response record; direction/attribute are None in the short
    form (a single SUCCESS status byte meaning "all records succeeded")."""

    status: int
    direction: int | None = None
    attribute_id: int | None = None


@dataclass(frozen=True, slots=True)
class ConfigureReportingResponse:
    COMMAND: ClassVar[int] = CONFIGURE_REPORTING_RESPONSE
    records: tuple[ReportingStatus, ...]

    @property
    def all_success(self) -> bool:
        return all(r.status == SUCCESS for r in self.records)

    def serialize(self) -> bytes:
        out = bytearray()
        for r in self.records:
            out.append(r.status)
            if r.attribute_id is not None:
                out += bytes((r.direction or 0,)) + r.attribute_id.to_bytes(2, "little")
        return bytes(out)

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["ConfigureReportingResponse", bytes]:
        if len(data) == 1:
            return cls((ReportingStatus(data[0]),)), b""
        if not data or len(data) % 4:
            raise ZCLDecodeError(f"Configure Reporting Response of {len(data)} bytes is not "
                                 "1 or a multiple of 4")
        return cls(tuple(ReportingStatus(data[i], data[i + 1], _u16(data, i + 2))
                         for i in range(0, len(data), 4))), b""


@dataclass(frozen=True, slots=True)
class DefaultResponse:
    """ZCL 2.5.12: the command it answers and a status."""

    COMMAND: ClassVar[int] = DEFAULT_RESPONSE
    command_id: int
    status: int

    def serialize(self) -> bytes:
        return bytes((self.command_id, self.status))

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["DefaultResponse", bytes]:
        if len(data) < 2:
            raise ZCLDecodeError("truncated Default Response")
        return cls(data[0], data[1]), bytes(data[2:])


@dataclass(frozen=True, slots=True)
class RawPayload:
    """A cluster-specific or unmodelled general command: payload kept as bytes."""

    data: bytes

    def serialize(self) -> bytes:
        return self.data


Payload = Union[ReadAttributes, ReadAttributesResponse, ReportAttributes, ConfigureReporting,
                ConfigureReportingResponse, DefaultResponse, RawPayload]

# General command id -> payload class (the modelled subset of GENERAL_COMMANDS).
GENERAL_PAYLOADS: dict[int, Any] = {c.COMMAND: c for c in (
    ReadAttributes, ReadAttributesResponse, ReportAttributes, ConfigureReporting,
    ConfigureReportingResponse, DefaultResponse)}


@dataclass(frozen=True, slots=True)
class ZCLFrame:
    header: ZCLHeader
    payload: Payload

    def serialize(self) -> bytes:
        return self.header.serialize() + self.payload.serialize()

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["ZCLFrame", bytes]:
        header, body = ZCLHeader.deserialize(data)
        cls_ = GENERAL_PAYLOADS.get(header.command) if header.is_global else None
        if cls_ is None:
            return cls(header, RawPayload(body)), b""
        payload, rest = cls_.deserialize(body)
        return cls(header, payload), rest

    @property
    def command_name(self) -> str:
        if self.header.is_reserved:
            return f"command 0x{self.header.command:02X} of reserved frame type " \
                   f"{self.header.frame_type:02b}"
        if self.header.is_global:
            return GENERAL_COMMANDS.get(self.header.command, f"0x{self.header.command:02X}")
        return f"cluster command 0x{self.header.command:02X}"


def parse_zcl(data: bytes) -> ZCLFrame:
    frame, _rest = ZCLFrame.deserialize(bytes(data))
    return frame


def general_frame(command: Payload, seq: int, *, to_client: bool = False,
                  disable_default_response: bool = False,
                  manufacturer: int | None = None) -> bytes:
    """Serialize a general (profile-wide) command with a header."""
    hdr = ZCLHeader(FRAME_TYPE_GLOBAL, command.COMMAND, seq,  # type: ignore[union-attr]
                    DIRECTION_TO_CLIENT if to_client else DIRECTION_TO_SERVER,
                    disable_default_response, manufacturer)
    return ZCLFrame(hdr, command).serialize()


# --------------------------------------------------------------------------- cluster tables


@dataclass(frozen=True, slots=True)
class Attribute:
    attribute_id: int
    name: str
    type_id: int


@dataclass(frozen=True, slots=True)
class Cluster:
    cluster_id: int
    name: str
    attributes: dict[int, Attribute]

    def attribute_name(self, attribute_id: int) -> str:
        a = self.attributes.get(attribute_id)
        return a.name if a else f"0x{attribute_id:04X}"

    def by_name(self, name: str) -> int:
        for a in self.attributes.values():
            if a.name == name:
                return a.attribute_id
        raise KeyError(name)


def _cluster(cid: int, name: str, *rows: tuple[int, str, int]) -> Cluster:
    return Cluster(cid, name, {a: Attribute(a, n, t) for a, n, t in rows})


BASIC = 0x0000
METERING = 0x0702
ELECTRICAL_MEASUREMENT = 0x0B04

CLUSTERS: dict[int, Cluster] = {
    # ZCL 3.2.2.2 Basic cluster attributes.
    BASIC: _cluster(
        BASIC, "Basic",
        (0x0000, "ZCLVersion", U8), (0x0001, "ApplicationVersion", U8),
        (0x0002, "StackVersion", U8), (0x0003, "HWVersion", U8),
        (0x0004, "ManufacturerName", STR), (0x0005, "ModelIdentifier", STR),
        (0x0006, "DateCode", STR), (0x0007, "PowerSource", ENUM8),
        (0x4000, "SWBuildID", STR)),
    # SE 1.4 D.3.2.2: Reading Information (0x00xx), Status (0x02xx), Formatting (0x03xx),
    # Historical Consumption (0x04xx) sets.
    METERING: _cluster(
        METERING, "Metering",
        (0x0000, "CurrentSummationDelivered", U48), (0x0001, "CurrentSummationReceived", U48),
        (0x0002, "CurrentMaxDemandDelivered", U48), (0x0003, "CurrentMaxDemandReceived", U48),
        (0x0004, "DFTSummation", U48), (0x0005, "DailyFreezeTime", U16),
        (0x0006, "PowerFactor", S8), (0x0007, "ReadingSnapShotTime", UTC),
        (0x0008, "CurrentMaxDemandDeliveredTime", UTC),
        (0x0009, "CurrentMaxDemandReceivedTime", UTC), (0x000A, "DefaultUpdatePeriod", U8),
        (0x0100, "CurrentTier1SummationDelivered", U48),
        (0x0101, "CurrentTier1SummationReceived", U48),
        (0x0102, "CurrentTier2SummationDelivered", U48),
        (0x0103, "CurrentTier2SummationReceived", U48),
        (0x0200, "Status", BMP8), (0x0201, "RemainingBatteryLife", U8),
        (0x0300, "UnitOfMeasure", ENUM8), (0x0301, "Multiplier", U24),
        (0x0302, "Divisor", U24), (0x0303, "SummationFormatting", BMP8),
        (0x0304, "DemandFormatting", BMP8), (0x0305, "HistoricalConsumptionFormatting", BMP8),
        (0x0306, "MeteringDeviceType", BMP8), (0x0307, "SiteID", OCTSTR),
        (0x0308, "MeterSerialNumber", OCTSTR),
        (0x0400, "InstantaneousDemand", S24), (0x0401, "CurrentDayConsumptionDelivered", U24),
        (0x0402, "CurrentDayConsumptionReceived", U24),
        (0x0403, "PreviousDayConsumptionDelivered", U24),
        (0x0404, "PreviousDayConsumptionReceived", U24)),
    # ZCL 4.9.2.2 Electrical Measurement: basic info, AC non-phase (0x03xx), AC phase A
    # measurements (0x05xx) and AC formatting (0x06xx).
    ELECTRICAL_MEASUREMENT: _cluster(
        ELECTRICAL_MEASUREMENT, "ElectricalMeasurement",
        (0x0000, "MeasurementType", BMP32), (0x0300, "ACFrequency", U16),
        (0x0304, "TotalActivePower", S32), (0x0400, "ACFrequencyMultiplier", U16),
        (0x0401, "ACFrequencyDivisor", U16), (0x0402, "PowerMultiplier", U32),
        (0x0403, "PowerDivisor", U32),
        (0x0505, "RMSVoltage", U16), (0x0508, "RMSCurrent", U16), (0x050B, "ActivePower", S16),
        (0x050E, "ReactivePower", S16), (0x050F, "ApparentPower", U16),
        (0x0510, "PowerFactor", S8),
        (0x0600, "ACVoltageMultiplier", U16), (0x0601, "ACVoltageDivisor", U16),
        (0x0602, "ACCurrentMultiplier", U16), (0x0603, "ACCurrentDivisor", U16),
        (0x0604, "ACPowerMultiplier", U16), (0x0605, "ACPowerDivisor", U16)),
}

# Other cluster names, for display only.
CLUSTER_NAMES: dict[int, str] = {
    **{cid: c.name for cid, c in CLUSTERS.items()},
    0x0001: "PowerConfiguration", 0x0003: "Identify", 0x0004: "Groups", 0x0006: "OnOff",
    0x000A: "Time", 0x0019: "OTA", 0x0402: "TemperatureMeasurement",
    0x0700: "Price", 0x0B05: "Diagnostics",
}

PROFILES: dict[int, str] = {0x0000: "ZDP", 0x0104: "Home Automation", 0x0109: "Smart Energy",
                            0xC105: "Digi", 0xC05E: "Zigbee Light Link", 0xA1E0: "Green Power"}


def is_zcl_profile(profile: int) -> bool:
    """Public application profiles (0x0001-0x7FFF: HA, SE, building, health...), Green
    Power and ZLL carry ZCL frames; ZDP (0x0000) and manufacturer profiles (Digi's 0xC105
    and the rest of 0x8000-0xFFFF) carry their own payloads."""
    return 0x0001 <= profile <= 0x7FFF or profile in (0xA1E0, 0xC05E)


def attribute_name(cluster: int, attribute_id: int) -> str:
    c = CLUSTERS.get(cluster)
    return c.attribute_name(attribute_id) if c else f"0x{attribute_id:04X}"


# --------------------------------------------------------------------------- metering tables

# SE 1.4 D.3.2.2.4.1 UnitOfMeasure: (summation unit, demand unit). 0x80+ = same, BCD-coded.
UNIT_OF_MEASURE: dict[int, tuple[str, str]] = {
    0x00: ("kWh", "kW"), 0x01: ("m3", "m3/h"), 0x02: ("ft3", "ft3/h"), 0x03: ("ccf", "ccf/h"),
    0x04: ("US gal", "US gal/h"), 0x05: ("IMP gal", "IMP gal/h"), 0x06: ("BTU", "BTU/h"),
    0x07: ("L", "L/h"), 0x08: ("kPa", "kPa"), 0x09: ("kPa", "kPa"), 0x0A: ("mcf", "mcf/h"),
    0x0B: ("", ""), 0x0C: ("MJ", "MJ/s"), 0x0D: ("kvarh", "kvar"),
}
UNIT_BCD = 0x80

# SE 1.4 D.3.2.2.4.7 MeteringDeviceType; 0x80+ are the mirrored variants of the same.
METERING_DEVICE_TYPE: dict[int, str] = {
    0: "electric", 1: "gas", 2: "water", 3: "thermal", 4: "pressure", 5: "heat", 6: "cooling",
    7: "ev", 8: "pv", 9: "wind", 10: "water turbine", 11: "micro generation",
    12: "solar hot water",
}

# SE 1.4 D.3.2.2.2.1 Status bits (electricity meter meaning).
METERING_STATUS_BITS: dict[int, str] = {
    0: "check_meter", 1: "low_battery", 2: "tamper_detect", 3: "power_failure",
    4: "power_quality", 5: "leak_detect", 6: "service_disconnect_open", 7: "reserved",
}


def unit_of_measure(code: int) -> tuple[str, str, bool]:
    """(summation unit, demand unit, bcd) for a UnitOfMeasure value; KeyError if unknown."""
    summ, demand = UNIT_OF_MEASURE[code & 0x7F]
    return summ, demand, bool(code & UNIT_BCD)


def device_type_name(code: int) -> str:
    return METERING_DEVICE_TYPE.get(code & 0x7F, f"0x{code:02X}")


def status_bits(status: int) -> list[str]:
    return [name for bit, name in METERING_STATUS_BITS.items() if status & (1 << bit)]


@dataclass(frozen=True, slots=True)
class Formatting:
    """SummationFormatting / DemandFormatting (SE 1.4 D.3.2.2.4.4): bits 0-2 digits right of
    the decimal point, bits 3-6 digits left of it, bit 7 suppress leading zeros."""

    right: int
    left: int
    suppress_leading_zeros: bool

    @classmethod
    def from_bits(cls, bits: int) -> "Formatting":
        return cls(bits & 0x07, (bits >> 3) & 0x0F, bool(bits & 0x80))


def bcd_value(raw: int, nbytes: int) -> int:
    """A BCD-coded register (UnitOfMeasure 0x80+) as an int; ValueError on a non-BCD nibble."""
    digits = f"{raw:0{2 * nbytes}x}"
    if any(c not in "0123456789" for c in digits):
        raise ValueError(f"0x{digits} is not BCD")
    return int(digits)


def scale(raw: int, multiplier: int, divisor: int, decimals: int = 0) -> tuple[int, int, bool]:
    """raw x multiplier / divisor as an exact (mantissa, exponent, rounded).

    When multiplier/divisor is a terminating decimal (divisor 1, 10, 1000, 8, ...) the result
    is exact and its exponent is the finer of the step's own resolution and ``decimals``
    (the formatting's digits right of the point: resolution is information). Otherwise
    (divisor 3, 7, ...) the value is rounded half-even to at least ``decimals`` digits and a
    tenth of one raw count, and ``rounded`` is True.
    """
    if multiplier <= 0 or divisor <= 0:
        raise ValueError(f"multiplier and divisor must be positive, got {multiplier}/{divisor}")
    step = Fraction(multiplier, divisor)
    den, k2, k5 = step.denominator, 0, 0
    while den % 2 == 0:
        den //= 2
        k2 += 1
    while den % 5 == 0:
        den //= 5
        k5 += 1
    value = raw * step
    if den == 1:
        exponent = min(0, -max(k2, k5), -decimals)
        scaled = value * 10 ** -exponent
        assert scaled.denominator == 1
        return int(scaled), exponent, False
    e = 0
    while Fraction(10) ** e * 10 > step:
        e -= 1
    exponent = min(e, -decimals)
    return round(value * 10 ** -exponent), exponent, True

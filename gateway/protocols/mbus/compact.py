"""Compact frames (EN 13757-3 / OMS Vol. 2: CI 0x79 no header, 0x7B short, 0x73 long):
the meter sends only the data bytes of its records, preceded by

    format signature (2, LE) = CRC-16/EN 13757 over the DIB and VIB bytes of every record
    full-frame CRC (2, LE)   = CRC-16/EN 13757 over the records as the full frame carries
                               them (DIB, VIB and data interleaved)

So a compact frame is decoded only when the learned format accounts for every data byte
and rebuilds a full frame whose CRC the meter sent: a wrong format cannot pass as data.

The DIB/VIB bytes (the "format") must have been seen in an earlier full frame of the same
meter. ``Formats`` holds what was learned, per meter, as plain data so a driver can keep
it in the store's cursors across a restart. Sans-I/O: nothing here reads a clock or a port.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .crc import crc_en13757
from .errors import ChecksumError, FrameError, TruncatedError, UnsupportedError
from .records import DataRecord, parse_records
from .tables import DATA_FIELDS
from ... import events as kinds

MAX_FORMATS_PER_METER = 16   # a meter alternates between a few layouts, not hundreds
MAX_METERS = 10_000          # random telegrams must not grow memory without bound


class CompactFormatUnknown(UnsupportedError):
    """A compact frame whose format signature no full frame of this meter has shown yet."""

    event = kinds.COMPACT_FORMAT_UNKNOWN

    def __init__(self, message: str, header: dict[str, Any] | None = None, *,
                 signature: int = 0) -> None:
        super().__init__(message, header)
        self.signature = signature

    @property
    def detail(self) -> dict[str, Any]:
        return {"signature": f"{self.signature:04X}"}


def format_bytes(records: Iterable[DataRecord]) -> bytes:
    """The DIB and VIB bytes of the records, in order: what the signature is taken over."""
    return b"".join(bytes(r.dib) + bytes(r.vib) for r in records)


def signature(fmt: bytes) -> int:
    return crc_en13757(fmt)


def meter_key(header: dict[str, Any]) -> str:
    """Who a format belongs to: manufacturer and id (a compact frame names its meter in the
    link layer or its TPL header)."""
    return f"{header.get('manufacturer', '')}:{header.get('id', '')}"


@dataclass
class Formats:
    """Learned formats: meter key -> {signature -> DIB/VIB bytes}. ``changed`` collects the
    meters whose formats changed since the caller last saved them."""

    by_meter: dict[str, dict[int, bytes]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)

    def learn(self, meter: str, records: list[DataRecord]) -> int | None:
        """Remember the format of a full frame's records; its signature, or None when the
        records cannot be sent compactly (none, or variable-length data)."""
        if not records or any(r.dib and r.dib[0] & 0x0F == 0x0D for r in records):
            return None
        fmt = format_bytes(records)
        sig = signature(fmt)
        known = self.by_meter.get(meter)
        if known is None:
            if len(self.by_meter) >= MAX_METERS:
                return sig
            known = self.by_meter[meter] = {}
        if known.get(sig) != fmt:
            if len(known) >= MAX_FORMATS_PER_METER:
                known.pop(next(iter(known)))
            known[sig] = fmt
            self.changed.add(meter)
        return sig

    def lookup(self, meter: str, sig: int) -> bytes | None:
        return self.by_meter.get(meter, {}).get(sig)

    # -- as plain data for a store cursor (CBOR/JSON friendly)

    def export(self, meter: str) -> dict[str, str]:
        return {f"{s:04X}": f.hex().upper() for s, f in self.by_meter.get(meter, {}).items()}

    def load(self, meter: str, saved: Any) -> None:
        """Take back what :meth:`export` gave; anything malformed is ignored."""
        if not isinstance(saved, dict):
            return
        out: dict[int, bytes] = {}
        for s, f in list(saved.items())[:MAX_FORMATS_PER_METER]:
            try:
                fmt = bytes.fromhex(str(f))
                if signature(fmt) == int(str(s), 16):
                    out[signature(fmt)] = fmt
            except ValueError:
                continue
        if out:
            self.by_meter[meter] = out


def expand(fmt: bytes, data: bytes, pos: int = 0) -> bytes:
    """Interleave the format's DIB/VIB bytes with the compact frame's data bytes: the
    records as the full frame would have carried them."""
    out = bytearray()
    i = 0
    n = len(fmt)
    while i < n:
        start = i
        dif = fmt[i]
        i += 1
        b = dif
        while b & 0x80:
            if i >= n:
                raise FrameError("learned format ends inside a DIB")
            b = fmt[i]
            i += 1
        if i >= n:
            raise FrameError("learned format ends before a VIF")
        b = fmt[i]
        i += 1
        while b & 0x80:
            if i >= n:
                raise FrameError("learned format ends inside a VIB")
            b = fmt[i]
            i += 1
        length, _ = DATA_FIELDS.get(dif & 0x0F, (0, "none"))
        if length < 0:
            raise FrameError("a compact frame cannot carry variable-length data")
        if pos + length > len(data):
            raise TruncatedError(f"compact frame: record at format offset {start} needs "
                                 f"{length} data bytes, {len(data) - pos} left")
        out += fmt[start:i] + data[pos:pos + length]
        pos += length
    if pos != len(data) and data[pos:].strip(b"\x2f"):  # 2F: the encryption's fill bytes
        raise FrameError(f"compact frame has {len(data) - pos} data bytes more than its format")
    return bytes(out)


def decode_compact(data: bytes, pos: int, header: dict[str, Any],
                   formats: Formats | None) -> tuple[list[DataRecord], bytes, bool]:
    """The records of a compact frame whose signature starts at ``data[pos]``."""
    if pos + 4 > len(data):
        raise TruncatedError("compact frame: format signature and data CRC need 4 bytes",
                             header)
    sig = int.from_bytes(data[pos:pos + 2], "little")
    crc = int.from_bytes(data[pos + 2:pos + 4], "little")
    body = bytes(data[pos + 4:])
    fmt = formats.lookup(meter_key(header), sig) if formats is not None else None
    if fmt is None:  # a format the manufacturer's meter profile publishes (Kamstrup)
        from .profiles import compact_format
        fmt = compact_format(str(header.get("manufacturer", "")), sig)
    if fmt is None:
        raise CompactFormatUnknown(f"compact frame with format signature {sig:04X}, not yet "
                                   "seen in a full frame of this meter", header, signature=sig)
    try:
        full = expand(fmt, body)
    except FrameError as exc:
        exc.header = exc.header or header
        raise
    if crc_en13757(full) != crc:
        raise ChecksumError(f"compact frame: full-frame CRC {crc:04X} does not match the "
                            f"records rebuilt with format {sig:04X} "
                            f"({crc_en13757(full):04X})", header)
    return parse_records(full)


# ----------------------------------------------------------------- encoding (simulators, tests)

def compact_payload(apl: bytes) -> tuple[bytes, bytes]:
    """-> (format, signature + CRC + data bytes) for the records ``apl`` of a full frame:
    what follows the compact-frame CI field."""
    recs, _, _ = parse_records(bytes(apl))
    fmt = format_bytes(recs)
    data = b"".join(bytes(r.raw) for r in recs)
    full = b"".join(bytes(r.dib) + bytes(r.vib) + bytes(r.raw) for r in recs)
    return fmt, (signature(fmt).to_bytes(2, "little") + crc_en13757(full).to_bytes(2, "little")
                 + data)

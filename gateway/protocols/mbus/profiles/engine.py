"""The meter-profile engine: manufacturer-specific payloads read from a table, not code.

A :class:`Profile` says for which meters it holds (manufacturer, version, device type, CI
and, where needed, a byte signature), where its bytes are (the payload after the CI /
TPL header, the manufacturer data after DIF 0x0F, the data of one VIF 0x7F/0xFF record,
or the standard records themselves) and which byte range holds which register, in which
encoding, scale and unit. The engine turns that into the same :class:`DataRecord` s the
EN 13757-3 decoder yields (so readings, timestamps and the store need nothing new), with
exact values: an int mantissa and a decimal exponent, never a float.

Everything here is sans-I/O and raises only the codec's own errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Callable, Iterable

from ..errors import FrameError, TruncatedError, UnsupportedFormatError
from ..records import DataRecord, decode_bcd, decode_date_g
from ..tables import PRIMARY_VIF

# The canonical register names a profile may use (README and listen show them).
REGISTERS: frozenset[str] = frozenset((
    "total_volume", "total_energy", "hca", "due_date", "due_date_volume", "due_date_energy",
    "due_date_hca", "month_end_date", "month_end_volume", "month_end_energy", "month_end_hca",
    "current_period_volume", "current_period_energy", "current_period_hca", "meter_date",
    "backflow_volume", "battery_voltage", "room_temperature", "radiator_temperature",
    "monthly_volume", "leak", "burst", "tamper", "battery_low", "meter_blocked",
    "backflow", "dry", "leak_date", "error_flags", "remaining_battery_years",
    "transmit_period", "smoke", "defect",
))

PAYLOAD = "payload"        # the bytes after the CI field (manufacturer CI) or TPL header
MFCT_DATA = "mfct_data"    # the bytes after DIF 0x0F / 0x1F
RECORDS = "records"        # standard records only: the profile names them


def vif_record(vib: bytes) -> str:
    """Source: the data of the record whose VIB is ``vib`` (e.g. VIF 0xFF 0x5F)."""
    return "vib:" + vib.hex().upper()


@dataclass(frozen=True)
class Field:
    """One register at a fixed place in the source bytes.

    ``encoding``: uint_le, uint_be, int_le, bcd (little-endian BCD), date_g (EN 13757-3
    type G), date_tch (Techem day | month << 5 | year << 9), date_tch_cur (day << 4 |
    month << 9, year from the ``relative_to`` date: the first such day after it),
    date_bcd_ymd / date_bcd_dmy (three BCD bytes, 20YY), bits (``(v >> shift) & mask`` of
    a little-endian int, a flag or a small code), nonzero (a flag: the field is not all
    zero), table (raw -> exact decimal text).
    The value is ``raw * 10**exponent / divisor`` in ``unit`` (a divisor other than 1 is
    exact when it is made of twos and fives, e.g. 1/256 °C, else rounded half-even to 6 more
    places, e.g. meters counting 1/3 litre). ``vif_at``:
    the unit and exponent are given by the primary VIF byte at that offset of the source
    (Qundis). ``invalid``: raw values that mean "no value" (e.g. 0xFFFF dates).
    """

    register: str
    offset: int
    length: int
    encoding: str = "uint_le"
    quantity: str = ""
    unit: str = ""
    exponent: int = 0
    storage: int = 0
    divisor: int = 1
    shift: int = 0
    mask: int | None = None
    vif_at: int | None = None
    relative_to: str | None = None
    invalid: tuple[int, ...] = ()
    optional: bool = False    # absent when the source is too short (not an error)
    factor: int = 1           # raw * factor (e.g. half years: factor 5, exponent -1)
    table: tuple[tuple[int, str], ...] = ()  # encoding "table": raw -> exact decimal text
    when: tuple[int, int] | None = None  # in a sequence: present only if src[i] & mask


@dataclass(frozen=True)
class Derived:
    """A register computed from others: the exact sum of ``of`` (same unit)."""

    register: str
    of: tuple[str, ...]
    quantity: str = ""
    storage: int = 0


@dataclass(frozen=True)
class Tagged:
    """A register stream: from ``start``, tag byte then data of ``sizes[tag]`` bytes,
    until ``end_tag`` or the end. ``fields`` maps a tag to the register its data hold
    (offsets relative to the data)."""

    start: int
    sizes: dict[int, int]
    fields: dict[int, tuple[Field, ...]]
    end_tag: int | None = None
    trailer: int = 0   # bytes at the end that are not registers (a checksum)


@dataclass(frozen=True)
class RecordName:
    """For source ``records``: the standard record of this quantity/storage is ``register``."""

    register: str
    quantity: str
    storage: int = 0
    function: str = "instantaneous"


@dataclass(frozen=True)
class Profile:
    name: str
    manufacturers: tuple[str, ...]
    cis: tuple[int, ...]
    versions: tuple[int, ...] | None = None
    device_types: tuple[int, ...] | None = None
    source: str = PAYLOAD
    signature: tuple[tuple[int, bytes], ...] = ()
    skip: bytes = b""                 # bytes the source starts with that are not data (2F2F)
    fields: tuple[Field, ...] = ()
    sequence: tuple[Field, ...] = ()  # laid one after the other from ``sequence_start``
    sequence_start: int = 0
    record_fields: tuple[tuple[str, tuple[Field, ...]], ...] = ()  # (VIB hex, fields of its data)
    derived: tuple[Derived, ...] = ()
    tagged: Tagged | None = None
    names: tuple[RecordName, ...] = ()
    transform: str | None = None      # a registered transform (decryption scheme) of the source
    address: str | None = None        # a registered link-address transform (Diehl)
    prefer_records: bool = False      # a payload that is valid EN 13757-3 records stays so
    note: str = ""

    def matches(self, hdr: dict[str, Any], ci: int, source: bytes | None,
                header_only: bool = False) -> bool:
        """This meter and CI (and, unless ``header_only``, the signature on ``source``)."""
        if hdr.get("manufacturer") not in self.manufacturers or ci not in self.cis:
            return False
        if self.versions is not None and hdr.get("version") not in self.versions:
            return False
        if self.device_types is not None and hdr.get("device_type") not in self.device_types:
            return False
        if self.signature and not header_only:
            if source is None:
                return False
            for off, sig in self.signature:
                if source[off:off + len(sig)] != sig:
                    return False
        return True


# --------------------------------------------------------------------------- transforms

# name -> function(source, context dict) -> decoded source; raises an MBusError if the
# scheme does not apply (e.g. the check byte after decoding is wrong).
TRANSFORMS: dict[str, Callable[[bytes, dict[str, Any]], bytes]] = {}
# name -> function(frame) -> (id, version, device type) as the meter means them
ADDRESSES: dict[str, Callable[[bytes], tuple[str, int, int]]] = {}


def transform(name: str) -> Callable[[Callable[[bytes, dict[str, Any]], bytes]],
                                     Callable[[bytes, dict[str, Any]], bytes]]:
    def deco(fn: Callable[[bytes, dict[str, Any]], bytes]) -> Callable[[bytes, dict[str, Any]],
                                                                      bytes]:
        TRANSFORMS[name] = fn
        return fn
    return deco


# --------------------------------------------------------------------------- decoding

@dataclass
class Decoded:
    """What a profile read: records (for readings) and registers (canonical name -> text)."""

    profile: str
    records: list[DataRecord]
    registers: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the profile could not read

    def extra(self) -> dict[str, Any]:
        """The telegram details a profile adds (``Telegram.extra``)."""
        out: dict[str, Any] = {"profile": self.profile, "registers": self.registers}
        if self.notes:
            out["profile_notes"] = self.notes
        return out


def text(rec: DataRecord) -> str | None:
    """``rec.value_text()`` without Decimal for the usual int mantissa (a register is
    rendered for every telegram of a profiled meter)."""
    v = rec.value
    if type(v) is int and rec.kind in ("number", "flags"):
        e = rec.exponent
        if e >= 0:
            return str(v * 10 ** e)
        digits = str(abs(v)).rjust(1 - e, "0")
        return ("-" if v < 0 else "") + digits[:e] + "." + digits[e:]
    return rec.value_text()


def _raw_int(b: bytes, enc: str) -> int:
    if enc == "uint_be":
        return int.from_bytes(b, "big")
    if enc == "int_le":
        return int.from_bytes(b, "little", signed=True)
    return int.from_bytes(b, "little")


def _bcd_byte(b: int) -> int | None:
    hi, lo = b >> 4, b & 0x0F
    return None if hi > 9 or lo > 9 else hi * 10 + lo


def _iso(y: int, m: int, d: int) -> str | None:
    from ..records import _valid_date  # the one calendar check of the codec
    return f"{y:04d}-{m:02d}-{d:02d}" if _valid_date(y, m, d) else None


def _date(f: Field, raw: bytes, dates: dict[str, tuple[int, int, int]]) -> str | None:
    enc = f.encoding
    v = int.from_bytes(raw, "little")
    if v in f.invalid:
        return None
    if enc == "date_g":
        return decode_date_g(raw)
    if enc == "date_tch":
        y, m, d = 2000 + ((v >> 9) & 0x3F), (v >> 5) & 0x0F, v & 0x1F
    elif enc == "date_tch_cur":
        m, d = (v >> 9) & 0x0F, (v >> 4) & 0x1F
        m, d = m or 12, d or 1  # Techem sends month 0 for December and day 0 for the 1st
        ref = dates.get(f.relative_to or "")
        if ref is None:
            return None
        y = ref[0] + (1 if (m, d) <= (ref[1], ref[2]) else 0)
    elif enc in ("date_bcd_ymd", "date_bcd_dmy"):
        parts = [_bcd_byte(x) for x in raw[:3]]
        if None in parts:
            return None
        a, b, c = parts  # type: ignore[misc]
        y, m, d = (2000 + a, b, c) if enc == "date_bcd_ymd" else (2000 + c, b, a)
    else:
        raise ValueError(f"unknown date encoding {enc}")
    iso = _iso(y, m, d)
    if iso is not None:
        dates[f.register] = (y, m, d)
    return iso


_QNAMES = {"Volume": "volume", "Energy": "energy", "HCA units": "hca"}
_CANON = {"total_hca": "hca"}

DATE_ENCODINGS = frozenset(("date_g", "date_tch", "date_tch_cur", "date_bcd_ymd",
                            "date_bcd_dmy"))


def _scaled(raw: int, exponent: int, divisor: int) -> tuple[int, int]:
    """raw * 10**exponent / divisor as (mantissa, exponent); a divisor that does not divide
    leaves a value rounded half-even to 6 more decimal places (as the meter's own display)."""
    if divisor == 1:
        return raw, exponent
    q, r = divmod(raw, divisor)
    if r == 0:
        return q, exponent
    for places in range(1, 13):  # a divisor of twos and fives (1/256 °C) divides exactly
        m, r = divmod(raw * 10 ** places, divisor)
        if r == 0:
            return m, exponent - places
    places = 6
    exact = Decimal(raw) * (Decimal(10) ** places) / Decimal(divisor)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)), exponent - places


def _field(f: Field, src: bytes, base: int, out: Decoded,
           dates: dict[str, tuple[int, int, int]], values: dict[str, DataRecord]) -> None:
    start = base + f.offset
    raw = src[start:start + f.length]
    if len(raw) < f.length:
        if f.optional:
            return
        raise TruncatedError(f"profile {out.profile}: {f.register or 'a field'} needs "
                             f"{f.length} bytes at offset {start}, "
                             f"{max(0, len(src) - start)} left")
    if not f.register:
        return  # bytes the profile knows but does not read
    quantity, unit, exponent = f.quantity, f.unit, f.exponent
    error = None
    if f.encoding == "table":
        code = dict(f.table).get(int.from_bytes(raw, "little"))
        if code is None:
            rec = DataRecord(quantity or f.register, unit, "number", None, 0, "instantaneous",
                             f.storage, 0, 0, b"", b"", raw, "code not in the profile's table")
        else:
            sign, digits, exp = Decimal(code).as_tuple()
            mant = int("".join(map(str, digits))) * (-1 if sign else 1)
            rec = DataRecord(quantity or f.register, unit, "number", mant, int(exp),
                             "instantaneous", f.storage, 0, 0, b"", b"", raw, None)
        out.records.append(rec)
        values[f.register] = rec
        out.registers[f.register] = text(rec)
        return
    if f.encoding in DATE_ENCODINGS:
        value: Any = _date(f, raw, dates)
        rec = DataRecord(quantity or "Date", "", "date", value, 0, "instantaneous", f.storage,
                         0, 0, b"", b"", raw, None if value is not None else "invalid date")
        out.records.append(rec)
        out.registers[f.register] = value
        return
    if f.vif_at is not None:
        if base + f.vif_at >= len(src):
            raise TruncatedError(f"profile {out.profile}: VIF byte at {base + f.vif_at} missing")
        v = PRIMARY_VIF.get(src[base + f.vif_at] & 0x7F)
        if v is None or v.kind != "number" or not v.unit and v.quantity != "HCA units":
            raise FrameError(f"profile {out.profile}: byte 0x{src[base + f.vif_at]:02X} is not "
                             "a value VIF")
        quantity, unit, exponent = v.quantity, v.unit, v.exponent + f.exponent
        register = f.register.replace("{q}", _QNAMES.get(v.quantity, "value"))
        f = Field(**{**f.__dict__, "register": _CANON.get(register, register)})
    kind = "number"
    if f.encoding == "bcd":
        mant = decode_bcd(raw)
        if mant is None:
            error = "invalid BCD " + raw[::-1].hex().upper()
    elif f.encoding == "bits":
        mant = (int.from_bytes(raw, "little") >> f.shift) & (f.mask if f.mask is not None else -1)
        kind = "flags"
    elif f.encoding == "nonzero":  # a flag that is set when the field holds anything
        mant, kind = int(any(raw)), "flags"
    elif f.encoding in ("uint_le", "uint_be", "int_le"):
        mant = _raw_int(raw, f.encoding)
        if f.mask is not None:
            mant = (mant >> f.shift) & f.mask
    else:
        raise ValueError(f"unknown encoding {f.encoding}")
    if mant is not None and int.from_bytes(raw, "little") in f.invalid:
        mant, error = None, "no value (meter sends the invalid marker)"
    if mant is not None and kind == "number":
        mant, exponent = _scaled(mant * f.factor, exponent, f.divisor)
    rec = DataRecord(quantity or f.register, unit, kind, mant, exponent if kind == "number" else 0,
                     "instantaneous", f.storage, 0, 0, b"", b"", raw, error)
    out.records.append(rec)
    values[f.register] = rec
    out.registers[f.register] = text(rec)


def _tagged(t: Tagged, src: bytes, out: Decoded, dates: dict[str, tuple[int, int, int]],
            values: dict[str, DataRecord]) -> None:
    i = t.start
    seen: set[int] = set()
    end = len(src) - t.trailer
    while i < end:
        tag = src[i]
        if t.end_tag is not None and tag == t.end_tag:
            break
        size = t.sizes.get(tag)
        if size is None:
            if seen:  # what came before it stands; nothing after it can be placed
                out.notes.append(f"register stream read up to the unknown tag 0x{tag:02X} "
                                 f"at offset {i}")
                return
            raise FrameError(f"profile {out.profile}: register tag 0x{tag:02X} at offset {i} "
                             "has no known size")
        i += 1
        if i + size > end:
            raise TruncatedError(f"profile {out.profile}: register 0x{tag:02X} needs {size} "
                                 f"bytes at offset {i}, {max(0, end - i)} left")
        if tag in t.fields and tag not in seen:
            seen.add(tag)
            for f in t.fields[tag]:
                _field(f, src, i, out, dates, values)
        i += size


def _derived(d: Derived, out: Decoded, values: dict[str, DataRecord]) -> None:
    parts = [values.get(r) for r in d.of]
    if any(p is None or p.value is None or p.error for p in parts):
        return
    exp = min(p.exponent for p in parts)  # type: ignore[union-attr]
    units = {p.unit for p in parts}  # type: ignore[union-attr]
    if len(units) != 1:
        raise ValueError(f"derived {d.register}: parts have different units {units}")
    total = sum(p.value * 10 ** (p.exponent - exp) for p in parts)  # type: ignore[union-attr]
    first = parts[0]
    rec = DataRecord(d.quantity or first.quantity, first.unit, "number", total, exp,  # type: ignore[union-attr]
                     "instantaneous", d.storage, 0, 0, b"", b"", b"", None)
    out.records.append(rec)
    values[d.register] = rec
    out.registers[d.register] = text(rec)


def apply(profile: Profile, src: bytes, ctx: dict[str, Any] | None = None,
          records: Iterable[DataRecord] = ()) -> Decoded:
    """Read ``src`` (the profile's source bytes) with ``profile``."""
    out = Decoded(profile.name, [])
    if profile.transform is not None:
        src = TRANSFORMS[profile.transform](src, ctx or {})
    if profile.skip:
        if src[:len(profile.skip)] != profile.skip:
            raise FrameError(f"profile {profile.name}: payload does not start with "
                             f"{profile.skip.hex().upper()}")
        src = src[len(profile.skip):]
    dates: dict[str, tuple[int, int, int]] = {}
    values: dict[str, DataRecord] = {}
    for f in profile.fields:
        _field(f, src, 0, out, dates, values)
    if profile.sequence:
        i = profile.sequence_start
        for f in profile.sequence:
            if f.when is not None:
                at, mask = f.when
                if at >= len(src) or not src[at] & mask:
                    continue
            if i + f.length > len(src) and f.optional:
                break
            _field(Field(**{**f.__dict__, "offset": 0}), src, i, out, dates, values)
            i += f.length
    recs = list(records)
    for vib_hex, fields in profile.record_fields:
        vib = bytes.fromhex(vib_hex)
        r = next((r for r in recs if r.vib == vib and isinstance(r.raw, bytes)), None)
        if r is not None:
            for f in fields:
                _field(f, r.raw, 0, out, dates, values)
    if profile.tagged is not None:
        _tagged(profile.tagged, src, out, dates, values)
    if profile.names:
        for n in profile.names:
            r = next((r for r in recs if r.quantity == n.quantity and r.storage == n.storage
                      and r.function == n.function and r.tariff == 0 and r.subunit == 0), None)
            if r is not None:
                values[n.register] = r
                out.registers[n.register] = text(r)
    for d in profile.derived:
        _derived(d, out, values)
    return out


def unsupported(hdr: dict[str, Any], ci: int, why: str,
                payload: bytes = b"") -> UnsupportedFormatError:
    """The error for a payload no profile reads; ``payload`` (from the CI on) stays on it
    so the telegram can be kept and read once a profile exists."""
    h = {**hdr, "ci": ci}
    return UnsupportedFormatError(
        f"{why}: no meter profile for manufacturer {hdr.get('manufacturer')} version "
        f"0x{hdr.get('version', 0):02X} device type 0x{hdr.get('device_type', 0):02X} "
        f"CI 0x{ci:02X}", h, payload=payload)

"""EN 13757-3 data records: DIB (DIF/DIFE), VIB (VIF/VIFE) and the data types.

Values are exact: integers and BCD become an int mantissa with a decimal exponent taken
from the VIF; a 32-bit real becomes the shortest decimal that round-trips to the same
float32. Dates become ISO strings. Manufacturer-specific data stay raw bytes.

Parsing is one flat loop with a VIB cache: a meter sends the same few VIBs in every
telegram, so each is decoded once (the benchmark decodes >20,000 telegrams/s).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ...model import to_decimal

from .datatypes import (  # re-exported: profiles and callers read them here
    _DATE_DECODERS, _bcd_error, _valid_date, decode_bcd, decode_date_g, decode_datetime_f,
    decode_datetime_i, decode_real, decode_time_j,
)
from .errors import FrameError, TruncatedError
from .tables import (
    DATA_FIELDS, DIF_GLOBAL_READOUT, DIF_IDLE_FILLER, DIF_MORE_FOLLOWS, FB_VIF, FD_VIF, FUNCTIONS,
    MAX_DIFE, MAX_VIFE, PRIMARY_VIF, VIF_FB, VIF_FD, VIF_MANUFACTURER, VIF_PLAIN_TEXT,
    VIFE_DATE_OF, VIFE_DESCRIPTORS, VIFE_ERRORS, VIFE_EXTENSION, VIFE_MANUFACTURER,
    VIFE_MULT_1000, VIFE_MULT_BASE, VIFE_PER, Vif,
)

NUMERIC_KINDS = frozenset(("number", "flags"))


def exact_decimal(mantissa: int, exponent: int) -> Decimal:
    """mantissa * 10**exponent, exact at any length (a 16-byte M-Bus integer has 39 digits;
    ``Decimal.scaleb`` would round to 28)."""
    return to_decimal(mantissa, exponent)


@dataclass(slots=True)
class DataRecord:
    """One decoded data record.

    ``kind`` says what ``value`` holds: number/flags (int mantissa; the value is
    ``value * 10**exponent`` in ``unit``), date/datetime/time (ISO string), text (str),
    bytes (raw), none (no data). ``error`` is set when the meter flagged the record (VIFE
    error code) or its data could not be decoded (invalid BCD, invalid date); then value
    is None and must not be used as a reading.
    """

    quantity: str
    unit: str
    kind: str
    value: Any
    exponent: int
    function: str
    storage: int
    tariff: int
    subunit: int
    dib: bytes
    vib: bytes
    raw: bytes
    error: str | None = None

    @property
    def is_numeric(self) -> bool:
        return self.kind in NUMERIC_KINDS and self.value is not None and self.error is None

    def decimal(self) -> Decimal:
        """The exact value of a numeric record."""
        if not self.is_numeric:
            raise TypeError(f"record {self.quantity!r} is not numeric ({self.kind})")
        return exact_decimal(self.value, self.exponent)

    def value_text(self) -> str | None:
        """The value as the one string a person or JSON sees: exact decimal, ISO date..."""
        if self.value is None:
            return None
        if self.kind in NUMERIC_KINDS:
            return format(exact_decimal(self.value, self.exponent), "f")
        if isinstance(self.value, (bytes, bytearray)):
            return bytes(self.value).hex().upper()
        return str(self.value)

    @property
    def key(self) -> str:
        """A name unique within one meter's telegram, used as the Reading quantity."""
        k = self.quantity
        if self.function != "instantaneous":
            k += f"/{self.function}"
        if self.storage:
            k += f"/storage={self.storage}"
        if self.tariff:
            k += f"/tariff={self.tariff}"
        if self.subunit:
            k += f"/subunit={self.subunit}"
        return k

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "quantity": self.quantity, "value": self.value_text(), "unit": self.unit,
            "storage": self.storage, "tariff": self.tariff, "subunit": self.subunit,
            "function": self.function, "type": self.kind,
        }
        if self.error:
            out["error"] = self.error
        return out


# (quantity, unit, exponent, kind, seconds factor, error)
_Vib = tuple[str, str, int, str, int, "str | None"]
_vib_cache: dict[bytes, _Vib] = {}
_VIB_CACHE_MAX = 4096


def _from_vif(v: Vif) -> _Vib:
    return (v.quantity, v.unit, v.exponent, v.kind, v.seconds, None)


_ONE_BYTE = [bytes((i,)) for i in range(256)]
_PRIMARY_FAST: list[_Vib | None] = [
    _from_vif(PRIMARY_VIF[c]) if c in PRIMARY_VIF else None for c in range(128)
]


def _vifes_end(data: bytes, pos: int, end: int, start: int) -> int:
    """Index after a chain of VIFEs starting at pos (the byte before had its extension bit
    set). At most 10 VIFEs (an FB/FD table byte counts as one, as in libmbus)."""
    n = 0
    while True:
        if pos >= end:
            raise TruncatedError(f"offset {start}: record ends inside its VIFEs")
        if n >= MAX_VIFE:
            raise FrameError(f"offset {start}: more than {MAX_VIFE} VIFEs")
        b = data[pos]
        pos += 1
        n += 1
        if not b & 0x80:
            return pos


def _vib_end(data: bytes, pos: int, end: int) -> int:
    """Index after the VIB starting at pos: the VIF, for a plain-text VIF (0x7C/0xFC) its
    length byte and text (which come before the VIFEs, EN 13757-3 6.4.2), then the VIFEs.

    Some meters put the VIFEs of 0xFC first and the text after them; that reading is
    tried only when the standard one runs past the record.
    """
    start = pos
    if pos >= end:
        raise TruncatedError(f"offset {pos}: record ends before its VIF")
    vif = data[pos]
    pos += 1
    if vif & 0x7F == VIF_PLAIN_TEXT:
        if pos >= end:
            raise TruncatedError(f"offset {start}: plain-text VIF without its length")
        ln = data[pos]
        after = pos + 1 + ln
        try:
            if after > end:
                raise TruncatedError(f"offset {start}: plain-text VIF needs {ln} characters")
            return _vifes_end(data, after, end, start) if vif & 0x80 else after
        except TruncatedError:
            if not vif & 0x80:
                raise
            p = _vifes_end(data, pos, end, start)  # VIFEs first, then length and text
            if p >= end or p + 1 + data[p] > end:
                raise
            return p + 1 + data[p]
    if vif & 0x80:
        return _vifes_end(data, pos, end, start)
    return pos


def _text_first(vib: bytes) -> bool:
    """Whether a plain-text VIB has its text right after the VIF (the standard layout)."""
    after = 2 + vib[1]
    if after > len(vib):
        return False
    if not vib[0] & 0x80:
        return after == len(vib)
    tail = vib[after:]
    return bool(tail) and all(b & 0x80 for b in tail[:-1]) and not tail[-1] & 0x80


def _vifes(vib: bytes, i: int, has_more: bool, unit: str, exponent: int, kind: str,
           seconds: int | tuple[int, ...]) -> tuple[list[str], str, int, str, Any, str | None]:
    """Walk the VIFEs from ``vib[i]``: they add descriptors and adjust the unit, scale and
    kind the primary VIF set; an error code in the first VIFE is the record's error."""
    error: str | None = None
    descriptors: list[str] = []
    first = True
    while has_more and i < len(vib):
        e = vib[i]
        i += 1
        has_more = bool(e & 0x80)
        c = e & 0x7F
        if c == 0x1E or c == 0x1F:
            # EN 13757-3:2013 compact profile (with register numbers): a packed series
            # of values whose layout is in the data; kept raw.
            descriptors.append("compact profile" + (" with registers" if c == 0x1E else ""))
            kind, unit, exponent = "bytes", "", 0
        elif c < 0x20:
            if first:
                error = VIFE_ERRORS.get(c, f"error code 0x{c:02X}")
                if c == 0:
                    error = None
            else:
                descriptors.append(f"action 0x{c:02X}")
        elif c in VIFE_PER:
            unit += VIFE_PER[c]
        elif c in VIFE_DATE_OF:
            descriptors.append(VIFE_DATE_OF[c])
            kind, unit, exponent = "datetime", "", 0
        elif VIFE_MULT_BASE <= c <= VIFE_MULT_BASE + 7:
            exponent += (c & 0x07) - 6
        elif c == VIFE_MULT_1000:
            exponent += 3
        elif c == VIFE_EXTENSION:
            if i < len(vib):
                descriptors.append(f"extension 0x{vib[i] & 0x7F:02X}")
                has_more = bool(vib[i] & 0x80)
                i += 1
        elif c == VIFE_MANUFACTURER:
            rest = vib[i:].hex().upper()
            descriptors.append("manufacturer specific" + (f" {rest}" if rest else ""))
            break
        elif c in VIFE_DESCRIPTORS:
            descriptors.append(VIFE_DESCRIPTORS[c])
        elif 0x50 <= c <= 0x5F:
            descriptors.append("duration of limit exceed")
            kind, unit, exponent, seconds = "duration", "s", 0, (1, 60, 3600, 86400)[c & 3]
        elif 0x60 <= c <= 0x67:
            descriptors.append("duration")
            kind, unit, exponent, seconds = "duration", "s", 0, (1, 60, 3600, 86400)[c & 3]
        else:
            descriptors.append(f"VIFE 0x{c:02X}")
        first = False
    return descriptors, unit, exponent, kind, seconds, error


def _decode_vib(vib: bytes) -> _Vib:
    vif = vib[0]
    code = vif & 0x7F
    i = 1
    error: str | None = None
    if code == VIF_FD or code == VIF_FB:
        if len(vib) < 2:
            # the extension bit is clear: the table byte is missing. The data field still
            # says how long the data are, so only this record is lost.
            return (f"VIF {vif:02X} without its extension byte", "", 0, "number", 1,
                    f"VIF 0x{vif:02X} without its extension byte")
        ext = vib[1]
        table = FD_VIF if code == VIF_FD else FB_VIF
        v = table.get(ext & 0x7F)
        if v is None:
            v = Vif(f"Reserved VIF {vif:02X}{ext:02X}", kind="flags")
        quantity, unit, exponent, kind, seconds = v.quantity, v.unit, v.exponent, v.kind, v.seconds
        has_more = bool(ext & 0x80)
        i = 2
    elif code == VIF_PLAIN_TEXT:
        # the length and the text (last character first), then the VIFEs; or the VIFEs
        # first where a meter sends them so (see _vib_end)
        if _text_first(vib):
            ln = vib[1]
            text = vib[2:2 + ln][::-1].decode("latin-1")
            i = 2 + ln
        else:
            j = 1
            while vib[j] & 0x80:
                j += 1
            ln = vib[j + 1]
            text = vib[j + 2:j + 2 + ln][::-1].decode("latin-1")
            vib = vib[:j + 1]  # the VIFEs below stop before the length and text
            i = 1
        quantity, unit, exponent, kind, seconds = text, "", 0, "number", 1
        has_more = bool(vif & 0x80)
    elif code == VIF_MANUFACTURER:
        # meaning known only to the manufacturer: the data stay raw bytes
        quantity = "Manufacturer specific " + vib.hex().upper()
        return (quantity, "", 0, "bytes", 1, None)
    else:
        v = PRIMARY_VIF.get(code)
        if v is None:  # cannot happen: every code has an entry or a branch above
            v = Vif(f"Reserved VIF {vif:02X}", kind="flags")
        quantity, unit, exponent, kind, seconds = v.quantity, v.unit, v.exponent, v.kind, v.seconds
        has_more = bool(vif & 0x80)
    descriptors, unit, exponent, kind, seconds, error = _vifes(
        vib, i, has_more, unit, exponent, kind, seconds)
    if descriptors:
        quantity = f"{quantity} ({', '.join(descriptors)})"
    return (quantity, unit, exponent, kind, seconds, error)


def _vib_info(vib: bytes) -> _Vib:
    info = _vib_cache.get(vib)
    if info is None:
        info = _decode_vib(vib)
        if len(_vib_cache) >= _VIB_CACHE_MAX:
            _vib_cache.clear()  # random input must not grow memory without bound
        _vib_cache[vib] = info
    return info


def _lvar(lvar: int) -> tuple[int, str]:
    """Variable-length data (6.3.3, Table 5): (byte count, coding)."""
    if lvar <= 0xBF:
        return lvar, "text"
    if 0xC0 <= lvar <= 0xC9:
        return lvar - 0xC0, "bcd"
    if 0xD0 <= lvar <= 0xD9:
        return lvar - 0xD0, "nbcd"
    if 0xE0 <= lvar <= 0xEF:
        return lvar - 0xE0, "int"
    if 0xF0 <= lvar <= 0xF4:
        return 4 * (lvar - 0xEC), "int"
    if lvar == 0xF5:
        return 48, "int"
    if lvar == 0xF6:
        return 64, "int"
    raise FrameError(f"reserved LVAR 0x{lvar:02X}")


# --------------------------------------------------------------------------- the record loop

def _difes(data: bytes, pos: int, end: int, dif: int, n_record: int,
           start: int) -> tuple[int, int, int, int]:
    """Walk the DIFEs after ``dif`` (record walk only): storage number, tariff, subunit and
    the offset after the DIB."""
    storage = (dif >> 6) & 1
    tariff = 0
    subunit = 0
    if dif & 0x80:
        n = 0
        b = dif
        while b & 0x80:
            if pos >= end:
                raise TruncatedError(f"record {n_record} at offset {start}: "
                                     "ends inside its DIFEs")
            if n >= MAX_DIFE:
                raise FrameError(f"record {n_record} at offset {start}: "
                                 f"more than {MAX_DIFE} DIFEs")
            b = data[pos]
            pos += 1
            storage |= (b & 0x0F) << (1 + 4 * n)
            tariff |= ((b >> 4) & 0x03) << (2 * n)
            subunit |= ((b >> 6) & 0x01) << n
            n += 1
    return storage, tariff, subunit, pos


def _value(raw: bytes, length: int, coding: str, kind: str, unit: str, exponent: int,
           seconds: Any, error: str | None) -> tuple[Any, str, str, int, str | None]:
    """Value extraction, apart from the walk: the record's data bytes as a value by the
    data field's coding and the VIB's kind (scaling of durations, dates, BCD, reals);
    returns (value, kind, unit, exponent, error)."""
    value: Any
    if kind == "bytes" and coding != "none":
        value = raw
    elif coding == "int":
        if kind == "number" or kind == "duration":
            value = int.from_bytes(raw, "little", signed=True)
        elif kind == "date" or kind == "datetime":
            dec = _DATE_DECODERS.get(length)
            if dec is None:
                value, kind, error = raw, "bytes", error or "date of unexpected size"
            else:
                kind = dec[0]
                value = dec[1](raw)
                if value is None:
                    error = error or "invalid date"
        elif kind == "bytes":
            value = raw
        else:
            value = int.from_bytes(raw, "little", signed=False)
    elif coding == "bcd":
        value = decode_bcd(raw)
        if value is None:
            error = error or _bcd_error(raw)
    elif coding == "real":
        r = decode_real(raw)
        if r is None:
            value, error = None, error or "real is not a finite number"
        else:
            value, e = r
            exponent += e
    elif coding == "none":
        value, kind = None, "none"
    elif coding == "text":
        if kind == "bytes":
            value = raw
        else:
            value, kind, unit, exponent = raw[::-1].decode("latin-1"), "text", "", 0
    elif coding == "nbcd":
        v = decode_bcd(raw)
        value = None if v is None else -v
        if value is None:
            error = error or _bcd_error(raw)
    else:  # unreachable: every coding is handled above
        raise FrameError(f"unknown data coding {coding}")
    if kind == "duration":
        kind = "number"
        if value is not None and seconds != 1 and isinstance(value, int):
            value *= seconds
    elif kind in ("date", "datetime", "time") and not isinstance(value, str):
        if value is not None and not isinstance(value, bytes):
            kind = "number"  # a BCD or real where a date was announced: keep the number
    if error is not None and kind in NUMERIC_KINDS:
        value = None
    return value, kind, unit, exponent, error


def parse_records(data: bytes, pos: int = 0,
                  end: int | None = None) -> tuple[list[DataRecord], bytes, bool]:
    """Decode the records in ``data[pos:end]``.

    Returns (records, manufacturer_data, more_records_follow). Raises TruncatedError or
    FrameError (both MBusError) if the records are malformed; a record whose value alone is
    bad (invalid BCD or date, error VIFE) is kept with ``error`` set.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if end is None:
        end = len(data)
    records: list[DataRecord] = []
    append = records.append
    cache_get = _vib_cache.get
    fast = _PRIMARY_FAST
    while pos < end:
        start = pos
        dif = data[pos]
        pos += 1
        df = dif & 0x0F
        if df == 0x0F:
            if dif == DIF_IDLE_FILLER:
                continue
            if dif == 0x0F or dif == DIF_MORE_FOLLOWS:
                return records, data[pos:end], dif == DIF_MORE_FOLLOWS
            if dif == DIF_GLOBAL_READOUT:
                continue  # a readout request echoed in a response: no data
            raise FrameError(f"record {len(records)} at offset {start}: reserved DIF 0x{dif:02X}")
        storage, tariff, subunit, pos = _difes(data, pos, end, dif, len(records), start)
        dib_end = pos
        if pos >= end:
            raise TruncatedError(f"record {len(records)} at offset {start}: ends before its VIF")
        vif = data[pos]
        if vif < 0x7B:  # fast path: one primary VIF byte, no extension
            pos += 1
            vib_b = None
            info = fast[vif]
        else:
            vend = _vib_end(data, pos, end)
            vib_b = data[pos:vend]
            pos = vend
            info = cache_get(vib_b) or _vib_info(vib_b)
        quantity, unit, exponent, kind, seconds, error = info  # type: ignore[misc]
        length, coding = DATA_FIELDS[df]
        if length < 0:
            if pos >= end:
                raise TruncatedError(f"record {len(records)} at offset {start}: "
                                     "LVAR byte missing")
            length, coding = _lvar(data[pos])
            pos += 1
        nxt = pos + length
        if nxt > end:
            raise TruncatedError(f"record {len(records)} at offset {start}: needs {length} "
                                 f"data bytes, {end - pos} left")
        raw = data[pos:nxt]
        pos = nxt
        value, kind, unit, exponent, error = _value(raw, length, coding, kind, unit,
                                                     exponent, seconds, error)
        append(DataRecord(quantity, unit, kind, value, exponent, FUNCTIONS[(dif >> 4) & 3],
                          storage, tariff, subunit, data[start:dib_end],
                          vib_b if vib_b is not None else _ONE_BYTE[vif], raw, error))
    return records, b"", False


# --------------------------------------------------------------------------- encoding (simulators, tests)

_INT_LENGTHS = {1: 0x1, 2: 0x2, 3: 0x3, 4: 0x4, 6: 0x6, 8: 0x7}
_BCD_LENGTHS = {1: 0x9, 2: 0xA, 3: 0xB, 4: 0xC, 6: 0xE}


def encode_dib(data_field: int, *, function: int = 0, storage: int = 0, tariff: int = 0,
               subunit: int = 0) -> bytes:
    """DIF plus as many DIFEs as storage/tariff/subunit need."""
    if not (0 <= data_field <= 0xE and 0 <= function <= 3 and storage >= 0 and tariff >= 0
            and subunit >= 0):
        raise ValueError("bad DIB fields")
    dif = data_field | (function << 4) | ((storage & 1) << 6)
    rest_s, rest_t, rest_u = storage >> 1, tariff, subunit
    difes = []
    while rest_s or rest_t or rest_u:
        difes.append((rest_s & 0x0F) | ((rest_t & 0x03) << 4) | ((rest_u & 1) << 6))
        rest_s, rest_t, rest_u = rest_s >> 4, rest_t >> 2, rest_u >> 1
    if len(difes) > MAX_DIFE:
        raise ValueError("storage/tariff/subunit need more than 10 DIFEs")
    out = [dif | (0x80 if difes else 0)]
    for i, d in enumerate(difes):
        out.append(d | (0x80 if i < len(difes) - 1 else 0))
    return bytes(out)


def encode_int(value: int, size: int) -> tuple[int, bytes]:
    """(data field, bytes) for a signed integer of ``size`` bytes."""
    return _INT_LENGTHS[size], value.to_bytes(size, "little", signed=True)


def encode_bcd(value: int, size: int) -> tuple[int, bytes]:
    """(data field, bytes) for BCD of ``size`` bytes; negative values use the F nibble."""
    digits = 2 * size
    if value < 0:
        s = "f" + str(-value).rjust(digits - 1, "0")
    else:
        s = str(value).rjust(digits, "0")
    if len(s) != digits:
        raise ValueError(f"{value} does not fit {digits} BCD digits")
    return _BCD_LENGTHS[size], bytes.fromhex(s)[::-1]


def encode_datetime_f(year: int, month: int, day: int, hour: int, minute: int,
                      summer: bool = False) -> tuple[int, bytes]:
    """(data field, bytes) of a type F date and time (to the minute; 2000-2080)."""
    if not (2000 <= year <= 2080 and _valid_date(year, month, day) and hour < 24
            and minute < 60):
        raise ValueError(f"not a type F date and time: {year}-{month}-{day} {hour}:{minute}")
    y = year - 2000
    return 0x4, bytes((minute, hour | (0x80 if summer else 0), day | (y & 0x07) << 5,
                       month | (y >> 3) << 4))


def encode_record(vib: bytes, data_field: int, data: bytes, **dib: int) -> bytes:
    return encode_dib(data_field, **dib) + bytes(vib) + bytes(data)


def encode_plain_text_vib(text: str, vifes: bytes = b"") -> bytes:
    """A plain-text VIB: 0x7C (0xFC when VIFEs follow), the length, the text last
    character first, then the VIFEs (EN 13757-3 6.4.2: the text precedes the VIFEs)."""
    t = text.encode("latin-1")
    if len(t) > 255:
        raise ValueError("a plain-text unit has at most 255 characters")
    return bytes((VIF_PLAIN_TEXT | (0x80 if vifes else 0), len(t))) + t[::-1] + bytes(vifes)

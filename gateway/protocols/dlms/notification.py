"""Pushed DLMS Data-Notifications (HAN ports: Norway, Sweden, Austria, Luxembourg) ->
exact Readings.

Pipeline: HDLC stream (our length-framed decoder) -> reassembled APDU (HDLC segments,
then General-Block-Transfer blocks) -> if general-glo-ciphering, decrypt with
``cryptography`` -> the Data-Notification (invoke id, date-time, body) parsed by our strict
A-XDR walker (:mod:`.axdr`), or a P1 text telegram (Luxembourg, parts of Austria) parsed by
the IEC 62056-21 codec -> OBIS values mapped here.

Bodies come in four shapes, all handled by :func:`map_body`:

* ``structure{obis, value, structure{scaler, unit}}...`` (Aidon, most IDIS meters): exact;
* a flat ``obis, value, obis, value...`` list (Kamstrup): the unit follows from the OBIS
  code, the scaler from the list's table (:data:`LIST_SCALERS`) or the config;
* a push object list first (E360, AM550): ``array{structure{class, obis, attribute,
  data index}}`` names each following element;
* bare values without OBIS codes (Kaifa; IM350/Wels after a list identifier 0-x:25.9.0):
  by position, from a configured OBIS list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Final, Iterable, Mapping, Sequence, Union
from zoneinfo import ZoneInfo

from ...model import Reading
from .. import hdlc
from . import DecryptError, DlmsError, axdr, cipher
from .gbt import GbtAssembler, GbtError
from .values import UNITS, datetime_ms, implied_unit, obis_bytes, obis_text, scaled

DATA_NOTIFICATION: Final = 0x0F
SOURCES_MAX: Final = 64  # GBT assemblies kept per HDLC source address at most

# Scalers of lists that carry bare values, keyed by the list's version string (first
# element). Kamstrup HAN (NO/DK, "Kamstrup_V0001"): currents in 0.01 A, energies in
# 10 Wh (amshan's Kamstrup decoder, and Kamstrup's HAN interface description).
LIST_SCALERS: Final[dict[str, dict[tuple[int, int], int]]] = {
    "Kamstrup_V0001": {(31, 7): -2, (51, 7): -2, (71, 7): -2,
                       (1, 8): 1, (2, 8): 1, (3, 8): 1, (4, 8): 1},
}


@dataclass(frozen=True, slots=True)
class Notification:
    """A parsed Data-Notification (``body``: A-XDR values, see :mod:`.axdr`), or a P1 text
    telegram that came general-glo-ciphered (``telegram``: an iec62056_21 Readout)."""

    invoke_id: int
    time_ms: int | None
    body: Any
    ciphered: bool = False
    system_title: bytes | None = None
    invocation_counter: int | None = None
    telegram: Any = None


@dataclass(frozen=True, slots=True)
class Value:
    """One mapped value before it becomes a Reading."""

    obis: str
    mantissa: int
    exponent: int
    unit: str


class NoKey(DlmsError):
    """A ciphered notification arrived and no key is configured."""

    def __init__(self, system_title: bytes) -> None:
        super().__init__(f"ciphered notification from system title {system_title.hex().upper()} "
                         "and no key configured")
        self.system_title = system_title


class NoValidApdu(DecryptError):
    """Encrypted without authentication (SC 0x20) and the plaintext is no valid APDU: with
    no tag to check, this is how a wrong key shows."""

    def __init__(self, why: str) -> None:
        super().__init__("decryption gave no valid APDU: wrong key?")
        self.why = why


class PushParser:
    """Data-Notification APDUs (plain or general-glo-ciphered) -> :class:`Notification`.
    Holds the keys of one meter; no state between APDUs."""

    def __init__(self, block_key: bytes | None = None, auth_key: bytes | None = None,
                 default_tz: str = "UTC") -> None:
        for what, k in (("block cipher key", block_key), ("authentication key", auth_key)):
            if k is not None and len(k) != 16:  # our mistake, not the meter's: ValueError
                raise ValueError(f"{what} must be 16 bytes (suite 0), got {len(k)}")
        self.block_key = block_key
        self.auth_key = auth_key
        ZoneInfo(default_tz)  # a bad zone fails here, not at the first notification
        self.tz = default_tz

    def parse(self, apdu: bytes) -> Notification:
        """Raises DlmsError only (DecryptError for a wrong key or a tampered frame)."""
        apdu = bytes(apdu)
        if apdu[:1] != bytes([cipher.GENERAL_GLO_CIPHERING]):
            return self._plain(apdu, False, None, None)
        g = cipher.parse_glo(apdu)
        if self.block_key is None:
            raise NoKey(g.system_title)
        plain = cipher.decrypt(g, self.block_key, self.auth_key)
        if g.security_control & 0x30 != cipher.SC_ENCRYPTED:
            return self._plain(plain, True, g.system_title, g.invocation_counter)
        try:  # no tag: only the plaintext itself can tell a wrong key
            return self._plain(plain, True, g.system_title, g.invocation_counter)
        except DlmsError as exc:
            raise NoValidApdu(str(exc)) from None

    def _plain(self, apdu: bytes, ciphered: bool, st: bytes | None,
               ic: int | None) -> Notification:
        if apdu[:1] == bytes([DATA_NOTIFICATION]):
            invoke_id, time_ms, body = parse_data_notification(apdu, self.tz)
            if time_ms is None:  # E360 & co.: no header time, the clock object is pushed
                time_ms = clock_in_body(body, self.tz)
            return Notification(invoke_id, time_ms, body, ciphered, st, ic)
        if ciphered and apdu.lstrip(b"\r\n")[:1] == b"/":
            return Notification(0, None, None, ciphered, st, ic, parse_p1(apdu))
        raise DlmsError(f"not a Data-Notification (APDU tag {apdu[:1].hex().upper() or 'none'})")


def parse_data_notification(apdu: bytes, tz: str = "UTC") -> tuple[int, int | None, Any]:
    """``0F | long-invoke-id-and-priority (4) | date-time (OPTIONAL octet-string) | body``
    (Green Book §9.5 data-notification) -> (invoke id, meter time in UTC ms, body)."""
    if len(apdu) < 7 or apdu[0] != DATA_NOTIFICATION:
        raise DlmsError(f"Data-Notification truncated ({len(apdu)} bytes)")
    invoke_id = int.from_bytes(apdu[1:5], "big")
    pos = 5
    if apdu[pos] == axdr.OCTET_STRING and apdu[pos + 1] == 12:
        pos += 1  # Kaifa: the date-time as a tagged octet-string (09 0C ...)
    n, pos = axdr.decode_length(apdu, pos)
    if pos + n > len(apdu):
        raise DlmsError(f"Data-Notification date-time of {n} bytes truncated")
    raw_time, pos = apdu[pos:pos + n], pos + n
    time_ms = datetime_ms(raw_time, tz) if n == 12 else None  # a date or time alone: no instant
    body = axdr.decode_all(apdu, pos)
    return invoke_id, time_ms, body


def clock_in_body(body: Any, tz: str = "UTC") -> int | None:
    """The meter time a body carries as its Clock object (0-x:1.0.0 attribute 2, a
    12-byte date-time), in any of the body shapes; None if it has none (or an invalid one:
    the values stand without a meter time)."""
    items = list(body) if isinstance(body, (list, tuple)) else [body]
    raw = None
    if items and _is_object_list(items[0]):
        defs = items[0]
        values = items if defs[0][0] == 40 and defs[0][2] == 2 else items[1:]
        raw = next((v for d, v in zip(defs, values) if d[0] == 8 and d[2] == 2), None)
    else:
        for i, it in enumerate(items):
            if _has_obis(it) and _is_clock(it[0]):
                raw = it[1]
            elif _is_clock(it) and i + 1 < len(items):
                raw = items[i + 1]
            if raw is not None:
                break
    if not isinstance(raw, bytes) or len(raw) != 12:
        return None
    try:
        return datetime_ms(raw, tz)
    except DlmsError:
        return None


def _is_clock(x: Any) -> bool:
    return _is_obis(x) and x[0] == 0 and x[2] == 1 and x[3] == 0


def parse_p1(text: bytes) -> Any:
    """A P1 / IEC 62056-21 telegram that came inside general-glo-ciphering."""
    from .. import iec62056_21 as iec
    try:
        return iec.parse_readout(text)
    except iec.Iec62056Error as exc:
        raise DlmsError(f"P1 telegram in the ciphered APDU: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - another codec's bug must not escape as ours
        raise DlmsError(f"P1 telegram in the ciphered APDU not readable: "
                        f"{type(exc).__name__}: {exc}") from None


def notification_values(n: Notification, scalers: Mapping[str, int] | None = None,
                        positional: Sequence[str] = ()) -> list[Value]:
    """The numeric OBIS values of a notification, whichever shape it came in."""
    if n.telegram is not None:
        return p1_values(n.telegram)
    return map_body(n.body, scalers, positional)


def p1_values(readout: Any) -> list[Value]:
    """Numbers with a unit from a P1 telegram (as the P1 driver maps them: dates, serial
    numbers and unitless counters are not registers)."""
    from .. import iec62056_21 as iec
    out = []
    for ds in readout.data_sets:
        ex = ds.exact()
        if ex is None or not ds.unit:
            continue
        out.append(Value(iec.normalise_obis(ds.address, "1-0:"), ex[0], ex[1], ds.unit))
    return out


def map_body(body: Any, scalers: Mapping[str, int] | None = None,
             positional: Sequence[str] = ()) -> list[Value]:
    """Numeric OBIS values of a notification body, scaled exactly. Raises DlmsError for a
    body whose layout contradicts itself (a push object list that does not match the
    values, a scaler_unit that is not {integer, enum})."""
    scalers = dict(scalers or {})
    items = list(body) if isinstance(body, (list, tuple)) else [body]
    out: list[Value] = []
    list_scalers: dict[tuple[int, int], int] = {}
    if items and isinstance(items[0], str) and items[0] in LIST_SCALERS:
        list_scalers = LIST_SCALERS[items[0]]
    if items and _is_object_list(items[0]):
        return _map_object_list(items, scalers)
    if _is_list_id(items[0] if items else None) or \
            not any(_is_obis(x) or _has_obis(x) for x in items):
        # Kaifa: values by position; IM350/Wels: the same after a list identifier
        for obis, value in zip(positional, items):
            _append(out, obis_bytes(obis), value, None, scalers, list_scalers)
        return out
    i = 0
    while i < len(items):
        it = items[i]
        if _has_obis(it):  # structure{obis, value[, structure{scaler, unit}]}
            s = list(it)
            _append(out, bytes(s[0]), s[1], s[2] if len(s) > 2 else None, scalers, list_scalers)
            i += 1
        elif _is_obis(it) and i + 1 < len(items):
            nxt = items[i + 1]
            su = None
            step = 2
            if i + 2 < len(items) and _looks_scaler_unit(items[i + 2]):
                su, step = items[i + 2], 3
            _append(out, bytes(it), nxt, su, scalers, list_scalers)
            i += step
        else:
            i += 1
    return out


def _is_obis(x: Any) -> bool:
    return isinstance(x, (bytes, bytearray)) and len(x) == 6


def _has_obis(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) >= 2 and _is_obis(x[0])


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _looks_scaler_unit(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and _is_int(x[0]) and _is_int(x[1])


def _is_list_id(x: Any) -> bool:
    """The logical name of a Push setup object (0-x:25.9.0) sent as the list's first
    element: it says which list this is, it is no value."""
    return _is_obis(x) and x[2] == 25 and x[3] == 9


def _is_object_list(x: Any) -> bool:
    """array{structure{class-id, logical-name, attribute-index, data-index[, restriction,
    columns]}}: the push object list (Push setup attribute 2; the 6-element form is the
    Blue Book's version 1 capture object definition)."""
    return isinstance(x, list) and bool(x) and all(
        isinstance(d, tuple) and len(d) in (3, 4, 6) and _is_int(d[0]) and _is_obis(d[1])
        and all(_is_int(v) for v in d[2:4]) for d in x)


# class id -> attribute holding the scaler_unit: Register, Extended Register, Demand Register
_SCALER_UNIT_ATTR: Final = {3: 3, 4: 3, 5: 4}


def _map_object_list(items: list[Any], scalers: Mapping[str, int]) -> list[Value]:
    defs = items[0]
    # the list usually names itself first (class 40 attribute 2): then element i is
    # object i; otherwise the objects follow the list
    self_named = defs[0][0] == 40 and defs[0][2] == 2
    values = items if self_named else items[1:]
    if len(values) != len(defs):
        raise DlmsError(f"push object list declares {len(defs)} objects, the notification "
                        f"carries {len(values)} values")
    scaler_units = {bytes(d[1]): v for d, v in zip(defs, values)
                    if d[2] == _SCALER_UNIT_ATTR.get(d[0])}
    out: list[Value] = []
    for d, v in zip(defs, values):
        if d[2] != 2 or d[0] == 40:
            continue  # scaler_unit, status, capture time... and the list itself
        obis = bytes(d[1])
        _append(out, obis, v, scaler_units.get(obis), scalers, {})
    return out


def _append(out: list[Value], obis: bytes, value: Any, scaler_unit: Any,
            scalers: Mapping[str, int], list_scalers: Mapping[tuple[int, int], int]) -> None:
    if isinstance(value, (bool, axdr.EnumValue)) or not isinstance(value, (int, float)):
        return  # identifiers, states (enums), date-times, nested data, null: not registers
    text = obis_text(obis)
    if scaler_unit is not None:
        if not _looks_scaler_unit(scaler_unit):
            raise DlmsError(f"{text}: scaler_unit is not structure{{integer, enum}}: "
                            f"{scaler_unit!r}"[:200])
        scaler, unit = scaler_unit[0], UNITS.get(scaler_unit[1], "")
    else:
        unit = implied_unit(obis) or ""
        scaler = scalers.get(text, list_scalers.get((obis[2], obis[3]), 0))
    if text in scalers:
        scaler = scalers[text]
    ex = scaled(value, scaler)
    if ex is not None:
        out.append(Value(text, ex[0], ex[1], unit))


def to_readings(values: Iterable[Value], meter_id: str, meter_ts_ms: int | None, rx_ms: int,
                bus: str) -> list[Reading]:
    return [Reading(meter_id, v.obis, v.mantissa, v.exponent, v.unit, meter_ts_ms, rx_ms, (), bus)
            for v in values]


@dataclass
class PushStats:
    notifications: int = 0
    decrypt_failures: int = 0
    no_key: int = 0
    malformed: int = 0
    frame_errors: int = 0


@dataclass(frozen=True, slots=True)
class Pushed:
    """A decoded notification, with the route (meter) it was decoded for."""

    notification: Notification
    route: Any
    source: str
    apdu: bytes


@dataclass(frozen=True, slots=True)
class PushError:
    """A frame that could not become a notification; ``kind`` is the event kind."""

    kind: str   # meter.decrypt_failed, meter.no_key, meter.decode_error, meter.frame_error
    reason: str
    source: str  # HDLC source address or system title
    route: Any = None
    frame_hex: str = ""


Router = Callable[[Union[bytes, None], Union[hdlc.Address, None]], "tuple[Any, PushParser]"]
HEX_MAX: Final = 1024  # hex digits of a bad frame kept in its event


class ApduSplitter:
    """Bare general-glo-ciphering APDUs back to back, no HDLC (the Luxembourg Smarty P1
    port): ``DB 08 <system title> <length> ...``, delimited by their own length field.
    Bytes that cannot start one are skipped and counted."""

    def __init__(self, max_apdu: int = 8192) -> None:
        self._buf = bytearray()
        self.max_apdu = max_apdu
        self.garbage_bytes = 0

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > 4 * self.max_apdu:
            drop = len(self._buf) - 4 * self.max_apdu
            del self._buf[:drop]
            self.garbage_bytes += drop

    def clear(self) -> None:
        self._buf.clear()

    def next_event(self) -> Union[bytes, Any]:
        buf = self._buf
        while True:
            start = buf.find(b"\xdb\x08")
            if start < 0:
                keep = 1 if buf[-1:] == b"\xdb" else 0
                self.garbage_bytes += len(buf) - keep
                del buf[:len(buf) - keep]
                return hdlc.NEED_DATA
            if start:
                self.garbage_bytes += start
                del buf[:start]
            if len(buf) < 11:
                return hdlc.NEED_DATA
            first = buf[10]
            size = first & 0x7F if first >= 0x80 else 0
            if first >= 0x80 and size not in (1, 2):
                self._skip()
                continue
            if len(buf) < 11 + size:
                return hdlc.NEED_DATA
            n = int.from_bytes(buf[11:11 + size], "big") if size else first
            total = 11 + size + n
            if n < 5 or total > self.max_apdu:
                self._skip()
                continue
            if len(buf) < total:
                return hdlc.NEED_DATA
            apdu = bytes(buf[:total])
            del buf[:total]
            return apdu

    def _skip(self) -> None:
        del self._buf[:1]
        self.garbage_bytes += 1


class PushDecoder:
    """HAN byte stream in, :class:`Pushed` or :class:`PushError` out (sans-I/O).

    ``framing``: "hdlc" (HDLC frames, segments and GBT blocks joined) or "apdu" (bare
    general-glo-ciphering APDUs, :class:`ApduSplitter`). ``route(system_title,
    hdlc_source)`` picks the meter (any tag) and its parser for each APDU; without it every
    APDU goes to ``parser``. Never raises for bad bytes.
    """

    def __init__(self, parser: PushParser | None = None, route: Router | None = None,
                 framing: str = "hdlc") -> None:
        if route is None:
            if parser is None:
                raise ValueError("PushDecoder needs a parser or a route")
            route = lambda st, src: (None, parser)  # noqa: E731
        if framing not in ("hdlc", "apdu"):
            raise ValueError(f"framing must be hdlc or apdu, not {framing!r}")
        self.route = route
        self.framing = framing
        self.splitter = ApduSplitter()
        self.frames = hdlc.HdlcDecoder()
        self.reassembler = hdlc.Reassembler()
        self.gbt: dict[str, GbtAssembler] = {}
        self._pending: list[Union[Pushed, PushError]] = []
        self.stats = PushStats()
        self.last_source = ""

    def receive_data(self, data: bytes) -> None:
        (self.splitter if self.framing == "apdu" else self.frames).receive_data(data)

    def reset(self) -> None:
        """Drop buffered bytes and unfinished APDUs (after the caller met an error)."""
        self.frames.clear()
        self.splitter.clear()
        self._pending.clear()
        self.reassembler = hdlc.Reassembler()
        self.gbt.clear()

    def next_event(self) -> Union[Pushed, PushError, Any]:
        if self.framing == "apdu":
            apdu = self.splitter.next_event()
            return apdu if apdu is hdlc.NEED_DATA else self.parse_apdu(apdu)
        if self._pending:
            return self._pending.pop(0)
        while True:
            frame = self.frames.next_event()
            if frame is hdlc.NEED_DATA:
                return hdlc.NEED_DATA
            self.last_source = str(frame.src)
            dropped = self.reassembler.dropped
            try:
                apdu = self.reassembler.add(frame)
            except hdlc.HdlcError as exc:
                self.stats.frame_errors += 1
                return self._error("meter.frame_error", str(exc), frame.src, frame.info)
            lost = None
            if self.reassembler.dropped != dropped:  # a segment of the previous APDU lost
                self.stats.frame_errors += 1
                lost = self._error("meter.frame_error", "HDLC segment lost: the segmented "
                                   "APDU before this frame is incomplete", frame.src, b"")
            ev = self._frame_apdu(apdu, frame.src) if apdu is not None else None
            if lost is not None:
                if ev is not None:
                    self._pending.append(ev)
                return lost
            if ev is not None:
                return ev

    def _frame_apdu(self, apdu: bytes, src: hdlc.Address) -> Union[Pushed, PushError, None]:
        try:
            whole = self._gbt(str(src)).add(apdu)
        except GbtError as exc:
            self.stats.frame_errors += 1
            return self._error("meter.frame_error", str(exc), src, apdu)
        return None if whole is None else self.parse_apdu(whole, src)

    def _gbt(self, source: str) -> GbtAssembler:
        a = self.gbt.get(source)
        if a is None:
            if len(self.gbt) >= SOURCES_MAX:
                self.gbt.clear()
            a = self.gbt[source] = GbtAssembler()
        return a

    def parse_apdu(self, apdu: bytes, src: hdlc.Address | None = None) -> Union[Pushed, PushError]:
        """One complete APDU (an HDLC-less HAN port hands them over directly)."""
        apdu = bytes(apdu)
        st = apdu[2:10] if apdu[:2] == b"\xdb\x08" and len(apdu) >= 10 else None
        source = str(src) if src is not None else st.hex().upper() if st else self.last_source
        route, parser = self.route(st, src)
        try:
            n = parser.parse(apdu)
        except NoKey as exc:
            self.stats.no_key += 1
            return PushError("meter.no_key", str(exc), exc.system_title.hex().upper(), route,
                             _hex(apdu))
        except DecryptError as exc:
            self.stats.decrypt_failures += 1
            return PushError("meter.decrypt_failed", str(exc), source, route, _hex(apdu))
        except DlmsError as exc:
            self.stats.malformed += 1
            return PushError("meter.decode_error", str(exc), source, route, _hex(apdu))
        except Exception as exc:  # noqa: BLE001 - a codec bug costs one frame, not the bus
            self.stats.malformed += 1
            return PushError("meter.decode_error", f"{type(exc).__name__}: {exc}", source,
                             route, _hex(apdu))
        self.stats.notifications += 1
        return Pushed(n, route, source, apdu)

    def _error(self, kind: str, reason: str, src: hdlc.Address, raw: bytes) -> PushError:
        route = None
        try:
            route = self.route(None, src)[0]
        except Exception:  # noqa: BLE001 - routing is the caller's; the error is reported anyway
            pass
        return PushError(kind, reason, str(src), route, _hex(raw))


def _hex(raw: bytes) -> str:
    h = bytes(raw).hex().upper()
    return h if len(h) <= HEX_MAX else h[:HEX_MAX] + "..."


@dataclass
class PushMapping:
    """Per-meter mapping options: scaler overrides and, for lists without OBIS codes,
    the OBIS code of each position."""

    scalers: dict[str, int] = field(default_factory=dict)
    positional: tuple[str, ...] = ()

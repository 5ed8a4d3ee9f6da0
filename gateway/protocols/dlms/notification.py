"""Pushed DLMS Data-Notifications (HAN ports: Norway, Sweden, Austria, Luxembourg) ->
exact Readings.

Pipeline: HDLC stream (our length-framed decoder) -> reassembled APDU -> if
general-glo-ciphering, decrypt with ``cryptography`` -> plaintext handed to gurux, which
parses the Data-Notification (invoke id, date-time, body) -> OBIS values mapped here.

Bodies come in three shapes, all handled by :func:`map_body`:

* ``structure{obis, value, structure{scaler, unit}}...`` (Aidon, most IDIS meters): exact;
* a flat ``obis, value, obis, value...`` list (Kamstrup): the unit follows from the OBIS
  code, the scaler from the list's table (:data:`LIST_SCALERS`) or the config;
* bare values without OBIS codes (Kaifa): by position, from a configured OBIS list.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final, Iterable, Mapping, Sequence, Union
from zoneinfo import ZoneInfo

from ...model import Reading
from .. import hdlc
from . import DlmsError, cipher, load_gurux
from .values import UNITS, implied_unit, obis_bytes, obis_text, scaled

DATA_NOTIFICATION: Final = 0x0F

# Scalers of lists that carry bare values, keyed by the list's version string (first
# element). Kamstrup HAN (NO/DK, "Kamstrup_V0001"): currents in 0.01 A, energies in
# 10 Wh (amshan's Kamstrup decoder, and Kamstrup's HAN interface description).
LIST_SCALERS: Final[dict[str, dict[tuple[int, int], int]]] = {
    "Kamstrup_V0001": {(31, 7): -2, (51, 7): -2, (71, 7): -2,
                       (1, 8): 1, (2, 8): 1, (3, 8): 1, (4, 8): 1},
}


@dataclass(frozen=True, slots=True)
class Notification:
    """A parsed Data-Notification. ``body`` is gurux's value (lists of Python values)."""

    invoke_id: int
    time_ms: int | None
    body: Any
    ciphered: bool = False
    system_title: bytes | None = None
    invocation_counter: int | None = None


@dataclass(frozen=True, slots=True)
class Value:
    """One mapped value before it becomes a Reading."""

    obis: str
    mantissa: int
    exponent: int
    unit: str


class PushParser:
    """Parses Data-Notification APDUs with gurux. One per thread (gurux objects are not
    thread-safe); creating it imports gurux."""

    def __init__(self, block_key: bytes | None = None, auth_key: bytes | None = None,
                 default_tz: str = "UTC") -> None:
        load_gurux()
        from gurux_dlms import GXDLMSClient
        from gurux_dlms.enums import InterfaceType
        from gurux_dlms import GXByteBuffer, GXReplyData
        from gurux_dlms.GXDLMS import GXDLMS
        self._client = GXDLMSClient(True, 16, 1, interfaceType=InterfaceType.PDU)
        self._reply_cls, self._buffer_cls = GXReplyData, GXByteBuffer
        self._handle = GXDLMS.handleDataNotification
        self.block_key = block_key
        self.auth_key = auth_key
        self.tz = ZoneInfo(default_tz)

    def parse(self, apdu: bytes) -> Notification:
        """Plain or general-glo-ciphered APDU -> Notification.

        Raises DlmsError (DecryptError for a wrong key or a tampered frame).
        """
        apdu = bytes(apdu)
        st = ic = None
        ciphered = apdu[:1] == bytes([cipher.GENERAL_GLO_CIPHERING])
        if ciphered:
            g = cipher.parse_glo(apdu)
            if self.block_key is None:
                raise NoKey(g.system_title)
            apdu = cipher.decrypt(g, self.block_key, self.auth_key)
            st, ic = g.system_title, g.invocation_counter
        if not apdu or apdu[0] != DATA_NOTIFICATION:
            raise DlmsError(f"not a Data-Notification (APDU tag "
                            f"{apdu[:1].hex().upper() or 'none'})")
        apdu = _fix_tagged_datetime(apdu)
        reply = self._reply_cls()
        reply.data = self._buffer_cls(apdu)
        reply.data.position = 1  # after the Data-Notification tag
        try:
            # gurux's own Data-Notification handler, called directly: the same parse
            # GXDLMSClient.getData ends in, without its framing/dispatch overhead.
            self._handle(self._client.settings, reply)
        except Exception as exc:  # noqa: BLE001 - gurux raises bare ValueError/IndexError...
            raise DlmsError(f"malformed Data-Notification: {exc or type(exc).__name__}") from None
        notify = reply
        invoke_id = int.from_bytes(apdu[1:5], "big")  # long-invoke-id-and-priority
        return Notification(invoke_id, self._time_ms(notify.time), notify.value,
                            ciphered, st, ic)

    def _time_ms(self, t: Any) -> int | None:
        if t is None or not isinstance(getattr(t, "value", None), dt.datetime):
            return None
        v = t.value
        if v.tzinfo is None:  # deviation not specified: the meter's local time
            v = v.replace(tzinfo=self.tz)
        return int(v.timestamp() * 1000)


class NoKey(DlmsError):
    """A ciphered notification arrived and no key is configured."""

    def __init__(self, system_title: bytes) -> None:
        super().__init__(f"ciphered notification from system title {system_title.hex().upper()} "
                         "and no key configured")
        self.system_title = system_title


def _fix_tagged_datetime(apdu: bytes) -> bytes:
    """Kaifa sends the optional date-time as a tagged octet-string (09 0C ...) instead of
    the plain ``0C ...`` the Green Book defines; untag it so gurux can parse it."""
    if len(apdu) > 7 and apdu[5] == 0x09 and apdu[6] == 0x0C:
        return apdu[:5] + apdu[6:]
    return apdu


def map_body(body: Any, scalers: Mapping[str, int] | None = None,
             positional: Sequence[str] = ()) -> list[Value]:
    """Numeric OBIS values of a notification body, scaled exactly."""
    scalers = dict(scalers or {})
    items = list(body) if isinstance(body, (list, tuple)) else [body]
    out: list[Value] = []
    list_scalers: dict[tuple[int, int], int] = {}
    if items and isinstance(items[0], str) and items[0] in LIST_SCALERS:
        list_scalers = LIST_SCALERS[items[0]]
    if not any(_is_obis(x) or _has_obis(x) for x in items):
        for obis, value in zip(positional, items):  # Kaifa: values by position
            _append(out, obis_bytes(obis), value, None, scalers, list_scalers)
        return out
    i = 0
    while i < len(items):
        it = items[i]
        if _has_obis(it):  # structure{obis, value[, structure{scaler, unit}]}
            s = list(it)
            su = s[2] if len(s) > 2 and isinstance(s[2], (list, tuple)) and len(s[2]) == 2 else None
            _append(out, bytes(s[0]), s[1], su, scalers, list_scalers)
            i += 1
        elif _is_obis(it) and i + 1 < len(items):
            nxt = items[i + 1]
            su = None
            step = 2
            if i + 2 < len(items) and isinstance(items[i + 2], (list, tuple)) \
                    and len(items[i + 2]) == 2 and not _is_obis(items[i + 2]):
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


def _append(out: list[Value], obis: bytes, value: Any, scaler_unit: Any,
            scalers: Mapping[str, int], list_scalers: Mapping[tuple[int, int], int]) -> None:
    if isinstance(value, (str, bytes, bytearray, list, tuple)) or value is None:
        return  # identifiers, date-times, nested data: not register values
    text = obis_text(obis)
    if scaler_unit is not None:
        scaler, unit = int(scaler_unit[0]), UNITS.get(int(scaler_unit[1]), "")
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


@dataclass(frozen=True, slots=True)
class PushError:
    """A frame that could not become a notification; ``kind`` is the event kind."""

    kind: str   # meter.decrypt_failed, meter.no_key, meter.read_failed
    reason: str
    source: str  # HDLC source address or system title


class PushDecoder:
    """HDLC byte stream in, :class:`Notification` or :class:`PushError` out (sans-I/O)."""

    def __init__(self, parser: PushParser) -> None:
        self.parser = parser
        self.frames = hdlc.HdlcDecoder()
        self.reassembler = hdlc.Reassembler()
        self.stats = PushStats()
        self.last_source = ""

    def receive_data(self, data: bytes) -> None:
        self.frames.receive_data(data)

    def next_event(self) -> Union[Notification, PushError, Any]:
        while True:
            frame = self.frames.next_event()
            if frame is hdlc.NEED_DATA:
                return hdlc.NEED_DATA
            self.last_source = str(frame.src)
            try:
                apdu = self.reassembler.add(frame)
            except hdlc.HdlcError as exc:
                self.stats.malformed += 1
                return PushError("meter.read_failed", str(exc), self.last_source)
            if apdu is None:
                continue
            return self.parse_apdu(apdu)

    def parse_apdu(self, apdu: bytes) -> Union[Notification, PushError]:
        try:
            n = self.parser.parse(apdu)
        except NoKey as exc:
            self.stats.no_key += 1
            return PushError("meter.no_key", str(exc), exc.system_title.hex().upper())
        except cipher.DecryptError as exc:
            self.stats.decrypt_failures += 1
            return PushError("meter.decrypt_failed", str(exc), self.last_source)
        except DlmsError as exc:
            self.stats.malformed += 1
            return PushError("meter.read_failed", str(exc), self.last_source)
        self.stats.notifications += 1
        return n


@dataclass
class PushMapping:
    """Per-meter mapping options: scaler overrides and, for lists without OBIS codes,
    the OBIS code of each position."""

    scalers: dict[str, int] = field(default_factory=dict)
    positional: tuple[str, ...] = ()

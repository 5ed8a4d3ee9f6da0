"""Pushed DLMS Data-Notifications (HAN ports: Norway, Sweden, Austria, Luxembourg) ->
exact Readings.

Pipeline: HDLC stream (our length-framed decoder) -> reassembled APDU (HDLC segments,
then General-Block-Transfer blocks) -> if general-glo-ciphering, decrypt with
``cryptography`` -> the Data-Notification (invoke id, date-time, body) parsed by our strict
A-XDR walker (:mod:`.axdr`), or a P1 text telegram (Luxembourg, parts of Austria) parsed by
the IEC 62056-21 codec -> OBIS values mapped by :mod:`.mapping`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Final, Union
from zoneinfo import ZoneInfo

from .. import hdlc
from . import DecryptError, DlmsError, axdr, cipher
from .gbt import GbtAssembler, GbtError
from .mbus_link import MbusLinkDecoder, MbusLinkError
from .mapping import (LIST_SCALERS, PushMapping, Value, clock_in_body,  # noqa: F401
                      map_body, notification_values, p1_values, to_readings)
from .values import datetime_ms
from ... import events as kinds

DATA_NOTIFICATION: Final = 0x0F
SOURCES_MAX: Final = 64  # GBT assemblies kept per HDLC source address at most
FRAMINGS: Final = ("hdlc", "apdu", "mbus")  # HAN port link layers PushDecoder reads


@dataclass(frozen=True, slots=True)
class Notification:
    """A parsed Data-Notification (``body``: A-XDR values, see :mod:`.axdr`), or a P1 text
    telegram that came general-glo-ciphered (``telegram``: a :class:`~gateway.protocols.p1.P1Telegram`)."""

    invoke_id: int
    time_ms: int | None
    body: Any
    ciphered: bool = False
    system_title: bytes | None = None
    invocation_counter: int | None = None
    telegram: Any = None


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


def parse_p1(text: bytes) -> Any:
    """A P1 telegram that came inside general-glo-ciphering, read by the one P1 parser
    (:func:`gateway.protocols.p1.parse_p1`: gas and peak capture times, CRC leniency)."""
    from .. import p1
    from ..iec62056_21 import Iec62056Error
    try:
        return p1.parse_p1(text)
    except Iec62056Error as exc:
        raise DlmsError(f"P1 telegram in the ciphered APDU: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - another codec's bug must not escape as ours
        raise DlmsError(f"P1 telegram in the ciphered APDU not readable: "
                        f"{type(exc).__name__}: {exc}") from None


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
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, not {framing!r}")
        self.route = route
        self.framing = framing
        self.splitter = ApduSplitter()
        self.mbus = MbusLinkDecoder()
        self.frames = hdlc.HdlcDecoder()
        self.reassembler = hdlc.Reassembler()
        self.gbt: dict[str, GbtAssembler] = {}
        self._pending: list[Union[Pushed, PushError]] = []
        self.stats = PushStats()
        self.last_source = ""

    def receive_data(self, data: bytes) -> None:
        {"apdu": self.splitter, "mbus": self.mbus}.get(self.framing, self.frames) \
            .receive_data(data)

    def reset(self) -> None:
        """Drop buffered bytes and unfinished APDUs (after the caller met an error)."""
        self.frames.clear()
        self.splitter.clear()
        self.mbus.clear()
        self._pending.clear()
        self.reassembler = hdlc.Reassembler()
        self.gbt.clear()

    def next_event(self) -> Union[Pushed, PushError, Any]:
        if self.framing == "apdu":
            apdu = self.splitter.next_event()
            return apdu if apdu is hdlc.NEED_DATA else self.parse_apdu(apdu)
        if self.framing == "mbus":
            got = self.mbus.next_event()
            if isinstance(got, MbusLinkError):
                self.stats.frame_errors += 1
                return self._error(kinds.FRAME_ERROR, str(got), None, b"")
            return got if got is hdlc.NEED_DATA else self.parse_apdu(got)
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
                return self._error(kinds.FRAME_ERROR, str(exc), frame.src, frame.info)
            lost = None
            if self.reassembler.dropped != dropped:  # a segment of the previous APDU lost
                self.stats.frame_errors += 1
                lost = self._error(kinds.FRAME_ERROR, "HDLC segment lost: the segmented "
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
            return self._error(kinds.FRAME_ERROR, str(exc), src, apdu)
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
            return PushError(kinds.NO_KEY, str(exc), exc.system_title.hex().upper(), route,
                             _hex(apdu))
        except DecryptError as exc:
            self.stats.decrypt_failures += 1
            return PushError(kinds.DECRYPT_FAILED, str(exc), source, route, _hex(apdu))
        except DlmsError as exc:
            self.stats.malformed += 1
            return PushError(kinds.DECODE_ERROR, str(exc), source, route, _hex(apdu))
        except Exception as exc:  # noqa: BLE001 - a codec bug costs one frame, not the bus
            self.stats.malformed += 1
            return PushError(kinds.DECODE_ERROR, f"{type(exc).__name__}: {exc}", source,
                             route, _hex(apdu))
        self.stats.notifications += 1
        return Pushed(n, route, source, apdu)

    def _error(self, kind: str, reason: str, src: hdlc.Address | None,
               raw: bytes) -> PushError:
        route = None
        try:
            route = self.route(None, src)[0]
        except Exception:  # noqa: BLE001 - routing is the caller's; the error is reported anyway
            pass
        return PushError(kind, reason, str(src) if src is not None else self.framing, route,
                         _hex(raw))


def _hex(raw: bytes) -> str:
    h = bytes(raw).hex().upper()
    return h if len(h) <= HEX_MAX else h[:HEX_MAX] + "..."

"""A DLMS/COSEM client session over HDLC: gurux builds every request and parses every
reply; this wrapper only sequences them and turns gurux's values into exact ones.

It does no I/O itself: a :class:`Transport` (the driver's serial port) sends one HDLC frame
and returns the next complete HDLC frame from the addressed meter. The wrapper never
holds a clock either: times are passed in.

Security (association, LN referencing):

* ``none``  - public client (SAP 16), no authentication;
* ``low``   - LLS, a password in the AARQ;
* ``hls``   - HLS-GMAC with security suite 0: every APDU general-glo/glo-ciphered with
  AES-GCM-128 (block cipher key, authentication key, client system title) and the
  invocation (frame) counter, which the caller persists across restarts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from . import DlmsError, load_gurux
from .values import UNITS, datetime_ms, gurux_ln, scaled


class Transport(Protocol):
    def send(self, frame: bytes) -> None: ...

    def receive(self) -> bytes:
        """The next complete HDLC frame (bytes, flags included); raises TimeoutError."""
        ...


class AssociationRefused(DlmsError):
    """The meter refused the association: wrong password or keys, or wrong client SAP."""


class ReadError(DlmsError):
    """The meter answered a GET with a data-access-result error."""


@dataclass(frozen=True)
class SecurityConfig:
    level: str = "none"                 # none | low | hls
    password: str | None = None
    block_key: bytes | None = None
    auth_key: bytes | None = None
    system_title: bytes = b"GATEWAY1"


@dataclass(frozen=True)
class ScaledValue:
    mantissa: int
    exponent: int
    unit: str


class DlmsSession:
    """One association with one meter. Not thread-safe (one per driver thread)."""

    def __init__(self, transport: Transport, *, logical: int = 1, physical: int = 17,
                 client_address: int = 16, address_size: int = 2,
                 security: SecurityConfig = SecurityConfig(), invocation_counter: int = 0,
                 default_tz: str = "UTC", max_info: int = 128) -> None:
        load_gurux()
        from gurux_dlms import GXDLMSClient
        from gurux_dlms.enums import Authentication, InterfaceType, Security
        from gurux_dlms.secure import GXDLMSSecureClient
        self.t = transport
        self.tz = default_tz
        auth = {"none": Authentication.NONE, "low": Authentication.LOW,
                "hls": Authentication.HIGH_GMAC}[security.level]
        server = GXDLMSClient.getServerAddress(logical, physical, address_size)
        password = security.password.encode() if security.password else None
        c = GXDLMSSecureClient(True, client_address, server, auth, password, InterfaceType.HDLC)
        c.serverAddressSize = address_size
        c.hdlcSettings.maxInfoRX = max_info
        c.hdlcSettings.maxInfoTX = max_info
        if security.level == "hls":
            if not (security.block_key and security.auth_key):
                raise ValueError("HLS-GMAC needs a block cipher key and an authentication key")
            ci = c.ciphering
            ci.security = Security.AUTHENTICATION_ENCRYPTION
            ci.systemTitle = bytearray(security.system_title)
            ci.blockCipherKey = bytearray(security.block_key)
            ci.authenticationKey = bytearray(security.auth_key)
            ci.invocationCounter = invocation_counter
        self.client = c
        self.security = security
        self._scalers: dict[str, tuple[int, str]] = {}
        self._objects: dict[tuple[int, str], Any] = {}
        self.associated = False

    # ------------------------------------------------------------------ plumbing
    @property
    def invocation_counter(self) -> int:
        """The next frame counter this client will use (persist it before reuse)."""
        return int(self.client.ciphering.invocationCounter)

    def _exchange(self, frame: Any, reply: Any) -> None:
        from gurux_dlms import GXByteBuffer, GXReplyData
        if frame is not None:
            self.t.send(bytes(frame))
        notify = GXReplyData()
        buf = GXByteBuffer()
        for _ in range(64):  # bounded: a reply is one frame; garbage frames are skipped
            buf.set(self.t.receive())
            if self.client.getData(buf, reply, notify):
                break
        else:
            raise DlmsError("no valid reply frame among 64 received")
        if reply.error:
            raise ReadError(f"meter returned data-access-result {reply.error}"
                            f" ({_access_error(reply.error)})")

    def _transact(self, frames: Any) -> Any:
        from gurux_dlms import GXReplyData
        reply = GXReplyData()
        if frames is None:
            return reply
        if isinstance(frames, (bytes, bytearray)):
            frames = [frames]
        for frame in frames:
            reply.clear()
            self._exchange(frame, reply)
            while reply.isMoreData():
                self._exchange(None if reply.isStreaming() else self.client.receiverReady(reply),
                               reply)
        return reply

    def _object(self, class_id: int, obis: str) -> Any:
        key = (class_id, obis)
        obj = self._objects.get(key)
        if obj is None:
            from gurux_dlms import GXDLMSClient
            from gurux_dlms.enums import ObjectType
            obj = GXDLMSClient.createObject(ObjectType(class_id))
            obj.logicalName = gurux_ln(obis)
            self._objects[key] = obj
        return obj

    # ------------------------------------------------------------------ association
    def connect(self) -> None:
        """SNRM/UA, AARQ/AARE and, for HLS, the reply_to_HLS_authentication step."""
        from gurux_dlms import GXDLMSException
        from gurux_dlms.enums import Authentication
        self.associated = False
        c = self.client
        reply = self._transact(c.snrmRequest())
        c.parseUAResponse(reply.data)
        try:
            reply = self._transact(c.aarqRequest())
            c.parseAareResponse(reply.data)
            if c.authentication > Authentication.LOW:
                reply = self._transact(c.getApplicationAssociationRequest())
                c.parseApplicationAssociationResponse(reply.data)
        except GXDLMSException as exc:
            raise AssociationRefused(f"association refused: {_gx_reason(exc)}") from None
        except (ValueError, ReadError) as exc:
            if self.security.level != "none":
                raise AssociationRefused(f"association failed ({exc}); wrong keys or password?") \
                    from None
            raise
        self.associated = True

    def close(self) -> None:
        """Release and disconnect; best effort (a meter that went away is fine)."""
        # Best effort: gurux raises assorted exception types on a half-open link.
        try:
            if self.associated and self.security.level == "hls":
                self._transact(self.client.releaseRequest())
        except Exception:  # noqa: BLE001
            pass
        try:
            self._transact(self.client.disconnectRequest())
        except Exception:  # noqa: BLE001
            pass
        self.associated = False

    # ------------------------------------------------------------------ reads
    def get(self, class_id: int, obis: str, attribute: int) -> Any:
        """Raw value of one attribute (gurux's parse, no unit conversion)."""
        obj = self._object(class_id, obis)
        return self._transact(self.client.read(obj, attribute)).value

    def read_register(self, obis: str, class_id: int = 3) -> tuple[ScaledValue, int | None]:
        """A Register (3) or Extended Register (4) value with its scaler and unit applied
        exactly; for an extended register also its capture time (UTC ms)."""
        if obis not in self._scalers:
            self._scalers[obis] = scaler_unit(self.get(class_id, obis, 3), obis)
        scaler, unit = self._scalers[obis]
        raw = self.get(class_id, obis, 2)
        ex = scaled(raw, scaler)
        if ex is None:
            raise DlmsError(f"{obis}: value {raw!r} is not a number")
        captured = None
        if class_id == 4:
            captured = datetime_ms(self.get(4, obis, 5), self.tz)
        return ScaledValue(ex[0], ex[1], unit), captured

    def read_clock(self, obis: str = "0-0:1.0.0") -> int | None:
        return datetime_ms(self.get(8, obis, 2), self.tz)

    def set_clock(self, utc_ms: int, obis: str = "0-0:1.0.0") -> None:
        from gurux_dlms import GXDateTime
        clock = self._object(8, obis)
        clock.time = GXDateTime(dt.datetime.fromtimestamp(utc_ms / 1000, dt.timezone.utc))
        self._transact(self.client.write(clock, 2))

    def profile_columns(self, obis: str) -> list[tuple[int, str, int]]:
        """(class id, OBIS, attribute) of each column of a profile generic."""
        pg = self._object(7, obis)
        if not pg.captureObjects:
            value = self._transact(self.client.read(pg, 3)).value
            self.client.updateValue(pg, 3, value)
        from .values import obis_text
        return [(int(o.objectType), obis_text(o.logicalName), int(a.attributeIndex))
                for o, a in pg.captureObjects]

    def column_scalers(self, obis: str) -> list[tuple[int, str] | None]:
        """Scaler and unit of each register column of a profile (None for other columns)."""
        out: list[tuple[int, str] | None] = []
        for class_id, col, attr in self.profile_columns(obis):
            if class_id in (3, 4) and attr == 2:
                if col not in self._scalers:
                    self._scalers[col] = scaler_unit(self.get(class_id, col, 3), col)
                out.append(self._scalers[col])
            else:
                out.append(None)
        return out

    def read_profile_range(self, obis: str, start_ms: int, end_ms: int) -> list[list[Any]]:
        """Rows of a profile generic whose first column (the clock) is in [start, end]."""
        pg = self._object(7, obis)
        self.profile_columns(obis)
        start = dt.datetime.fromtimestamp(start_ms // 1000, dt.timezone.utc)
        end = dt.datetime.fromtimestamp(end_ms // 1000, dt.timezone.utc)
        value = self._transact(self.client.readRowsByRange(pg, start, end)).value
        return [list(r) for r in (value or [])]


def scaler_unit(su: Any, obis: str) -> tuple[int, str]:
    """gurux's scaler_unit value -> (scaler, unit symbol); DlmsError unless it is a
    structure{integer, enum} (a null, a bit-string or nested data is the meter's fault)."""
    if not isinstance(su, (list, tuple)) or len(su) != 2:
        raise DlmsError(f"{obis}: scaler_unit is not a 2-element structure: {su!r}"[:200])
    try:
        scaler, unit = int(su[0]), int(su[1])
    except (TypeError, ValueError):
        raise DlmsError(f"{obis}: scaler_unit is not {{integer, enum}}: {su!r}"[:200]) from None
    if not -128 <= scaler <= 127:
        raise DlmsError(f"{obis}: scaler {scaler} out of the integer range")
    return scaler, UNITS.get(unit, "")


def _access_error(code: int) -> str:
    try:
        from gurux_dlms.enums import ErrorCode
        return ErrorCode(code).name.lower()
    except (ValueError, ImportError):
        return "unknown"


def _gx_reason(exc: Any) -> str:
    diag = getattr(exc, "diagnostic", None)
    res = getattr(exc, "result", None)
    parts = []
    if res is not None:
        parts.append(f"result {getattr(res, 'name', res)}")
    if diag is not None:
        parts.append(f"diagnostic {getattr(diag, 'name', diag)}")
    return ", ".join(parts) or str(exc)

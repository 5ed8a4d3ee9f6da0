"""Simulated DLMS/COSEM meters on one pseudo-terminal, built on gurux's own server classes.

    python -m tools.sim.dlms --meters 3 [--security hls] [--drop 0.1] [--delay-s 0.2]

Every meter is a :class:`gurux_dlms.secure.GXDLMSSecureServer` with its own HDLC server
address (logical 1, physical 17, 18, ...) on one shared pty, like meters on an RS-485 bus:
frames are split by their HDLC length and handed to the addressed meter only; the others
stay silent. Each meter serves:

* clock ``0-0:1.0.0`` (with an optional drift, and settable),
* registers ``1-0:1.8.0`` / ``1-0:2.8.0`` (Wh, scaler 0), ``1-0:32.7.0`` (V, scaler -1),
* extended register ``1-0:1.6.0`` (max demand, W, with capture time),
* load profile ``1-0:99.1.0`` (clock, 1-0:1.8.0) whose rows appear as wall-clock time passes,
  served by range (selector 1),
* event log ``0-0:99.98.0`` (clock, event code).

Values are pure functions of time, so a test knows exactly which profile rows exist.
Security per meter: ``none``, ``low`` (password) or ``hls`` (HLS-GMAC, suite 0).
Faults: ``drop`` (probability of ignoring a request), ``delay_s`` (before each reply),
``wrong_key`` (the meter's keys differ from the ones the client is given), ``silent``.

gurux-dlms 1.0.203's server side needs a few workarounds; each is marked ``gurux bug``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.protocols.hdlc import HdlcDecoder
from tools.sim.pty import PtySimulator, serve_forever

log = logging.getLogger("sim.dlms")

CLOCK = "0.0.1.0.0.255"
IMPORT = "1.0.1.8.0.255"
EXPORT = "1.0.2.8.0.255"
VOLTAGE = "1.0.32.7.0.255"
MAX_DEMAND = "1.0.1.6.0.255"
LOAD_PROFILE = "1.0.99.1.0.255"
EVENT_LOG = "0.0.99.98.0.255"
EVENT_CODE = "0.0.96.11.0.255"

DEFAULT_BLOCK_KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
DEFAULT_AUTH_KEY = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
DEFAULT_CLIENT_TITLE = b"GATEWAY1"


@dataclass
class MeterSpec:
    """One simulated meter. Energy(t) = base_wh + load_w * t / 3600 (t in Unix seconds
    since ``epoch_s``); a profile row exists for every ``period_s`` boundary from
    ``history_s`` before start-up on."""

    physical: int
    logical: int = 1
    security: str = "none"          # none | low | hls
    password: str = "12345678"
    block_key: bytes = DEFAULT_BLOCK_KEY
    auth_key: bytes = DEFAULT_AUTH_KEY
    system_title: bytes = b"SIMMETER"
    base_wh: int = 1_000_000
    load_w: int = 1200
    period_s: int = 900
    history_s: int = 86400
    drift_s: float = 0.0
    drop: float = 0.0
    delay_s: float = 0.0
    wrong_key: bool = False
    silent: bool = False
    epoch_s: int = 1_700_000_000
    started_s: float = field(default_factory=time.time)

    def energy_wh(self, t: float) -> int:
        return self.base_wh + int(self.load_w * (t - self.epoch_s) // 3600)

    def first_row_s(self) -> int:
        first = int(self.started_s - self.history_s)
        return first - first % self.period_s + self.period_s

    def rows_between(self, start_s: float, end_s: float) -> list[int]:
        """Timestamps (s) of the profile rows in [start, end] that exist now."""
        lo = max(self.first_row_s(), int(start_s))
        hi = min(int(time.time()), int(end_s))
        first = lo + (-lo) % self.period_s
        return list(range(first, hi + 1, self.period_s))

    def events_between(self, start_s: float, end_s: float) -> list[tuple[int, int]]:
        """Events every 6 h (code 1 = power down, 2 = power up alternately)."""
        p = 6 * 3600
        lo = max(self.first_row_s(), int(start_s))
        hi = min(int(time.time()), int(end_s))
        first = lo + (-lo) % p
        return [(t, 1 + (t // p) % 2) for t in range(first, hi + 1, p)]


def _gurux():
    from gateway.protocols.dlms import load_gurux
    return load_gurux()


def _utc(t: float):  # -> GXDateTime
    from gurux_dlms import GXDateTime
    return GXDateTime(dt.datetime.fromtimestamp(int(t), dt.timezone.utc))


def make_server(spec: MeterSpec):  # -> a GXDLMSSecureServer subclass instance
    g = _gurux()
    from gurux_dlms import GXDLMSServer, GXServerReply, GXDLMSConnectionEventArgs  # noqa: F401
    from gurux_dlms.enums import (AccessMode, Authentication, DataType, ErrorCode,
                                  InterfaceType, Security, SourceDiagnostic, Unit)
    from gurux_dlms.objects import (GXDLMSAssociationLogicalName, GXDLMSCaptureObject,
                                    GXDLMSClock, GXDLMSData, GXDLMSExtendedRegister,
                                    GXDLMSHdlcSetup, GXDLMSProfileGeneric, GXDLMSRegister)
    from gurux_dlms.secure import GXDLMSSecureServer
    from gurux_dlms.ConnectionState import ConnectionState
    from gurux_dlms.GXDLMS import GXDLMS
    from gurux_dlms.GXHdlcSettings import GXHdlcSettings
    from gurux_dlms._HDLCInfo import _HDLCInfo
    from gurux_dlms.GXByteBuffer import GXByteBuffer
    from gurux_dlms.internal._GXCommon import _GXCommon
    from gurux_dlms.internal._GXDataInfo import _GXDataInfo
    del g
    from gurux_dlms.ValueEventArgs import ValueEventArgs
    if not hasattr(ValueEventArgs, "__iter__"):
        # gurux bug: SET normal does list(e) on a single ValueEventArgs (TypeError, reported
        # to the client as hardware-fault); let it iterate as a one-element list.
        ValueEventArgs.__iter__ = lambda self: iter([self])  # type: ignore[attr-defined]
    import sys as _sys
    _gxdlms = _sys.modules["gurux_dlms.GXDLMS"]
    if not getattr(_gxdlms.AesGcmParameter, "sim_fixed", False):
        # gurux bug: the server's handleGloDedRequest builds AesGcmParameter(systemTitle,
        # key, authKey), omitting the leading tag, so every key shifts one place and the
        # meter cannot decrypt any ciphered request. Accept that call shape too.
        _orig = _gxdlms.AesGcmParameter

        def _aes(tag: Any = 0, *rest: Any) -> Any:
            if isinstance(tag, (bytes, bytearray)) and len(rest) == 2:
                return _orig(0, tag, *rest)
            return _orig(tag, *rest)
        _aes.sim_fixed = True  # type: ignore[attr-defined]
        _gxdlms.AesGcmParameter = _aes
    from gurux_dlms.GXDLMSSettings import GXDLMSSettings
    if not hasattr(GXDLMSSettings, "setConnected"):  # gurux bug: called, undefined
        GXDLMSSettings.setConnected = lambda self, v: setattr(self, "connected", v)  # type: ignore
    from gurux_dlms.GXDLMSLNParameters import GXDLMSLNParameters
    if not hasattr(GXDLMSLNParameters, "isMultipleBlocks"):
        # gurux bug: SET normal calls accessors GXDLMSLNParameters does not define.
        GXDLMSLNParameters.isMultipleBlocks = lambda self: self.multipleBlocks  # type: ignore
        GXDLMSLNParameters.setStatus = lambda self, v: setattr(self, "status", v)  # type: ignore

    class AareBuffer(GXByteBuffer):
        """gurux bug: generateAARE (HLS) writes the responding-AP-title as A4 len 04 <nothing>
        title, calling setUInt8() without its argument and leaving the outer length 2 short.
        The missing call is the inner length: write it and fix the outer one."""

        def setUInt8(self, item: Any = None, index: Any = None) -> None:
            if item is None and index is None:
                outer_at = self.size - 2
                title_len = self.getUInt8(outer_at)
                super().setUInt8(title_len + 2, outer_at)
                item = title_len
            super().setUInt8(item, index)

    class Association(GXDLMSAssociationLogicalName):
        """gurux bug: reply_to_HLS_authentication does int() of the client's bytes. For
        HLS-GMAC, check f(StoC) = SC | IC | GMAC(SC | AK | StoC) and answer with f(CtoS)."""

        def invoke(self, settings: Any, e: Any) -> Any:
            if e.index != 1 or settings.authentication != Authentication.HIGH_GMAC:
                return super().invoke(settings, e)
            from gurux_dlms.GXSecure import GXSecure
            from gurux_dlms.objects.enums import AssociationStatus
            got = bytes(e.parameters or b"")
            ic = int.from_bytes(got[1:5], "big") if len(got) >= 5 else 0
            want = bytes(GXSecure.secure(settings, settings.cipher, ic, settings.stoCChallenge,
                                         settings.sourceSystemTitle))
            if got != want:
                self.associationStatus = AssociationStatus.NON_ASSOCIATED
                e.error = ErrorCode.READ_WRITE_DENIED
                return None
            self.associationStatus = AssociationStatus.ASSOCIATED
            return GXSecure.secure(settings, settings.cipher, settings.cipher.invocationCounter,
                                   settings.getCtoSChallenge(), settings.cipher.systemTitle)

        # gurux bug: handleMethodRequest calls these accessors, which do not exist.
        def getAssociationStatus(self) -> Any:
            return self.associationStatus

    class Reply(GXServerReply):
        # gurux bug: handleRequest() calls setters GXServerReply does not define.
        def setReply(self, value: Any) -> None:
            self.reply = value

        def setCount(self, value: Any) -> None:
            self.count = value

        def getConnectionInfo(self) -> Any:
            return self.connectionInfo

    class SimMeter(GXDLMSSecureServer):
        def __init__(self) -> None:
            assoc = Association()
            if spec.security == "low":
                assoc.authenticationMechanismName.mechanismId = Authentication.LOW
                assoc.secret = spec.password.encode()
            elif spec.security == "hls":
                assoc.authenticationMechanismName.mechanismId = Authentication.HIGH_GMAC
            super().__init__(assoc, InterfaceType.HDLC)
            self.spec = spec
            self.replyData = AareBuffer()
            self.hdlc = GXDLMSHdlcSetup()
            # gurux bug: the inactivity check does int() of a timedelta; 0 disables it.
            self.hdlc.inactivityTimeout = 0
            self.hdlc.maximumInfoLengthTransmit = 128
            self.hdlc.maximumInfoLengthReceive = 128
            # gurux bug: GXDLMSSecureServer stores its GXCiphering as settings.ciphering, but
            # the APDU code reads settings.cipher (None): ciphered AARQs are always rejected.
            self.settings.cipher = self.settings.ciphering
            c = self.getCiphering()
            c.systemTitle = spec.system_title
            if spec.security == "hls":
                c.security = Security.AUTHENTICATION_ENCRYPTION
                flip = (lambda k: bytes(b ^ 0x5A for b in k)) if spec.wrong_key else (lambda k: k)
                c.blockCipherKey = flip(spec.block_key)
                c.authenticationKey = flip(spec.auth_key)
            self.clock = GXDLMSClock(CLOCK)
            self.clock.timeZone = 0
            self.clock_offset_s = spec.drift_s
            self.clock_sets = 0
            self.regs = {
                IMPORT: self._register(IMPORT, DataType.UINT32, 0, Unit.ACTIVE_ENERGY),
                EXPORT: self._register(EXPORT, DataType.UINT32, 0, Unit.ACTIVE_ENERGY),
                VOLTAGE: self._register(VOLTAGE, DataType.UINT16, -1, Unit.VOLTAGE),
            }
            self.demand = GXDLMSExtendedRegister(MAX_DEMAND)
            self.demand.setDataType(2, DataType.UINT32)
            self.demand.scaler = 10  # multiplier 10**1: exercises a positive scaler
            self.demand.unit = Unit.ACTIVE_POWER
            self.demand.value = 4321
            self.demand.captureTime = _utc(spec.started_s - 3600)
            self.demand.status = 0
            self.profile = GXDLMSProfileGeneric(LOAD_PROFILE)
            self.profile.capturePeriod = spec.period_s
            self.profile.addCaptureObject(self.clock, 2, 0)
            self.profile.addCaptureObject(self.regs[IMPORT], 2, 0)
            self.event_code = GXDLMSData(EVENT_CODE)
            self.event_code.setDataType(2, DataType.UINT8)
            self.event_code.value = 0
            self.events = GXDLMSProfileGeneric(EVENT_LOG)
            self.events.addCaptureObject(self.clock, 2, 0)
            self.events.addCaptureObject(self.event_code, 2, 0)
            self.requests = 0
            self.profile_rows_served = 0
            objs = [self.clock, *self.regs.values(), self.demand, self.profile,
                    self.event_code, self.events]
            for o in objs:
                self.items.append(o)
            self.items.append(assoc)
            # gurux bug: initialize() appends the whole collection as one object to an
            # association with an empty object list, then fails; fill it ourselves.
            for o in objs:
                assoc.objectList.append(o)
            assoc.objectList.append(assoc)
            self.initialize()

        @staticmethod
        def _register(ln: str, dtype: Any, scaler: int, unit: Any) -> Any:
            r = GXDLMSRegister(ln)
            r.setDataType(2, dtype)
            r.scaler = 10 ** scaler  # gurux keeps the multiplier, sends its log10
            r.unit = unit
            r.value = 0
            return r

        # ------------------------------------------------------------ values
        def now(self) -> float:
            return time.time() + self.clock_offset_s

        def refresh(self) -> None:
            t = time.time()
            self.regs[IMPORT].value = spec.energy_wh(t)
            self.regs[EXPORT].value = spec.energy_wh(t) // 9
            self.regs[VOLTAGE].value = 2301 + int(t) % 7
            self.clock.time = _utc(self.now())

        def _encode_rows(self, pg: Any, e: Any, rows: list[list[Any]]) -> bytes:
            e.rowEndIndex = 0
            self.settings.index = 0
            return bytes(pg.getData(self.settings, e, rows, None))

        def _range(self, e: Any) -> tuple[float, float]:
            """(start, end) Unix seconds of a range selector (selector 1)."""
            arr = e.parameters
            out = []
            for raw in (arr[1], arr[2]):
                info = _GXDataInfo()
                info.type_ = DataType.DATETIME
                v = _GXCommon.getData(self.settings, GXByteBuffer(raw), info)
                out.append(v.value.timestamp())
            return out[0], out[1]

        # ------------------------------------------------------------ server hooks
        def isTarget(self, serverAddress: int, clientAddress: int) -> bool:
            return True  # the bus routes frames by HDLC address before they get here

        def onValidateAuthentication(self, authentication: Any, password: Any) -> Any:
            if spec.security == "none":
                return SourceDiagnostic.NONE
            if spec.security == "low":
                if authentication == Authentication.LOW and bytes(password or b"") == \
                        spec.password.encode():
                    return SourceDiagnostic.NONE
                return SourceDiagnostic.AUTHENTICATION_FAILURE
            if authentication == Authentication.HIGH_GMAC:
                return SourceDiagnostic.NONE
            return SourceDiagnostic.AUTHENTICATION_MECHANISM_NAME_REQUIRED

        def onGetAttributeAccess(self, e: Any) -> Any:
            # gurux calls this before every GET with the event args: the one hook where a
            # value can be refreshed or, for a profile by range, served by us.
            self.refresh()
            pg = e.target
            if isinstance(pg, GXDLMSProfileGeneric) and e.index == 2:
                start, end = (0.0, time.time())
                if e.selector == 1 and e.parameters:
                    start, end = self._range(e)
                if pg is self.profile:
                    rows = [[_utc(t), spec.energy_wh(t)] for t in spec.rows_between(start, end)]
                    self.profile_rows_served += len(rows)
                else:
                    rows = [[_utc(t), code] for t, code in spec.events_between(start, end)]
                # gurux bug: its own range filter compares a datetime with 0.
                e.value = self._encode_rows(pg, e, rows)
                e.byteArray = True
                e.handled = True
            return AccessMode.READ_WRITE

        def onGetMethodAccess(self, e: Any) -> Any:
            from gurux_dlms.enums import MethodAccessMode
            return MethodAccessMode.ACCESS

        def onPreWrite(self, args: Any) -> None:
            pass

        def onPostWrite(self, args: Any) -> None:
            for e in args:
                if e.target is self.clock and e.index == 2:
                    self.clock_offset_s = self.clock.time.value.timestamp() - time.time()
                    self.clock_sets += 1

        # gurux bug: GET normal calls notifyRead() and onPostRead() without arguments.
        def notifyRead(self) -> None:
            pass

        def onPostRead(self, args: Any = None) -> None:
            pass

        def onPreRead(self, args: Any = None) -> None:
            pass

        def onPreGet(self, args: Any) -> None:
            pass

        def onPostGet(self, args: Any) -> None:
            pass

        def onFindObject(self, objectType: Any, sn: Any, ln: Any) -> Any:
            return None

        def onPreAction(self, args: Any) -> None:
            pass

        def onPostAction(self, args: Any) -> None:
            pass

        def onConnected(self, connectionInfo: Any) -> None:
            log.debug("meter %d associated", spec.physical)

        def onDisconnected(self, connectionInfo: Any) -> None:
            pass

        def notifyConnected(self, connectionInfo: Any) -> None:  # gurux bug: called, undefined
            self.onConnected(connectionInfo)

        def onInvalidConnection(self, connectionInfo: Any) -> None:
            log.info("meter %d refused an association", spec.physical)

        # gurux bug: handleSnrmRequest reads the agreed values off self.hdlc and calls a
        # GXHdlcSettings.update() that does not exist; and setUInt8's arguments are swapped.
        def handleSnrmRequest(self, data: Any) -> None:
            agreed = self.settings.hdlc
            agreed.maxInfoTX = GXHdlcSettings.DEFAULT_MAX_INFO_TX
            agreed.maxInfoRX = GXHdlcSettings.DEFAULT_MAX_INFO_RX
            agreed.windowSizeTX = GXHdlcSettings.DEFAULT_WINDOWS_SIZE_TX
            agreed.windowSizeRX = GXHdlcSettings.DEFAULT_WINDOWS_SIZE_RX
            GXDLMS.parseSnrmUaResponse(data, agreed)
            self.reset(True)
            agreed.maxInfoTX = min(agreed.maxInfoTX, self.hdlc.maximumInfoLengthReceive)
            agreed.maxInfoRX = min(agreed.maxInfoRX, self.hdlc.maximumInfoLengthTransmit)
            agreed.windowSizeTX = min(agreed.windowSizeTX, self.hdlc.windowSizeReceive)
            agreed.windowSizeRX = min(agreed.windowSizeRX, self.hdlc.windowSizeTransmit)
            self._agreed_parameters()
            self.settings.connected = ConnectionState.HDLC

        def generateDisconnectRequest(self) -> None:
            self._agreed_parameters()

        def _agreed_parameters(self) -> None:
            a = self.settings.hdlc
            r = self.replyData
            r.setUInt8(0x81)
            r.setUInt8(0x80)
            r.setUInt8(0)
            r.setUInt8(_HDLCInfo.MAX_INFO_TX)
            GXDLMS.appendHdlcParameter(r, a.maxInfoTX)
            r.setUInt8(_HDLCInfo.MAX_INFO_RX)
            GXDLMS.appendHdlcParameter(r, a.maxInfoRX)
            r.setUInt8(_HDLCInfo.WINDOW_SIZE_TX)
            r.setUInt8(4)
            r.setUInt32(a.windowSizeTX)
            r.setUInt8(_HDLCInfo.WINDOW_SIZE_RX)
            r.setUInt8(4)
            r.setUInt32(a.windowSizeRX)
            r.setUInt8(len(r) - 3, 2)

        def feed(self, frame: bytes) -> bytes | None:
            self.requests += 1
            sr = Reply(bytearray(frame))
            self.handleRequest(sr)
            return bytes(sr.reply) if getattr(sr, "reply", None) else None

    return SimMeter()


class DlmsBusSimulator(PtySimulator):
    """Several gurux meters on one pty, routed by HDLC destination address."""

    def __init__(self, specs: list[MeterSpec], seed: int = 1) -> None:
        self.specs = specs
        self.servers = {(s.logical, s.physical): make_server(s) for s in specs}
        self.decoder = HdlcDecoder()
        self.rng = random.Random(seed)
        self.dropped = 0
        self._serve_lock = threading.Lock()
        super().__init__(self._on_data, name="sim-dlms")

    def server(self, physical: int) -> Any:
        return next(v for (lg, ph), v in self.servers.items() if ph == physical)

    def _on_data(self, data: bytes) -> bytes | None:
        self.decoder.receive_data(data)
        out = b""
        from gateway.protocols.hdlc import NEED_DATA
        while True:
            frame = self.decoder.next_event()
            if frame is NEED_DATA:
                return out or None
            key = (frame.dest.upper, frame.dest.lower)
            srv = self.servers.get(key)
            if srv is None or srv.spec.silent:
                continue
            if srv.spec.drop and self.rng.random() < srv.spec.drop:
                self.dropped += 1
                continue
            if srv.spec.delay_s:
                time.sleep(srv.spec.delay_s)
            with self._serve_lock:
                reply = srv.feed(frame.serialize())
            if reply:
                out += reply


def start(meters: int = 3, *, security: str = "none", specs: list[MeterSpec] | None = None,
          **kw: Any) -> DlmsBusSimulator:
    """Start ``meters`` meters (physical addresses 17, 18, ...) on one pty.

    ``kw`` sets :class:`MeterSpec` fields on every meter (e.g. ``period_s=60``).
    """
    if specs is None:
        specs = [MeterSpec(physical=17 + i, security=security, base_wh=1_000_000 * (i + 1),
                           system_title=f"SIMMTR{i:02d}".encode(), **kw)
                 for i in range(meters)]
    return DlmsBusSimulator(specs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meters", type=int, default=3)
    p.add_argument("--security", choices=("none", "low", "hls"), default="none")
    p.add_argument("--period-s", type=int, default=900)
    p.add_argument("--history-s", type=int, default=86400)
    p.add_argument("--drift-s", type=float, default=0.0)
    p.add_argument("--drop", type=float, default=0.0)
    p.add_argument("--delay-s", type=float, default=0.0)
    p.add_argument("--wrong-key", action="store_true")
    a = p.parse_args()
    sim = start(a.meters, security=a.security, period_s=a.period_s, history_s=a.history_s,
                drift_s=a.drift_s, drop=a.drop, delay_s=a.delay_s, wrong_key=a.wrong_key)
    print(sim.device, flush=True)
    print("meters (logical/physical): " + " ".join(f"{s.logical}/{s.physical}"
                                                  for s in sim.specs), flush=True)
    serve_forever(sim)


if __name__ == "__main__":
    main()

"""What the Zigbee driver does with each frame the XBee link decodes.

A mixin of :class:`~gateway.drivers.zigbee.ZigbeeDriver`, apart so that the driver module
is the bus's life-cycle and schedule, and this one the reaction to what comes in: XBee
frames (transmit status, modem status, node identification), ZCL (reports, answers to our
reads and reporting configuration) and ZDO (announces, endpoint discovery, bind answers,
the neighbor table). Every frame is handled on the driver thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import events as kinds
from ..model import now_ms
from ..protocols import xbee, zcl, zdo
from . import zigbee_values as zvalues
from .decode_errors import DecodeErrors
from .zigbee_device import Device, Request, Requests
from .zigbee_setup import Outcome
from .zigbee_values import METERING_STATUS, Invalid, is_integer

if TYPE_CHECKING:
    from .zigbee_link import XBeeLink


class IncomingFrames:
    """Frame handlers; the attributes below are the driver's."""

    bus: str
    log: logging.Logger
    link: "XBeeLink | None"
    devices: dict[int, Device]
    requests: Requests
    frame_errors: int
    decode_errors: DecodeErrors
    rssi_interval: float
    timeout: float
    _out: list[Any]
    _lock: threading.Lock
    _rssi_busy: bool
    _restart: bool

    if TYPE_CHECKING:  # the driver's, used here
        def _event(self, kind: str, dev: Device | None, severity: str = "info",
                   **detail: Any) -> None: ...
        def _device(self, ieee: int, now: float) -> Device: ...
        def _send_request(self, dev: Device, req: Request, now: float) -> None: ...
        def _request_failed(self, req: Request, why: str, now: float) -> None: ...
        def _setup_answer(self, dev: Device, kind: str, outcome: Outcome,
                          now: float) -> None: ...
        def _on_lqi(self, msg: zdo.LqiResponse, now: float) -> None: ...

    # -- XBee frames ---------------------------------------------------------------------

    def _on_frame(self, frame: Any, ctx: Any) -> None:
        try:
            self._dispatch(frame, ctx)
        except Exception as exc:  # noqa: BLE001 - one odd frame must not stop the bus
            self.frame_errors += 1
            self.log.exception("zigbee %s: frame %r not handled", self.bus, frame)
            self._event(kinds.FRAME_NOT_HANDLED, None, "error", error=repr(exc),
                        frame=type(frame).__name__)

    def _dispatch(self, frame: Any, ctx: Any) -> None:
        now = time.monotonic()
        if isinstance(frame, xbee.BadFrame):
            self.frame_errors += 1
            self.log.debug("zigbee %s: bad frame: %s", self.bus, frame.reason)
        elif isinstance(frame, xbee.ExplicitRxIndicator):
            self._on_rx(frame, now)
        elif isinstance(frame, xbee.TransmitStatus):
            if ctx is not None and not frame.ok:
                req = self.requests.take(*ctx)
                if req is not None:
                    self._request_failed(req, xbee.DELIVERY_STATUS.get(
                        frame.delivery_status, f"delivery status 0x{frame.delivery_status:02X}"),
                        now)
        elif isinstance(frame, xbee.ModemStatus):
            name = xbee.MODEM_STATUS.get(frame.status, f"0x{frame.status:02X}")
            self.log.info("zigbee %s: modem status: %s", self.bus, name)
            self._event(kinds.MODEM_STATUS, None, "info", status=frame.status, name=name)
            if frame.status in (0x00, 0x01):  # reset: AO may be back to its saved value
                self._restart = True
        elif isinstance(frame, xbee.NodeIdentification):
            self._on_join(frame.remote64, frame.remote16, now, node_id=frame.node_id,
                          via="node identification")
        elif isinstance(frame, xbee.RxIndicator):
            self.log.debug("zigbee %s: 0x90 frame ignored (AO=0?)", self.bus)

    def _on_undecodable(self, raw: bytes, exc: Exception) -> None:
        self.frame_errors += 1
        self._decode_error(None, raw, exc, layer="xbee")

    def _decode_error(self, dev: Device | None, frame: bytes, exc: Exception,
                      **detail: Any) -> None:
        """A frame a codec failed on: counted, reported (rate-limited), and the bus goes on."""
        if dev is not None:
            dev.stats.count("decode_errors")
        ev = self.decode_errors.report(dev.meter_id if dev else None, frame, exc, **detail)
        if ev is not None:
            self.log.warning("zigbee %s: %s: undecodable frame (%s: %s)", self.bus,
                             dev.meter_id if dev else "unknown device", type(exc).__name__, exc)
            self._out.append(ev)

    def _heard(self, dev: Device, nwk: int, now: float, rx: int) -> None:
        dev.stats.count("frames")
        dev.nwk = nwk
        if dev.silent:
            dev.silent = False
            self.log.info("zigbee %s: %s heard again after %.1f s", self.bus, dev.meter_id,
                          now - dev.last_seen)
            self._event(kinds.STATUS, dev, "info", state="heard again",
                        silent_for_s=round(now - dev.last_seen, 1))
        dev.last_seen, dev.last_seen_ms = now, rx
        if now >= dev.next_rssi_at and not self._rssi_busy and self.link is not None:
            dev.next_rssi_at = now + self.rssi_interval
            self._rssi_busy = True

            def got(resp: xbee.ATCommandResponse | None, dev: Device = dev) -> None:
                self._rssi_busy = False
                if resp is not None and resp.status == 0 and len(resp.data) == 1:
                    dev.stats.rssi_dbm = -resp.data[0]  # DB: RSSI of the last packet, -dBm
            self.link.at_async("DB", b"", now + self.timeout, got)

    # -- ZCL -----------------------------------------------------------------------------

    def _on_rx(self, f: xbee.ExplicitRxIndicator, now: float) -> None:
        rx = now_ms()
        if f.profile == zdo.ZDO_PROFILE and f.dst_endpoint == zdo.ZDO_ENDPOINT:
            self._on_zdo(f, now)
            return
        dev = self._device(f.source64, now)
        self._heard(dev, f.source16, now, rx)
        if f.cluster in (zcl.METERING, zcl.ELECTRICAL_MEASUREMENT):
            dev.endpoint, dev.profile = f.src_endpoint, f.profile
            dev.setup.endpoint_known = True
        if not zcl.is_zcl_profile(f.profile):
            dev.stats.count("non_zcl_frames")  # Digi 0xC105 etc.: not ours to read
            self.log.debug("zigbee %s: %s: frame on profile 0x%04X (not ZCL) ignored",
                           self.bus, dev.meter_id, f.profile)
            return
        try:
            frame = zcl.parse_zcl(f.data)
        except Exception as exc:  # noqa: BLE001 - ZCLDecodeError, or a codec bug: go on
            self._decode_error(dev, f.data, exc, cluster=f"0x{f.cluster:04X}")
            return
        hdr, p = frame.header, frame.payload
        if not hdr.is_global:
            return
        if isinstance(p, zcl.ReportAttributes):
            dev.stats.count("reports")
            self._values(dev, f.cluster, [(r.attribute_id, r.value) for r in p.reports], rx)
            if not hdr.disable_default_response:
                self._default_response(dev, f, hdr)
        elif isinstance(p, (zcl.ReadAttributesResponse, zcl.ConfigureReportingResponse)) or \
                (isinstance(p, zcl.DefaultResponse) and p.status != zcl.SUCCESS):
            # (a successful Default Response is not the answer a request waits for)
            req = self.requests.answer(dev.ieee, hdr.seq, f.cluster, zdo=False)
            if req is not None:
                self._on_zcl_answer(dev, req, p, rx, now)

    def _on_zcl_answer(self, dev: Device, req: Request, p: Any, rx: int, now: float) -> None:
        if isinstance(p, zcl.ReadAttributesResponse):
            self._on_read_response(dev, req, p, rx, now)
        elif isinstance(p, zcl.ConfigureReportingResponse):
            ok = p.all_success
            if not ok:
                self.log.info("zigbee %s: %s refused reporting on 0x%04X (%s): polling it",
                              self.bus, dev.meter_id, req.cluster,
                              ", ".join(zcl.status_name(r.status) for r in p.records))
            self._setup_answer(dev, req.kind, Outcome.OK if ok else Outcome.REFUSED, now)
        else:
            self.log.info("zigbee %s: %s answered %s with %s", self.bus, dev.meter_id,
                          req.kind, zcl.status_name(p.status))
            req.fail(f"{dev.meter_id} refused the read: {zcl.status_name(p.status)}")
            self._setup_answer(dev, req.kind, Outcome.REFUSED, now)

    def _default_response(self, dev: Device, f: xbee.ExplicitRxIndicator,
                          hdr: zcl.ZCLHeader) -> None:
        assert self.link is not None
        data = zcl.ZCLFrame(zcl.ZCLHeader(zcl.FRAME_TYPE_GLOBAL, zcl.DEFAULT_RESPONSE, hdr.seq,
                                          1 - hdr.direction, True, hdr.manufacturer),
                            zcl.DefaultResponse(hdr.command, zcl.SUCCESS)).serialize()
        self.link.send(xbee.ExplicitAddressingCommand(
            0, dev.ieee, f.source16, f.dst_endpoint, f.src_endpoint, f.cluster, f.profile,
            0, 0, data))

    def _on_read_response(self, dev: Device, req: Request, p: zcl.ReadAttributesResponse,
                          rx: int, now: float) -> None:
        recs = {r.attribute_id: r for r in p.records}
        values = [(r.attribute_id, r.value) for r in p.records
                  if r.status == zcl.SUCCESS and r.value is not None]
        fresh = {(req.cluster, a) for a, _ in values}
        if req.kind == "metering_scale":
            scale, problems = zvalues.metering_scale(recs)
            if scale is None:
                self.log.warning("zigbee %s: %s: metering scaling unusable (%s): holding its "
                                 "values", self.bus, dev.meter_id, "; ".join(problems))
                self._bad_scaling(dev, "0x0702", problems)
                self._setup_answer(dev, req.kind, Outcome.UNUSABLE, now)
                return
            with self._lock:
                dev.metering = scale
            self._release_held(dev, fresh)
            self._values(dev, req.cluster, values, rx)
            self._setup_answer(dev, req.kind, Outcome.OK, now)
        elif req.kind == "ac_scale":
            ok = self._ac_scale_read(dev, recs, fresh, values, rx)
            self._setup_answer(dev, req.kind, Outcome.OK if ok else Outcome.UNUSABLE, now)
        elif req.kind == "basic":
            self._values(dev, req.cluster, values, rx)
            self._setup_answer(dev, req.kind, Outcome.OK, now)
        elif req.future is not None:  # console read: what it produced, readings and events
            start = len(self._out)
            self._values(dev, req.cluster, values, rx)
            if not req.future.done():
                req.future.set_result(list(self._out[start:]))
        else:
            self._values(dev, req.cluster, values, rx)

    def _ac_scale_read(self, dev: Device, recs: dict[int, zcl.AttributeStatus],
                       fresh: set[tuple[int, int]], values: list[tuple[int, zcl.TypedValue]],
                       rx: int) -> bool:
        """The AC probe's answer: True if the device has AC values with a usable scaling."""
        if not zvalues.has_ac(recs):
            return False
        ac, problems = zvalues.ac_scale(recs)
        if ac is None:
            self._bad_scaling(dev, "0x0B04", problems)
            return False
        dev.ac = ac
        self._release_held(dev, fresh)
        self._values(dev, zcl.ELECTRICAL_MEASUREMENT, values, rx)
        return True

    def _bad_scaling(self, dev: Device, cluster: str, problems: list[str]) -> None:
        dev.stats.count("bad_scaling")
        self._event(kinds.BAD_SCALING, dev, "warning", ieee=dev.ieee_hex, cluster=cluster,
                    problems=problems)

    def _release_held(self, dev: Device, fresh: set[tuple[int, int]]) -> None:
        """Publish the values that waited for the scaling, except those the scale read
        itself brought newer."""
        for cluster, attr, tv, rx in dev.take_held(fresh):
            self._values(dev, cluster, [(attr, tv)], rx)

    # -- values -> records ---------------------------------------------------------------

    def _values(self, dev: Device, cluster: int, vals: list[tuple[int, zcl.TypedValue]],
                rx: int) -> None:
        for attr, tv in vals:
            if cluster == zcl.BASIC:
                if not tv.invalid:
                    with self._lock:
                        if attr == 0x0004:
                            dev.manufacturer = str(tv.value)
                        elif attr == 0x0005:
                            dev.model = str(tv.value)
            elif cluster == zcl.METERING and attr == METERING_STATUS and is_integer(tv):
                self._metering_status(dev, tv.value)
            elif zvalues.is_measurement(cluster, attr):
                self._measurement(dev, cluster, attr, tv, rx)

    def _metering_status(self, dev: Device, status: int) -> None:
        if status != dev.last_status:
            if dev.last_status is not None or status:
                self._event(kinds.STATUS, dev, "warning" if status else "info",
                            state="metering status", status=status,
                            flags=zcl.status_bits(status))
            dev.last_status = status

    def _measurement(self, dev: Device, cluster: int, attr: int, tv: zcl.TypedValue,
                     rx: int) -> None:
        out = zvalues.reading(dev.meter_id, self.bus, cluster, attr, tv, dev.metering, dev.ac,
                              rx)
        if out is None:  # its scaling is not known yet
            dev.hold(cluster, attr, tv, rx)
        elif isinstance(out, Invalid):
            self._invalid(dev, out)
        else:
            dev.stats.count("readings")
            self._out.append(out)

    def _invalid(self, dev: Device, bad: Invalid) -> None:
        dev.stats.count("invalid_values")
        raw = bad.raw
        self.log.warning("zigbee %s: %s: %s = %s (%s): not a reading", self.bus, dev.meter_id,
                         zcl.attribute_name(bad.cluster, bad.attribute),
                         f"0x{raw & ((1 << 64) - 1):X}" if raw is not None else "?",
                         bad.reason)
        self._event(kinds.INVALID_VALUE, dev, "warning", **bad.detail(dev.ieee_hex))

    # -- ZDO -----------------------------------------------------------------------------

    def _on_zdo(self, f: xbee.ExplicitRxIndicator, now: float) -> None:
        try:
            msg = zdo.parse_zdo(f.cluster, f.data)
        except zdo.ZDODecodeError as exc:
            self.log.warning("zigbee %s: undecodable ZDO %s from %s: %s", self.bus,
                             zdo.cluster_name(f.cluster), xbee.eui64_hex(f.source64), exc)
            return
        except Exception as exc:  # noqa: BLE001 - a codec bug: count it, go on
            self._decode_error(self.devices.get(f.source64), f.data, exc,
                               cluster=f"0x{f.cluster:04X}", ieee=xbee.eui64_hex(f.source64))
            return
        if isinstance(msg, zdo.DeviceAnnounce):
            self._on_join(msg.ieee, msg.nwk, now, capability=zdo.capability_names(
                msg.capability), via="device announce")
            return
        if isinstance(msg, zdo.LqiResponse):
            self._on_lqi(msg, now)
            return
        dev = self.devices.get(f.source64)
        if dev is None or not isinstance(msg, (zdo.StatusResponse, zdo.ActiveEpResponse,
                                               zdo.SimpleDescResponse)):
            return
        self._heard(dev, f.source16, now, now_ms())
        req = self.requests.answer(dev.ieee, msg.seq, f.cluster, zdo=True)
        if req is None:
            return
        if isinstance(msg, zdo.ActiveEpResponse):
            self._on_endpoints(dev, msg, now)
        elif isinstance(msg, zdo.SimpleDescResponse):
            self._on_descriptor(dev, msg, now)
        elif msg.status == 0:
            self._setup_answer(dev, req.kind, Outcome.OK, now)
        else:
            self.log.info("zigbee %s: %s refused %s (%s): polling it", self.bus,
                          dev.meter_id, req.kind, zdo.ZDO_STATUS.get(msg.status, msg.status))
            self._setup_answer(dev, req.kind, Outcome.REFUSED, now)

    def _discovered(self, dev: Device, now: float) -> None:
        self._setup_answer(dev, "discover_endpoints", Outcome.OK, now)

    def _on_endpoints(self, dev: Device, msg: zdo.ActiveEpResponse, now: float) -> None:
        if msg.status != 0 or not msg.endpoints:
            self.log.info("zigbee %s: %s lists no endpoints (%s): using endpoint %d",
                          self.bus, dev.meter_id, zdo.ZDO_STATUS.get(msg.status, msg.status),
                          dev.endpoint)
            self._discovered(dev, now)
            return
        dev.ep_candidates = [e for e in msg.endpoints if 1 <= e <= 240]  # 0, 241+: not apps
        self._describe_next(dev, now)

    def _describe_next(self, dev: Device, now: float) -> None:
        if not dev.ep_candidates:
            self.log.info("zigbee %s: %s has no Metering cluster on its endpoints: using "
                          "endpoint %d", self.bus, dev.meter_id, dev.endpoint)
            self._discovered(dev, now)
            return
        ep = dev.ep_candidates.pop(0)
        self._send_request(dev, Request(
            dev.ieee, "discover_descriptor", zdo.SIMPLE_DESC_REQ, True,
            lambda seq: zdo.SimpleDescRequest(seq, dev.nwk, ep).serialize()), now)

    def _on_descriptor(self, dev: Device, msg: zdo.SimpleDescResponse, now: float) -> None:
        if msg.status == 0 and zcl.METERING in msg.in_clusters:
            dev.endpoint, dev.profile = msg.endpoint, msg.profile
            dev.setup.endpoint_known = True
            dev.ep_candidates = []
            self.log.info("zigbee %s: %s: Metering on endpoint %d (profile 0x%04X)", self.bus,
                          dev.meter_id, msg.endpoint, msg.profile)
            self._discovered(dev, now)
            return
        self._describe_next(dev, now)

    def _on_join(self, ieee: int, nwk: int, now: float, via: str, **detail: Any) -> None:
        known = ieee in self.devices
        dev = self._device(ieee, now)
        # The device may have been reset or replaced: forget its scaling and re-read it.
        for req in self.requests.drop_device(ieee):
            req.fail(f"{dev.meter_id} rejoined the network during the read")
        dev.restart_setup(now)
        dev.stats.count("announces")
        self._heard(dev, nwk, now, now_ms())
        self.log.info("zigbee %s: %s %s (nwk 0x%04X) via %s", self.bus, dev.meter_id,
                      "rejoined" if known else "joined", nwk, via)
        self._event(kinds.JOINED, dev, "info", ieee=dev.ieee_hex, nwk=nwk, rejoin=known,
                    via=via, **detail)

"""Zigbee driver (type ``zigbee``): a Digi XBee coordinator on a serial port, ZCL metering.

A listener on the bus skeleton (:class:`~gateway.drivers.bus.BusDriver`): the skeleton opens
the port, reads it and hands the bytes to :meth:`ZigbeeDriver.on_bytes`, runs console work
on this thread and reopens a vanished port. At open (:meth:`ZigbeeDriver.on_open`) the
driver reads the module's identity (SH/SL, VR, OP, AI) and sets AO=1 so received data
arrives as Explicit Rx Indicator frames (0x91) with their endpoint/cluster/profile. Each
device then goes through its set-up (:mod:`.zigbee_setup`), one request at a time: find
the Metering endpoint, read the Metering scaling, probe the AC scaling, read Basic, bind
and configure reporting; a device that refuses binding or reporting is polled instead.

The parts: :mod:`.zigbee_link` (API frames, frame ids, AT commands), :mod:`.zigbee_setup`
(the set-up state machine), :mod:`.zigbee_values` (ZCL values -> Readings),
:mod:`.zigbee_device` (per-device state, requests in flight), :mod:`.zigbee_schema`.

Invariants that the tests pin down:

* A register value is never published before its device's multiplier, divisor and unit
  are known; values that arrive earlier are held (bounded) and published once they are.
  A Device_annce (or Node Identification) drops the cached scaling and re-reads it.
* A value equal to its type's "invalid" sentinel is a ``meter.invalid_value`` event, never
  a Reading.
* Timeouts live here, not in the codec: each request has a monotonic deadline, retries, and
  fails into a counted ``meter.read_failed`` event. A device not heard from for
  ``silence_factor`` x its expected interval raises ``meter.silent``.
* Whatever a codec raises on a frame (XBee, ZCL or ZDO; its own decode error or a bug) is
  a ``meter.decode_error`` with the frame's hex, rate-limited, and the bus goes on. Frames
  on a profile that does not carry ZCL (Digi's 0xC105...) are counted and ignored.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Mapping

from .. import events as kinds
from ..model import Event, now_ms
from ..protocols import xbee, zcl, zdo
from .backoff import Backoff
from .bus import BusDriver
from .context import DriverContext, RecordSink
from .decode_errors import DecodeErrors
from .serialport import SerialPortError, write_frame
from .zigbee_device import HELD_VALUES_MAX, Device, Request, Requests  # noqa: F401
from .zigbee_rx import IncomingFrames
from .zigbee_link import (OUR_ENDPOINT, XBeeLink, XBeeLinkError, open_network,  # noqa: F401
                          open_port)
from .zigbee_schema import DEVICE_SCHEMA, SCHEMA, parse_ieee  # noqa: F401
from .zigbee_setup import CLUSTER as SETUP_CLUSTER, DeviceSetup, Effect, Outcome, Step
from .zigbee_values import (AC_POLL_ATTRS, AC_SCALE_ATTRS, BASIC_ATTRS,  # noqa: F401
                            METERING_POLL_ATTRS, METERING_SCALE_ATTRS, METERING_STATUS,
                            QUALITY_ROUNDED, AcScale, Invalid, MeteringScale, is_integer)

# Neighbor table device types worth reading (Zigbee spec Table 2.128): router, end device.
NEIGHBOR_DEVICE_TYPES = frozenset({1, 2})
TICK_S = 0.05  # how often deadlines, set-up and polls are looked at
# Request kind (also the ``request`` of a ``meter.read_failed`` event) -> its set-up step.
REQUEST_STEP: dict[str, Step] = {"discover_endpoints": Step.DISCOVER,
                                 "discover_descriptor": Step.DISCOVER,
                                 **{s.value: s for s in Step if s is not Step.READY}}


class ZigbeeDriver(IncomingFrames, BusDriver):
    type_name = "zigbee"
    listener = True

    def __init__(self, name: str, options: Mapping[str, Any],
                 ctx: DriverContext | RecordSink) -> None:
        super().__init__(name, options, ctx)
        o = self.options
        self.escaped = int(o.get("api_mode", 2)) == 2
        self.default_profile = int(o.get("profile", 0x0104))
        self.default_endpoint = int(o.get("endpoint", 1))
        self.poll_interval = float(o.get("poll_interval_s", 300))
        self.report_min = int(o.get("report_min_s", 30))
        self.report_max = int(o.get("report_max_s", 300))
        self.timeout = float(o.get("response_timeout_s", 10))
        self.retries = int(o.get("retries", 2))
        self.silence_factor = float(o.get("silence_factor", 2))
        self.rssi_interval = float(o.get("rssi_interval_s", 60))
        self.lqi_interval = float(o.get("lqi_interval_s", 300))
        self._lqi_next_at = 0.0
        self._lqi_pending: tuple[int, float] | None = None  # (seq, deadline) of a page
        self.lqi_scans = {"ok": 0, "timeouts": 0, "refused": 0}
        self.configured: dict[int, dict[str, Any]] = {
            parse_ieee(d["ieee"]): d for d in (o.get("devices") or [])}
        self.devices: dict[int, Device] = {}
        self.module: dict[str, Any] = {}
        self.coordinator_ieee = 0
        self.link: XBeeLink | None = None
        self.frame_errors = 0
        self.decode_errors = DecodeErrors(self.bus)
        self._reported_frame_errors = 0
        self._next_error_event = 0.0
        self.requests = Requests()
        self._out: list[Any] = []
        self._lock = threading.Lock()
        self._rssi_busy = False
        self._restart = False
        self._next_tick = 0.0
        self._port_reported = False  # a port error was reported since the module last worked
        self.start_backoff = Backoff(min_s=0.5, max_s=60)
        self.sessions = 0

    # -- console capabilities (any thread) ---------------------------------------------

    def meter_stats(self) -> dict[str, dict[str, Any]]:
        """Per-device counters and link quality, for diagnostics (a snapshot)."""
        with self._lock:
            return {d.meter_id: d.snapshot() for d in self.devices.values()}

    def bus_state(self) -> dict[str, Any]:
        """The port, the coordinator and the line's health, for the console's bus summary."""
        dec = self.link.decoder if self.link is not None else None
        return {**super().bus_state(), "connected": self.link is not None,
                "coordinator": dict(self.module), "sessions": self.sessions,
                "bad_frames": self.frame_errors,
                "checksum_errors": dec.checksum_errors if dec else None,
                "devices": len(self.devices), "lqi_scans": dict(self.lqi_scans)}

    def _require_link(self) -> None:
        if self.link is None or not self.is_alive():
            raise RuntimeError(f"zigbee bus {self.bus}: the XBee is not connected "
                               f"(port {self.serial_opts.get('port')} down or starting)")

    def permit_join(self, seconds: int, timeout: float | None = None) -> list[str]:
        """Open the network for ``seconds`` (0 closes): the console's ``permit-join``. Run
        on the driver thread, which owns the port; returns the steps done."""
        seconds = int(seconds)
        if not 0 <= seconds <= 254:
            raise ValueError("permit-join seconds must be 0..254 (0 closes the network)")
        self._require_link()
        return self.on_driver_thread("permit-join", lambda: self._permit_join(seconds),
                                     timeout if timeout is not None else 3 * self.timeout + 5)

    def _permit_join(self, seconds: int) -> list[str]:
        if self.link is None:
            raise XBeeLinkError("the XBee is not connected")
        steps = open_network(self.link, seconds, self.requests.next_seq(), self.timeout,
                             self.stopping)
        self.log.info("zigbee %s: network open for %d s", self.bus, seconds)
        self._event(kinds.PERMIT_JOIN, None, "info", seconds=seconds)
        return steps

    def read_now(self, meter_id: str, timeout: float | None = None) -> list[Any]:
        """``read ID``: a ZCL Read Attributes of the device's Metering values now. The
        request is sent from the driver thread; this waits at most the request's retries
        times the response timeout. The records are stored like any other; KeyError for a
        meter this bus does not know."""
        with self._lock:
            known = any(d.meter_id == meter_id for d in self.devices.values())
        if not known:
            raise KeyError(meter_id)
        self._require_link()
        wait = timeout if timeout is not None else (self.retries + 1) * self.timeout + 5
        fut: Future = self.on_driver_thread("read", lambda: self._console_read(meter_id), wait)
        try:
            return fut.result(wait)
        except FutureTimeout:
            fut.cancel()
            raise RuntimeError(f"no answer from {meter_id} within {wait:g} s") from None

    def _console_read(self, meter_id: str) -> Future:
        fut: Future = Future()
        dev = next((d for d in self.devices.values() if d.meter_id == meter_id), None)
        if dev is None:
            fut.set_exception(KeyError(meter_id))
        elif self.link is None:
            fut.set_exception(RuntimeError(f"zigbee bus {self.bus}: the XBee is not connected"))
        elif dev.metering is None:
            fut.set_exception(RuntimeError(
                f"{meter_id}: its Metering scaling is not known yet (setup: "
                f"{', '.join(dev.setup.remaining()) or 'waiting'}), so its values cannot be "
                "read"))
        else:
            self._send_request(dev, Request(
                dev.ieee, "console_read", zcl.METERING, False,
                lambda seq: zcl.general_frame(zcl.ReadAttributes(METERING_POLL_ATTRS), seq),
                future=fut), time.monotonic())
        return fut

    # -- the bus skeleton's hooks (driver thread) --------------------------------------

    def open_or_back_off(self) -> bool:
        return super().open_or_back_off() and self.ser is not None  # on_open may give up

    def on_open(self) -> None:
        ser = self.ser
        self.link = XBeeLink(ser, self.escaped, self._on_frame,
                             lambda data: write_frame(ser, data, self.serial_opts),
                             self._on_undecodable)
        self._start_or_back_off()

    def on_open_failed(self, exc: SerialPortError) -> None:
        if not self._port_reported:
            self.log.error("zigbee %s: %s; retrying", self.bus, exc)
            self._event(kinds.PORT_ERROR, None, "error", port=self.serial_opts.get("port"),
                        error=str(exc))
            self._flush()
        self._port_reported = True

    def port_failed(self, exc: BaseException) -> None:
        super().port_failed(exc)
        self._port_reported = True

    def close_port(self) -> None:
        self._flush()
        self.link = None
        super().close_port()

    def on_bytes(self, data: bytes) -> None:
        assert self.link is not None
        self.link.feed(data)
        self._after_io()

    def on_idle(self) -> None:
        self._after_io()

    def _after_io(self) -> None:
        now = time.monotonic()
        if now >= self._next_tick or self._out:
            self._tick(now)
            self._next_tick = now + TICK_S
        self._flush()
        if self._restart:  # the module reset: AO may be back to its saved value
            self._restart = False
            self._start_or_back_off()

    def _start_or_back_off(self) -> None:
        """Start a session; if the module does not answer, close the port and back off."""
        if self._start_session():
            self.start_backoff.ok()
            self._port_reported = False
            return
        self.close_port()
        if not self.stopping.is_set():
            self.work.idle(self.start_backoff.fail())

    def _start_session(self) -> bool:
        """Read the module's identity and set AO=1; False (after logging) if it won't answer."""
        link = self.link
        assert link is not None
        self.sessions += 1
        t, stop = self.timeout, self.stopping
        try:
            sh, sl, vr, op, ai = (link.at(c, timeout=t, stopping=stop).data
                                  for c in ("SH", "SL", "VR", "OP", "AI"))
            link.at("AO", b"\x01", timeout=t, stopping=stop)
            link.at("AC", timeout=t, stopping=stop)
        except XBeeLinkError as exc:
            if self.stopping.is_set():
                return False
            mode = "2 (escaped)" if self.escaped else "1"
            self.log.error("zigbee %s: XBee on %s: %s (is the module in API mode %s at %s "
                           "baud?)", self.bus, self.serial_opts.get("port"), exc, mode,
                           self.serial_opts.get("baud", 9600))
            self._event(kinds.START_FAILED, None, "error", port=self.serial_opts.get("port"),
                        error=str(exc))
            self._flush()
            return False
        # SH/SL are 32-bit values; firmware may drop leading zero bytes, so combine as ints.
        self.coordinator_ieee = (int.from_bytes(sh[-4:], "big") << 32) \
            | int.from_bytes(sl[-4:], "big")
        self.module = {"ieee": xbee.eui64_hex(self.coordinator_ieee), "firmware": vr.hex(),
                       "pan_id": op.hex(), "association": ai.hex()}
        self.log.info("zigbee %s: coordinator %s firmware %s PAN %s association 0x%s",
                      self.bus, self.module["ieee"], self.module["firmware"],
                      self.module["pan_id"], self.module["association"])
        self._event(kinds.COORDINATOR, None, "info", **self.module)
        now = time.monotonic()
        for ieee in self.configured:
            self._device(ieee, now)
        for dev in self.devices.values():
            dev.restart_setup(now)  # a restarted module: re-read everything
            dev.last_seen = max(dev.last_seen, now)
        self._flush()
        return True

    def _flush(self) -> None:
        if self._out:
            records, self._out = self._out, []
            self.emit(records)

    # -- helpers -----------------------------------------------------------------------

    def _event(self, kind: str, dev: Device | None, severity: str = "info",
               **detail: Any) -> None:
        self._out.append(Event(kind, now_ms(), self.bus, dev.meter_id if dev else None,
                               severity, detail))

    def _device(self, ieee: int, now: float) -> Device:
        dev = self.devices.get(ieee)
        if dev is None:
            cfg = self.configured.get(ieee, {})
            meter_id = cfg.get("id") or xbee.eui64_hex(ieee)
            dev = Device(ieee, meter_id, cfg.get("endpoint") or self.default_endpoint,
                         self.default_profile,
                         DeviceSetup(bool(cfg.get("poll", False)), bool(cfg.get("endpoint"))),
                         self.stats[meter_id], cfg.get("expected_interval_s"))
            dev.last_seen = now
            dev.restart_setup(now)
            with self._lock:
                self.devices[ieee] = dev
            self.log.info("zigbee %s: device %s (%s)", self.bus, dev.ieee_hex, dev.meter_id)
        return dev

    def _send_request(self, dev: Device, req: Request, now: float) -> None:
        link = self.link
        assert link is not None
        req.seq = self.requests.next_seq()
        req.attempts += 1
        req.deadline = now + self.timeout
        self.requests.add(req)
        fid = link.ids.allocate((dev.ieee, req.seq), req.deadline)
        if req.zdo:
            frame = xbee.ExplicitAddressingCommand(
                fid, dev.ieee, dev.nwk, zdo.ZDO_ENDPOINT, zdo.ZDO_ENDPOINT, req.cluster,
                zdo.ZDO_PROFILE, 0, 0, req.build(req.seq))
        else:
            frame = xbee.ExplicitAddressingCommand(
                fid, dev.ieee, dev.nwk, OUR_ENDPOINT, dev.endpoint, req.cluster, dev.profile,
                0, 0, req.build(req.seq))
        dev.stats.count("requests")
        if req.attempts > 1:
            dev.stats.count("retries")
        link.send(frame)

    def _zcl_request(self, dev: Device, kind: str, cluster: int, payload: zcl.Payload,
                     now: float) -> None:
        self._send_request(dev, Request(dev.ieee, kind, cluster, False,
                                        lambda seq: zcl.general_frame(payload, seq)), now)

    def _read(self, dev: Device, kind: str, cluster: int, attrs: tuple[int, ...],
              now: float) -> None:
        self._zcl_request(dev, kind, cluster, zcl.ReadAttributes(attrs), now)

    # -- scheduling ----------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self._expire(now)
        for dev in list(self.devices.values()):
            self._check_silence(dev, now)
            if dev.busy:
                continue
            if not dev.setup.ready:
                if now >= dev.next_setup_at:
                    self._setup_step(dev, now)
            elif now >= dev.next_poll_at and dev.polled_clusters():
                self._poll(dev, now)
        self._lqi_scan(now)
        self._frame_error_event(now)

    def _setup_step(self, dev: Device, now: float) -> None:
        step = dev.setup.pending()  # past the steps that do not apply to this device
        if step is None:
            self._ready(dev, now)
            return
        dev.busy = True
        M, AC = zcl.METERING, zcl.ELECTRICAL_MEASUREMENT
        if step is Step.DISCOVER:
            self._send_request(dev, Request(
                dev.ieee, "discover_endpoints", zdo.ACTIVE_EP_REQ, True,
                lambda seq: zdo.ActiveEpRequest(seq, dev.nwk).serialize()), now)
        elif step is Step.METERING_SCALE:
            # Current values ride along: published the moment the scaling is known (so
            # the first poll is one poll interval later, not a second read of the same).
            self._read(dev, step.value, M, METERING_SCALE_ATTRS + METERING_POLL_ATTRS, now)
        elif step is Step.AC_SCALE:
            self._read(dev, step.value, AC, AC_SCALE_ATTRS + AC_POLL_ATTRS, now)
        elif step is Step.BASIC:
            self._read(dev, step.value, zcl.BASIC, BASIC_ATTRS, now)
        elif step in (Step.BIND_METERING, Step.BIND_AC):
            cluster, coord = SETUP_CLUSTER[step], self.coordinator_ieee

            def build(seq: int, cluster: int = cluster) -> bytes:
                return zdo.BindRequest(seq, dev.ieee, dev.endpoint, cluster, coord,
                                       OUR_ENDPOINT).serialize()
            self._send_request(dev, Request(dev.ieee, step.value, zdo.BIND_REQ, True, build),
                               now)
        else:
            self._zcl_request(dev, step.value, SETUP_CLUSTER[step], self._reporting(step), now)

    def _reporting(self, step: Step) -> zcl.ConfigureReporting:
        attrs = ((0x0000, zcl.U48), (0x0400, zcl.S24)) if step is Step.CONFIGURE_METERING \
            else ((0x0505, zcl.U16), (0x0508, zcl.U16), (0x050B, zcl.S16))
        return zcl.ConfigureReporting(tuple(
            zcl.ReportingConfig(0, a, t, self.report_min, self.report_max, 1) for a, t in attrs))

    def _setup_answer(self, dev: Device, kind: str, outcome: Outcome, now: float) -> None:
        """The answer (or its absence) to a request of kind ``kind`` for ``dev``'s set-up."""
        step = REQUEST_STEP.get(kind)
        effect = dev.setup.on(step, outcome) if step is not None else None
        if effect is None:
            return  # a poll, a console read, or an answer for a step already left
        dev.busy = False
        if effect is Effect.RETRY_LATER:  # values keep waiting
            dev.next_setup_at = now + self.poll_interval
            return
        dev.next_setup_at = now
        if dev.setup.pending() is None:
            self._ready(dev, now)

    def _ready(self, dev: Device, now: float) -> None:
        # The setup's scale reads carried the current values: polling now would send
        # the same readings a second time.
        dev.next_poll_at = now + self.poll_interval
        self.log.info("zigbee %s: %s ready (%s)", self.bus, dev.meter_id, ", ".join(
            f"0x{c:04X} {s}" for c, s in sorted(dev.setup.reporting.items())) or "no reporting")

    def _poll(self, dev: Device, now: float) -> None:
        dev.next_poll_at = now + self.poll_interval
        for cluster in dev.polled_clusters():
            attrs = METERING_POLL_ATTRS if cluster == zcl.METERING else AC_POLL_ATTRS
            self._read(dev, "poll", cluster, attrs, now)
        dev.stats.count("polls")

    def _expected_interval(self, dev: Device) -> float:
        if dev.expected_interval_s:
            return float(dev.expected_interval_s)
        if not dev.setup.ready or dev.polled_clusters():
            return self.poll_interval
        return float(self.report_max)

    def _check_silence(self, dev: Device, now: float) -> None:
        expected = self._expected_interval(dev)
        limit = expected * self.silence_factor + self.timeout
        if not dev.silent and now - dev.last_seen > limit:
            dev.silent = True
            dev.stats.count("silences")
            self.log.warning("zigbee %s: %s silent for %.1f s (expected every %g s)",
                             self.bus, dev.meter_id, now - dev.last_seen, expected)
            self._event(kinds.SILENT, dev, "warning", ieee=dev.ieee_hex,
                        silent_for_s=round(now - dev.last_seen, 1),
                        expected_interval_s=expected, last_seen_ms=dev.last_seen_ms)

    def _expire(self, now: float) -> None:
        assert self.link is not None
        self.link.expire(now)
        for req in self.requests.expired(now):
            self._request_failed(req, "timeout", now)

    def _request_failed(self, req: Request, why: str, now: float) -> None:
        dev = self.devices.get(req.ieee)
        if dev is None:
            return
        dev.stats.count("timeouts" if why == "timeout" else "tx_failures")
        if req.attempts <= self.retries:
            self._send_request(dev, req, now)
            return
        dev.stats.count("read_failures")
        why_all = f"no answer from {dev.meter_id} after {req.attempts} attempts ({why})"
        req.fail(why_all)
        self.log.warning("zigbee %s: %s: %s failed after %d attempts (%s)", self.bus,
                         dev.meter_id, req.kind, req.attempts, why)
        self._event(kinds.READ_FAILED, dev, "warning", ieee=dev.ieee_hex,
                    request=req.kind, cluster=f"0x{req.cluster:04X}", reason=why,
                    attempts=req.attempts)
        self._setup_answer(dev, req.kind, Outcome.NO_ANSWER, now)

    # -- link quality ----------------------------------------------------------------------

    def _lqi_scan(self, now: float) -> None:
        """Every lqi_interval (and at start), page through the coordinator's neighbor table:
        each device's LQI, and devices nobody has heard yet. Devices behind a router are not
        in it (their LQI is the router's to tell): they keep lqi None."""
        pending = self._lqi_pending
        if pending is not None:
            if now < pending[1]:
                return
            self._lqi_pending = None
            self.lqi_scans["timeouts"] += 1
            self.log.debug("zigbee %s: no Mgmt_Lqi_rsp from the coordinator", self.bus)
            self._lqi_next_at = now + self.lqi_interval
        # Also with no device known yet: the table is how silent, polled devices are found.
        if now >= self._lqi_next_at and self.link is not None and self.coordinator_ieee:
            self._lqi_next_at = now + self.lqi_interval
            self._send_lqi(0, now)

    def _send_lqi(self, start: int, now: float) -> None:
        assert self.link is not None
        seq = self.requests.next_seq()
        self._lqi_pending = (seq, now + self.timeout)
        self.link.send(xbee.ExplicitAddressingCommand(
            0, self.coordinator_ieee, 0x0000, zdo.ZDO_ENDPOINT, zdo.ZDO_ENDPOINT,
            zdo.MGMT_LQI_REQ, zdo.ZDO_PROFILE, 0, 0, zdo.LqiRequest(seq, start).serialize()))

    def _on_lqi(self, msg: zdo.LqiResponse, now: float) -> None:
        if self._lqi_pending is None or msg.seq != self._lqi_pending[0]:
            return  # late or not ours
        self._lqi_pending = None
        if msg.status != 0:
            self.lqi_scans["refused"] += 1
            if self.lqi_scans["refused"] == 1:
                self.log.info("zigbee %s: the coordinator refused Mgmt_Lqi_req (%s): no LQI",
                              self.bus, zdo.ZDO_STATUS.get(msg.status, msg.status))
            return
        for n in msg.neighbors:
            dev = self.devices.get(n.ieee)
            if dev is None and n.device_type in NEIGHBOR_DEVICE_TYPES:
                # A device that joined before we started and never reports (it must be
                # polled) would otherwise stay unknown for ever: the table introduces it.
                dev = self._device(n.ieee, now)
                dev.nwk = n.nwk
                self.log.info("zigbee %s: %s found in the coordinator's neighbor table "
                              "(nwk 0x%04X)", self.bus, dev.meter_id, n.nwk)
            if dev is not None:
                dev.stats.lqi = n.lqi
        following = msg.start + len(msg.neighbors)
        if msg.neighbors and following < msg.total:
            self._send_lqi(following, now)
        else:
            self.lqi_scans["ok"] += 1

    def _frame_error_event(self, now: float) -> None:
        """Corrupt frames: one aggregated event at most every 60 s (a noisy line would
        otherwise flood the store)."""
        new = self.frame_errors - self._reported_frame_errors
        if new <= 0 or now < self._next_error_event:
            return
        dec = self.link.decoder if self.link else None
        self._event(kinds.CRC_ERROR, None, "warning", bad_frames=new,
                    total_bad_frames=self.frame_errors,
                    checksum_errors=dec.checksum_errors if dec else None,
                    garbage_bytes=dec.garbage_bytes if dec else None)
        self.log.warning("zigbee %s: %d corrupt API frame(s) from the XBee", self.bus, new)
        self._reported_frame_errors = self.frame_errors
        self._next_error_event = now + 60.0


DRIVER = ZigbeeDriver

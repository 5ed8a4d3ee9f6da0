"""Zigbee driver (type ``zigbee``): a Digi XBee coordinator on a serial port, ZCL metering.

One thread owns the port. At start it reads the module's identity (SH/SL, VR, OP, AI) and
sets AO=1 so received data arrives as Explicit Rx Indicator frames (0x91) with their
endpoint/cluster/profile. Each device then goes through a short setup, one request at a
time: read the Metering scaling (UnitOfMeasure, Multiplier, Divisor, formatting), probe the
Electrical Measurement AC multipliers/divisors, read Basic (manufacturer, model), bind and
configure reporting. A device that refuses binding or reporting is polled instead.

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

import collections
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..config import (ID, SERIAL_SCHEMA, DriverSchema, FieldSpec, Schema, boolean, integer,
                      list_of, mapping, number, one_of_ints, text)
from ..model import Event, Reading, now_ms
from ..protocols import xbee, zcl, zdo
from .backoff import Backoff
from .base import Driver, RecordSink
from .decode_errors import DecodeErrors
from .zigbee_values import (AC_POLL_ATTRS, AC_SCALE_ATTRS, BASIC_ATTRS,  # noqa: F401
                            METERING_POLL_ATTRS, METERING_SCALE_ATTRS, METERING_STATUS,
                            QUALITY_ROUNDED, AcScale, Invalid, MeteringScale, is_integer)
from . import zigbee_values as zvalues
from .zigbee_setup import CLUSTER as SETUP_CLUSTER, DeviceSetup, Effect, Outcome, Step
from .zigbee_link import (OUR_ENDPOINT, XBeeLink, XBeeLinkError, open_network,  # noqa: F401
                          open_port)
from .. import events as kinds

HELD_VALUES_MAX = 32          # values held per device while its scaling is unknown

# ---------------------------------------------------------------------------- options


# Neighbor table device types worth reading (Zigbee spec Table 2.128): router, end device.
NEIGHBOR_DEVICE_TYPES = frozenset({1, 2})


def parse_ieee(text_: str) -> int:
    digits = text_.replace(":", "").replace("-", "")
    if len(digits) != 16:
        raise ValueError(f"an IEEE address has 16 hex digits, got {text_!r}")
    return int(digits, 16)


DEVICE_SCHEMA = Schema((
    FieldSpec("ieee", text("a 64-bit IEEE address: 16 hex digits, optionally separated by "
                           "':' or '-'", r"(?:[0-9A-Fa-f]{2}[:-]?){7}[0-9A-Fa-f]{2}"),
              help="the device's IEEE (EUI-64) address, e.g. 00:0d:6f:00:0a:bc:de:f0"),
    FieldSpec("id", ID, None, help="meter id in readings; default: the IEEE address as 16 "
                                   "lowercase hex digits"),
    FieldSpec("endpoint", integer(1, 240), None, help="endpoint of its Metering cluster; "
                                                     "default: the driver's endpoint"),
    FieldSpec("poll", boolean(), False, help="poll it instead of configuring reporting"),
    FieldSpec("expected_interval_s", number(gt=0, what="a number of seconds"), None,
              help="how often it should be heard from; default: report_max_s (reporting) "
                   "or poll_interval_s (polled)"),
), help="a device known in advance (optional: joining devices are found by themselves)")


def _report_rule(v: dict[str, Any]) -> list[tuple[str, str]]:
    if v["report_min_s"] > v["report_max_s"]:
        return [("report_min_s", f"expected a number <= report_max_s ({v['report_max_s']}), "
                                 f"got {v['report_min_s']}")]
    return []


SCHEMA = DriverSchema((
    FieldSpec("serial", mapping(SERIAL_SCHEMA), help="the XBee's serial port (AP=1 or AP=2)"),
    FieldSpec("api_mode", one_of_ints(1, 2), 2,
              help="the module's AP setting: 2 = escaped (recommended), 1 = unescaped"),
    FieldSpec("profile", one_of_ints(0x0104, 0x0109), 0x0104,
              help="default profile of requests: 0x0104 Home Automation, 0x0109 Smart Energy "
                   "(learned per device from what it sends)"),
    FieldSpec("endpoint", integer(1, 240), 1, help="default device endpoint (learned per "
                                                   "device from what it sends)"),
    FieldSpec("poll_interval_s", number(gt=0, what="a number of seconds"), 300,
              help="how often devices that do not report are read"),
    FieldSpec("report_min_s", integer(0, 65535), 30, help="Configure Reporting minimum "
                                                          "interval"),
    FieldSpec("report_max_s", integer(1, 65534), 300, help="Configure Reporting maximum "
                                                           "interval"),
    FieldSpec("response_timeout_s", number(gt=0, what="a number of seconds"), 10,
              help="how long to wait for a device's (or the module's) answer"),
    FieldSpec("retries", integer(0, 10), 2, help="resends of an unanswered request"),
    FieldSpec("silence_factor", number(ge=1, what="a number"), 2,
              help="a device is silent after this many expected intervals without a frame"),
    FieldSpec("rssi_interval_s", number(gt=0, what="a number of seconds"), 60,
              help="least time between two RSSI (AT DB) samples of one device"),
    FieldSpec("lqi_interval_s", number(gt=0, what="a number of seconds"), 300,
              help="how often the coordinator's neighbor table (Mgmt_Lqi_req) is read for "
                   "each device's LQI"),
    FieldSpec("devices", list_of(DEVICE_SCHEMA, unique_key="ieee"), [],
              help="devices known in advance, to name them or force polling"),
), check=_report_rule, help="Digi XBee Zigbee coordinator: Smart Energy / HA metering")


# ---------------------------------------------------------------------------- device state

# Request kind (also the ``request`` of a ``meter.read_failed`` event) -> its set-up step.
REQUEST_STEP: dict[str, Step] = {"discover_endpoints": Step.DISCOVER,
                                 "discover_descriptor": Step.DISCOVER,
                                 **{s.value: s for s in Step if s is not Step.READY}}




@dataclass
class Device:
    ieee: int
    meter_id: str
    endpoint: int
    profile: int
    force_poll: bool = False
    expected_interval_s: float | None = None
    nwk: int = xbee.UNKNOWN16
    metering: MeteringScale | None = None
    ac: AcScale | None = None
    manufacturer: str | None = None
    model: str | None = None
    setup: DeviceSetup = field(default_factory=DeviceSetup)
    busy: bool = False
    next_setup_at: float = 0.0
    next_poll_at: float = 0.0
    next_rssi_at: float = 0.0
    last_seen: float = 0.0
    last_seen_ms: int | None = None
    silent: bool = False
    last_status: int | None = None
    held: list = field(default_factory=list)
    rssi_dbm: int | None = None
    lqi: int | None = None  # as the coordinator's neighbor table rates the link (0-255)
    ep_candidates: list = field(default_factory=list)  # endpoints still to describe
    stats: collections.Counter = field(default_factory=collections.Counter)

    def restart_setup(self, now: float) -> None:
        self.setup.restart()  # a rejoined device may be another: forget what was learnt
        self.metering = self.ac = None
        self.busy = False
        self.next_setup_at = now

    def polled_clusters(self) -> list[int]:
        return self.setup.polled_clusters()


@dataclass
class Request:
    """A ZCL or ZDO request awaiting its answer (matched by device and sequence number)."""

    ieee: int
    kind: str
    cluster: int
    zdo: bool
    build: Callable[[int], bytes]  # seq -> payload, so a resend gets a fresh seq
    seq: int = 0
    deadline: float = 0.0
    attempts: int = 0
    future: Future | None = None  # a console `read ID`: its records, or why it failed

    def fail(self, why: str) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(RuntimeError(why))


class _SessionRestart(Exception):
    """The module reset: run the start-up sequence again."""


# ---------------------------------------------------------------------------- driver


class ZigbeeDriver(Driver):
    type_name = "zigbee"

    def __init__(self, name: str, options: Mapping[str, Any], sink: RecordSink) -> None:
        super().__init__(name, options, sink)
        o = self.options
        self.serial_opts: dict[str, Any] = dict(o["serial"])
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
        self._requests: dict[tuple[int, int], Request] = {}
        self._seq = 0
        self._out: list[Any] = []
        self._lock = threading.Lock()
        self._commands: "queue.Queue[tuple[str, Any, Future]]" = queue.Queue()
        self._rssi_busy = False
        self._restart = False
        self.sessions = 0

    # -- public, thread-safe ---------------------------------------------------------

    def meter_stats(self) -> dict[str, dict[str, Any]]:
        """Per-device counters and link quality, for diagnostics (a snapshot)."""
        with self._lock:
            out = {}
            for d in self.devices.values():
                m = d.metering
                out[d.meter_id] = {
                    **dict(d.stats), "ieee": xbee.eui64_hex(d.ieee), "nwk": d.nwk,
                    "rssi_dbm": d.rssi_dbm, "lqi": d.lqi, "last_seen_ms": d.last_seen_ms,
                    "silent": d.silent, "manufacturer": d.manufacturer, "model": d.model,
                    "scaling_known": m is not None,
                    "unit": m.units[0] if m else None,
                    "multiplier": m.multiplier if m else None,
                    "divisor": m.divisor if m else None,
                    "reporting": {f"0x{c:04X}": s for c, s in d.setup.reporting.items()},
                }
            return out

    def permit_join(self, seconds: int, timeout: float | None = None) -> list[str]:
        """Open the network for ``seconds`` (0 closes), from any thread: the control socket's
        ``permit-join`` capability. The driver thread owns the port, so the work is queued to
        it; this waits for the outcome and returns the steps done."""
        seconds = int(seconds)
        if not 0 <= seconds <= 254:
            raise ValueError("permit-join seconds must be 0..254 (0 closes the network)")
        if self.link is None or not self.is_alive():
            raise RuntimeError(f"zigbee bus {self.bus}: the XBee is not connected "
                               f"(port {self.serial_opts.get('port')} down or starting)")
        fut: Future = Future()
        self._commands.put(("permit_join", seconds, fut))
        return fut.result(timeout if timeout is not None else 3 * self.timeout + 5)

    def read_now(self, meter_id: str, timeout: float | None = None) -> list[Any]:
        """``read ID``: a ZCL Read Attributes of the device's Metering values now, from any
        thread. The driver thread owns the port, so the read is queued to it; this waits
        at most the request's retries times the response timeout. The records are stored
        like any other; KeyError for a meter this bus does not know."""
        with self._lock:
            known = any(d.meter_id == meter_id for d in self.devices.values())
        if not known:
            raise KeyError(meter_id)
        if self.link is None or not self.is_alive():
            raise RuntimeError(f"zigbee bus {self.bus}: the XBee is not connected "
                               f"(port {self.serial_opts.get('port')} down or starting)")
        wait = timeout if timeout is not None else (self.retries + 1) * self.timeout + 5
        fut: Future = Future()
        self._commands.put(("read", meter_id, fut))
        try:
            return fut.result(wait)
        except FutureTimeout:
            fut.cancel()
            raise RuntimeError(f"no answer from {meter_id} within {wait:g} s") from None

    def _console_read(self, meter_id: str, fut: Future) -> None:
        dev = next((d for d in self.devices.values() if d.meter_id == meter_id), None)
        if dev is None:
            fut.set_exception(KeyError(meter_id))
            return
        if dev.metering is None:
            fut.set_exception(RuntimeError(
                f"{meter_id}: its Metering scaling is not known yet (setup: "
                f"{', '.join(dev.setup.remaining()) or 'waiting'}), so its values cannot be read"))
            return
        self._send_request(dev, Request(
            dev.ieee, "console_read", zcl.METERING, False,
            lambda seq: zcl.general_frame(zcl.ReadAttributes(METERING_POLL_ATTRS), seq),
            future=fut), time.monotonic())

    def bus_state(self) -> dict[str, Any]:
        """The coordinator and the line's health, for the console's bus summary."""
        dec = self.link.decoder if self.link is not None else None
        return {"connected": self.link is not None, "coordinator": dict(self.module),
                "sessions": self.sessions, "bad_frames": self.frame_errors,
                "checksum_errors": dec.checksum_errors if dec else None,
                "devices": len(self.devices), "lqi_scans": dict(self.lqi_scans)}

    # -- thread ------------------------------------------------------------------------

    def loop(self) -> None:
        import serial

        from .serialport import SerialPortError, write_frame
        backoff = Backoff(min_s=0.5, max_s=60)
        port = self.serial_opts.get("port")
        port_ok = True
        while not self.stopping.is_set():
            try:
                ser = open_port(self.serial_opts)
            except SerialPortError as exc:
                if port_ok:
                    self.log.error("zigbee %s: %s; retrying", self.bus, exc)
                    self._event(kinds.PORT_ERROR, None, "error", port=port, error=str(exc))
                    self._flush()
                port_ok = False
                self.stopping.wait(backoff.fail())
                continue
            try:
                ser.timeout = 0.05
                self.link = XBeeLink(ser, self.escaped, self._on_frame,
                                     lambda data: write_frame(ser, data, self.serial_opts),
                                     self._on_undecodable)
                while not self.stopping.is_set():
                    self._restart = False
                    if not self._start_session():
                        break
                    port_ok = True
                    backoff.ok()
                    try:
                        self._run_session()
                    except _SessionRestart:
                        continue
                    break
            except (serial.SerialException, OSError) as exc:
                self.log.error("zigbee %s: serial port %s failed: %s; reopening", self.bus,
                               port, exc)
                self._event(kinds.PORT_ERROR, None, "error", port=port, error=str(exc))
                port_ok = False
            finally:
                self._flush()
                self.link = None
                try:
                    ser.close()
                except (serial.SerialException, OSError):
                    pass
            if not self.stopping.is_set():
                self.stopping.wait(backoff.fail())

    def _start_session(self) -> bool:
        """Read the module's identity and set AO=1; False (after logging) if it won't answer."""
        link = self.link
        assert link is not None
        self.sessions += 1
        t = self.timeout
        try:
            sh = link.at("SH", timeout=t, stopping=self.stopping).data
            sl = link.at("SL", timeout=t, stopping=self.stopping).data
            vr = link.at("VR", timeout=t, stopping=self.stopping).data
            op = link.at("OP", timeout=t, stopping=self.stopping).data
            ai = link.at("AI", timeout=t, stopping=self.stopping).data
            link.at("AO", b"\x01", timeout=t, stopping=self.stopping)
            link.at("AC", timeout=t, stopping=self.stopping)
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

    def _run_session(self) -> None:
        link = self.link
        assert link is not None
        next_tick = 0.0
        while not self.stopping.is_set():
            link.pump()
            now = time.monotonic()
            if now >= next_tick or self._out:
                self._tick(now)
                next_tick = now + 0.05
            self._flush()
            if self._restart:
                raise _SessionRestart()

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
            dev = Device(ieee, cfg.get("id") or xbee.eui64_hex(ieee),
                         cfg.get("endpoint") or self.default_endpoint, self.default_profile,
                         bool(cfg.get("poll", False)), cfg.get("expected_interval_s"))
            dev.setup = DeviceSetup(dev.force_poll, bool(cfg.get("endpoint")))
            dev.last_seen = now
            dev.restart_setup(now)
            with self._lock:
                self.devices[ieee] = dev
            self.log.info("zigbee %s: device %s (%s)", self.bus, xbee.eui64_hex(ieee),
                          dev.meter_id)
        return dev

    def _next_seq(self) -> int:
        for _ in range(256):
            self._seq = (self._seq + 1) & 0xFF
            if not any(k[1] == self._seq for k in self._requests):
                return self._seq
        return self._seq

    def _send_request(self, dev: Device, req: Request, now: float) -> None:
        link = self.link
        assert link is not None
        req.seq = self._next_seq()
        req.attempts += 1
        req.deadline = now + self.timeout
        self._requests[(dev.ieee, req.seq)] = req
        fid = link.ids.allocate((dev.ieee, req.seq), req.deadline)
        if req.zdo:
            frame = xbee.ExplicitAddressingCommand(
                fid, dev.ieee, dev.nwk, zdo.ZDO_ENDPOINT, zdo.ZDO_ENDPOINT, req.cluster,
                zdo.ZDO_PROFILE, 0, 0, req.build(req.seq))
        else:
            frame = xbee.ExplicitAddressingCommand(
                fid, dev.ieee, dev.nwk, OUR_ENDPOINT, dev.endpoint, req.cluster, dev.profile,
                0, 0, req.build(req.seq))
        dev.stats["requests"] += 1
        if req.attempts > 1:
            dev.stats["retries"] += 1
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
        self._run_commands()
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
        seq = self._next_seq()
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
                with self._lock:
                    dev.lqi = n.lqi
        following = msg.start + len(msg.neighbors)
        if msg.neighbors and following < msg.total:
            self._send_lqi(following, now)
        else:
            self.lqi_scans["ok"] += 1

    def _run_commands(self) -> None:
        while True:
            try:
                name, arg, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            if name == "read":
                self._console_read(arg, fut)
                continue
            try:
                assert self.link is not None and name == "permit_join"
                steps = open_network(self.link, arg, self._next_seq(), self.timeout,
                                     self.stopping)
                self.log.info("zigbee %s: network open for %d s", self.bus, arg)
                self._event(kinds.PERMIT_JOIN, None, "info", seconds=arg)
                fut.set_result(steps)
            except (XBeeLinkError, ValueError) as exc:
                fut.set_exception(exc)

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
        elif step is Step.CONFIGURE_METERING:
            self._zcl_request(dev, step.value, M, zcl.ConfigureReporting((
                zcl.ReportingConfig(0, 0x0000, zcl.U48, self.report_min, self.report_max, 1),
                zcl.ReportingConfig(0, 0x0400, zcl.S24, self.report_min, self.report_max, 1),
            )), now)
        elif step is Step.CONFIGURE_AC:
            self._zcl_request(dev, step.value, AC, zcl.ConfigureReporting(tuple(
                zcl.ReportingConfig(0, a, t, self.report_min, self.report_max, 1)
                for a, t in ((0x0505, zcl.U16), (0x0508, zcl.U16), (0x050B, zcl.S16)))), now)

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
        dev.stats["polls"] += 1

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
            dev.stats["silences"] += 1
            self.log.warning("zigbee %s: %s silent for %.1f s (expected every %g s)",
                             self.bus, dev.meter_id, now - dev.last_seen, expected)
            self._event(kinds.SILENT, dev, "warning", ieee=xbee.eui64_hex(dev.ieee),
                        silent_for_s=round(now - dev.last_seen, 1),
                        expected_interval_s=expected, last_seen_ms=dev.last_seen_ms)

    def _expire(self, now: float) -> None:
        assert self.link is not None
        self.link.expire(now)
        for key, req in list(self._requests.items()):
            if req.deadline <= now:
                del self._requests[key]
                self._request_failed(req, "timeout", now)

    def _request_failed(self, req: Request, why: str, now: float) -> None:
        dev = self.devices.get(req.ieee)
        if dev is None:
            return
        dev.stats["timeouts" if why == "timeout" else "tx_failures"] += 1
        if req.attempts <= self.retries:
            self._send_request(dev, req, now)
            return
        dev.stats["read_failures"] += 1
        req.fail(f"no answer from {dev.meter_id} after {req.attempts} attempts ({why})")
        self.log.warning("zigbee %s: %s: %s failed after %d attempts (%s)", self.bus,
                         dev.meter_id, req.kind, req.attempts, why)
        self._event(kinds.READ_FAILED, dev, "warning", ieee=xbee.eui64_hex(dev.ieee),
                    request=req.kind, cluster=f"0x{req.cluster:04X}", reason=why,
                    attempts=req.attempts)
        self._setup_answer(dev, req.kind, Outcome.NO_ANSWER, now)

    # -- incoming ------------------------------------------------------------------------

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
            return
        if isinstance(frame, xbee.ExplicitRxIndicator):
            self._on_rx(frame, now)
        elif isinstance(frame, xbee.TransmitStatus):
            if ctx is not None and not frame.ok:
                req = self._requests.pop(tuple(ctx), None)  # type: ignore[arg-type]
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
            dev.stats["non_zcl_frames"] += 1  # Digi 0xC105 etc.: not ours to read
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
            dev.stats["reports"] += 1
            self._values(dev, f.cluster, [(r.attribute_id, r.value) for r in p.reports], rx)
            if not hdr.disable_default_response:
                self._default_response(dev, f, hdr)
            return
        req = self._requests.pop((dev.ieee, hdr.seq), None)
        if req is None or req.zdo or req.cluster != f.cluster:
            if req is not None:
                self._requests[(dev.ieee, hdr.seq)] = req
            return
        if isinstance(p, zcl.ReadAttributesResponse):
            self._on_read_response(dev, req, p, rx, now)
        elif isinstance(p, zcl.ConfigureReportingResponse):
            ok = p.all_success
            if not ok:
                self.log.info("zigbee %s: %s refused reporting on 0x%04X (%s): polling it",
                              self.bus, dev.meter_id, req.cluster,
                              ", ".join(zcl.status_name(r.status) for r in p.records))
            self._setup_answer(dev, req.kind, Outcome.OK if ok else Outcome.REFUSED, now)
        elif isinstance(p, zcl.DefaultResponse):
            if p.status == zcl.SUCCESS:
                self._requests[(dev.ieee, hdr.seq)] = req  # not the answer we wait for
                return
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

    def _decode_error(self, dev: Device | None, frame: bytes, exc: Exception,
                      **detail: Any) -> None:
        """A frame a codec failed on: counted, reported (rate-limited), and the bus goes on."""
        if dev is not None:
            dev.stats["decode_errors"] += 1
        ev = self.decode_errors.report(dev.meter_id if dev else None, frame, exc, **detail)
        if ev is not None:
            self.log.warning("zigbee %s: %s: undecodable frame (%s: %s)", self.bus,
                             dev.meter_id if dev else "unknown device", type(exc).__name__, exc)
            self._out.append(ev)

    def _on_undecodable(self, raw: bytes, exc: Exception) -> None:
        self.frame_errors += 1
        self._decode_error(None, raw, exc, layer="xbee")

    def _heard(self, dev: Device, nwk: int, now: float, rx: int) -> None:
        dev.stats["frames"] += 1
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
                    with self._lock:
                        dev.rssi_dbm = -resp.data[0]  # DB: RSSI of the last packet, -dBm
            self.link.at_async("DB", b"", now + self.timeout, got)

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
        req = self._requests.pop((dev.ieee, msg.seq), None)
        if req is None or not req.zdo or req.cluster | 0x8000 != f.cluster:
            if req is not None:
                self._requests[(dev.ieee, msg.seq)] = req
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

    # -- endpoint discovery (setup step "discover") ----------------------------------------

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
        for key in [k for k in self._requests if k[0] == ieee]:
            self._requests.pop(key).fail(f"{dev.meter_id} rejoined the network during the read")
        dev.restart_setup(now)
        dev.stats["announces"] += 1
        self._heard(dev, nwk, now, now_ms())
        self.log.info("zigbee %s: %s %s (nwk 0x%04X) via %s", self.bus, dev.meter_id,
                      "rejoined" if known else "joined", nwk, via)
        self._event(kinds.JOINED, dev, "info", ieee=xbee.eui64_hex(ieee), nwk=nwk,
                    rejoin=known, via=via, **detail)

    def _on_read_response(self, dev: Device, req: Request, p: zcl.ReadAttributesResponse,
                          rx: int, now: float) -> None:
        recs = {r.attribute_id: r for r in p.records}
        values = [(r.attribute_id, r.value) for r in p.records
                  if r.status == zcl.SUCCESS and r.value is not None]
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
            self._release_held(dev, {(req.cluster, a) for a, _ in values})
            self._values(dev, req.cluster, values, rx)
            self._setup_answer(dev, req.kind, Outcome.OK, now)
        elif req.kind == "ac_scale":
            ac = None
            if zvalues.has_ac(recs):
                ac, problems = zvalues.ac_scale(recs)
                if problems:
                    self._bad_scaling(dev, "0x0B04", problems)
                if ac is not None:
                    dev.ac = ac
                    self._release_held(dev, {(req.cluster, a) for a, _ in values})
                    self._values(dev, req.cluster, values, rx)
            self._setup_answer(dev, req.kind, Outcome.UNUSABLE if ac is None else Outcome.OK,
                               now)
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

    # -- scaling -------------------------------------------------------------------------

    def _bad_scaling(self, dev: Device, cluster: str, problems: list[str]) -> None:
        dev.stats["bad_scaling"] += 1
        self._event(kinds.BAD_SCALING, dev, "warning", ieee=xbee.eui64_hex(dev.ieee),
                    cluster=cluster, problems=problems)

    def _release_held(self, dev: Device, fresh: set[tuple[int, int]] = frozenset()) -> None:
        """Publish the values that waited for the scaling, except those the scale read
        itself brought newer (a report held at start-up and the read that follows it
        would otherwise be the same reading twice)."""
        held, dev.held = dev.held, []
        for cluster, attr, tv, rx in held:
            if (cluster, attr) in fresh:
                dev.stats["held_superseded"] += 1
                continue
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
        if out is None:  # its scaling is not known yet: hold it (bounded)
            if len(dev.held) >= HELD_VALUES_MAX:
                dev.held.pop(0)
                dev.stats["held_dropped"] += 1
            dev.held.append((cluster, attr, tv, rx))
            dev.stats["held"] += 1
        elif isinstance(out, Invalid):
            self._invalid(dev, out)
        else:
            dev.stats["readings"] += 1
            self._out.append(out)

    def _invalid(self, dev: Device, bad: Invalid) -> None:
        dev.stats["invalid_values"] += 1
        raw = bad.raw
        self.log.warning("zigbee %s: %s: %s = %s (%s): not a reading", self.bus, dev.meter_id,
                         zcl.attribute_name(bad.cluster, bad.attribute),
                         f"0x{raw & ((1 << 64) - 1):X}" if raw is not None else "?",
                         bad.reason)
        self._event(kinds.INVALID_VALUE, dev, "warning", **bad.detail(xbee.eui64_hex(dev.ieee)))

    # -- bus-level diagnostics -------------------------------------------------------------

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

"""A simulated Digi XBee Zigbee coordinator with metering devices, on a pseudo-terminal.

The driver opens ``sim.device`` (the pty slave) with pyserial exactly as it would open
/dev/ttyUSB0; the simulator holds the master side. It answers AT commands (SH, SL, VR, OP,
ID, OI, AI, AO, AC, NJ, CB, DB, WR), makes its devices join (Device_annce), answers their
Read Attributes / Configure Reporting / Bind requests, reports, and misbehaves on purpose:
odd multipliers/divisors, a BCD unit, a device that refuses reporting (polled), one that goes
silent, one that reports the uint48 "invalid" sentinel, corrupted frames and line garbage.

    python -m tools.sim.xbee --devices 6 --report-interval 2     # prints the pty path
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.protocols import xbee, zcl, zdo

from .pty import PtyEndpoint

COORDINATOR_IEEE = 0x0013A20041A2B3C4
EXT_PAN_ID = 0x00000000000A5E11
PAN16 = 0x1A62
FIRMWARE = b"\x21\xA7"
HA, SE = 0x0104, 0x0109


@dataclass
class SimDevice:
    """One simulated metering device; raw register values as the device would send them."""

    ieee: int
    nwk: int
    kind: str = "electric"
    endpoint: int = 1
    profile: int = HA
    unit: int = 0x00                # UnitOfMeasure (0x80+ = BCD coded)
    multiplier: int = 1
    divisor: int = 1000
    summation_fmt: int = 0x2B       # 5 digits left, 3 right
    demand_fmt: int = 0x2B
    device_type: int = 0            # MeteringDeviceType (0 electric, 1 gas, 2 water)
    summation: int = 1_234_567
    demand: int = 850
    step: int = 7                   # raw summation increase per report
    supports_reporting: bool = True
    ac: bool = False                # has Electrical Measurement 0x0B04
    voltage: int = 2301             # RMSVoltage raw; ACVoltage 1/10 -> 230.1 V
    current: int = 523              # RMSCurrent raw; ACCurrent 1/100 -> 5.23 A
    power: int = -1204              # ActivePower raw (W); negative = export
    silent_after_s: float | None = None
    invalid_every: int = 0          # every Nth report carries 0xFFFFFFFFFFFF
    join_on_permit: bool = False
    ignore_reads_until_s: float = 0.0  # Metering reads unanswered until then (slow device)
    manufacturer: str = "SimMeter Co"
    model: str = "SIM-EM1"
    rssi: int = 48                  # what AT DB answers after its frames (-dBm)
    lqi: int = 200                  # its link in the coordinator's neighbor table
    other_endpoints: tuple = ()     # endpoints without Metering (listed before its own)
    # state
    joined: bool = False
    reporting: set = field(default_factory=set)
    report_interval: float = 1.0
    next_report: float = 0.0
    reports_sent: int = 0

    @property
    def meter_id(self) -> str:
        return xbee.eui64_hex(self.ieee)

    def attributes(self, cluster: int) -> dict[int, zcl.TypedValue] | None:
        T = zcl.TypedValue
        summ, demand = self.summation, self.demand
        if self.unit & zcl.UNIT_BCD:  # the register's decimal digits as BCD nibbles
            summ, demand = int(str(summ), 16), int(str(abs(demand)), 16)
        if cluster == zcl.BASIC:
            return {0x0000: T(zcl.U8, 3), 0x0004: T(zcl.STR, self.manufacturer),
                    0x0005: T(zcl.STR, self.model), 0x0007: T(zcl.ENUM8, 1)}
        if cluster == zcl.METERING:
            return {0x0000: T(zcl.U48, summ), 0x0200: T(zcl.BMP8, 0),
                    0x0300: T(zcl.ENUM8, self.unit), 0x0301: T(zcl.U24, self.multiplier),
                    0x0302: T(zcl.U24, self.divisor), 0x0303: T(zcl.BMP8, self.summation_fmt),
                    0x0304: T(zcl.BMP8, self.demand_fmt),
                    0x0306: T(zcl.BMP8, self.device_type), 0x0400: T(zcl.S24, demand)}
        if cluster == zcl.ELECTRICAL_MEASUREMENT and self.ac:
            return {0x0505: T(zcl.U16, self.voltage), 0x0508: T(zcl.U16, self.current),
                    0x050B: T(zcl.S16, self.power), 0x0600: T(zcl.U16, 1),
                    0x0601: T(zcl.U16, 10), 0x0602: T(zcl.U16, 1), 0x0603: T(zcl.U16, 100),
                    0x0604: T(zcl.U16, 1), 0x0605: T(zcl.U16, 1)}
        return None


def default_devices(n: int = 6, profile: int = HA) -> list[SimDevice]:
    """A mixed population; the first six cover every case the driver must handle."""
    kinds = ["electric", "odd", "gas", "water_polled", "silent", "invalid"]
    out = []
    for i in range(n):
        kind = kinds[i] if i < len(kinds) else "electric"
        d = SimDevice(0x00124B0001A00000 + i + 1, 0x1000 + i * 0x111, kind=kind,
                      profile=profile, summation=1_000_000 + 12_345 * i, rssi=40 + 3 * i)
        if kind == "electric":
            d.ac = True
        elif kind == "odd":       # 10/3: not a terminating decimal -> rounded readings
            d.multiplier, d.divisor, d.summation_fmt = 10, 3, 0x2A
        elif kind == "gas":       # m3 with 1/1000 resolution, BCD coded
            d.unit, d.device_type, d.multiplier, d.divisor = 0x81, 1, 1, 1000
            d.model = "SIM-GAS"
        elif kind == "water_polled":  # litres, refuses binding/reporting: must be polled
            d.unit, d.device_type, d.divisor, d.summation_fmt = 0x07, 2, 1, 0x30
            d.supports_reporting, d.model = False, "SIM-WTR"
        elif kind == "silent":
            d.silent_after_s = 3.0
        elif kind == "invalid":
            d.invalid_every = 2
        out.append(d)
    return out


class XBeeSimulator:
    """The coordinator. Thread-safe controls: :meth:`announce`, :meth:`set_scaling`."""

    def __init__(self, devices: list[SimDevice], *, escaped: bool = True,
                 report_interval_s: float = 1.0, corrupt_every: int = 0,
                 garbage_every: int = 0, join_delay_s: float = 0.3, seed: int = 0,
                 preconfigured: bool = False) -> None:
        # preconfigured: the network existed before the gateway (re)started, so devices that
        # support it already report (their bindings and reporting survive a coordinator
        # restart) - the usual case in the field, and the demo's.
        self.preconfigured = preconfigured
        self.devices = {d.ieee: d for d in devices}
        self.escaped = escaped
        self.report_interval_s = report_interval_s
        self.corrupt_every = corrupt_every
        self.garbage_every = garbage_every
        self.join_delay_s = join_delay_s
        self.rng = random.Random(seed)
        # A write with no room is dropped at once, like a UART overrun nobody reads.
        self.pty = PtyEndpoint(self._on_data, self._on_tick, 0.02, name="sim-xbee",
                               drop_after_s=0.0, start=False)
        self.device = self.pty.device
        self.decoder = xbee.FrameDecoder(escaped=escaped)
        self.lock = threading.RLock()
        self.stats: collections.Counter = collections.Counter()
        self.at_log: list[tuple[str, bytes]] = []
        self.requests: list[tuple[str, int, str]] = []  # (meter id, cluster, what)
        self.ao = 0
        self.nj = 0
        self.join_open_until = 0.0
        self.last_rssi = 0
        self.started = time.monotonic()
        self._zdo_seq = 0
        self._report_seq = 0
        self._frames_out = 0

    def start(self) -> "XBeeSimulator":
        self.pty.start()
        return self

    def stop(self) -> None:
        self.pty.stop()

    # -- controls (any thread) ---------------------------------------------------------

    def announce(self, ieee: int) -> None:
        """The device (re)joins: sends Device_annce again (e.g. after a reset)."""
        with self.lock:
            dev = self.devices[ieee]
            dev.reporting.clear()
            self._announce(dev)

    def inject(self, frame: xbee.Frame | bytes) -> None:
        """Send an arbitrary API frame (or raw bytes) to the driver, e.g. a malformed one."""
        with self.lock:
            if isinstance(frame, bytes):
                self._write(frame)
            else:
                self._send(frame)

    def set_scaling(self, ieee: int, multiplier: int, divisor: int) -> None:
        with self.lock:
            d = self.devices[ieee]
            d.multiplier, d.divisor = multiplier, divisor

    # -- output ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        dropped = self.pty.dropped
        self.pty.write(data)
        if self.pty.dropped != dropped:
            self.stats["dropped_writes"] += 1  # nobody reading: like a UART overrun
        else:
            self.stats["bytes_out"] += len(data)

    def _send(self, frame: xbee.Frame, corruptible: bool = False) -> None:
        data = frame.serialize()
        self._frames_out += 1
        if corruptible and self.corrupt_every and self._frames_out % self.corrupt_every == 0:
            body = len(data).to_bytes(2, "big") + data + bytes((xbee.checksum(data) ^ 0x5A,))
            self._write(bytes((xbee.START,)) + (xbee.escape(body) if self.escaped else body))
            self.stats["corrupted"] += 1
        else:
            self._write(xbee.encode_frame(data, self.escaped))
        if self.garbage_every and self._frames_out % self.garbage_every == 0:
            self._write(bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 9))))
            self.stats["garbage"] += 1
        self.stats["frames_out"] += 1

    def _from_device(self, dev: SimDevice, cluster: int, profile: int, data: bytes,
                     src_ep: int | None = None, dst_ep: int = 1, options: int = 0x01,
                     corruptible: bool = False) -> None:
        self.last_rssi = dev.rssi
        self._send(xbee.ExplicitRxIndicator(
            dev.ieee, dev.nwk, dev.endpoint if src_ep is None else src_ep, dst_ep, cluster,
            profile, options, data), corruptible)

    def _announce(self, dev: SimDevice) -> None:
        self._zdo_seq = (self._zdo_seq + 1) & 0xFF
        msg = zdo.DeviceAnnounce(self._zdo_seq, dev.nwk, dev.ieee, 0x8E)
        self._from_device(dev, zdo.DEVICE_ANNCE, zdo.ZDO_PROFILE, msg.serialize(), 0, 0, 0x02)
        dev.joined = True
        self.stats["announces"] += 1
        if self.preconfigured and dev.supports_reporting:
            dev.reporting.update(c for c in (zcl.METERING, zcl.ELECTRICAL_MEASUREMENT)
                                 if dev.attributes(c) is not None)

    def _silent(self, dev: SimDevice, now: float) -> bool:
        return dev.silent_after_s is not None and now - self.started >= dev.silent_after_s

    # -- loop --------------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        with self.lock:
            self._drain()

    def _on_tick(self) -> None:
        with self.lock:
            self._timers(time.monotonic())

    def _drain(self) -> None:
        while True:
            ev = self.decoder.next_event()
            if ev is xbee.NEED_DATA:
                return
            if isinstance(ev, xbee.BadFrame):
                self.stats["bad_frames_in"] += 1
            elif isinstance(ev, xbee.ATCommand):
                self._on_at(ev)
            elif isinstance(ev, xbee.ExplicitAddressingCommand):
                self._on_explicit(ev)
            else:
                self.stats["ignored_in"] += 1

    def _timers(self, now: float) -> None:
        for dev in self.devices.values():
            if not dev.joined:
                due = now - self.started >= self.join_delay_s
                if dev.join_on_permit:
                    due = now < self.join_open_until
                if due:
                    self._announce(dev)
                continue
            if dev.reporting and now >= dev.next_report and not self._silent(dev, now):
                dev.next_report = now + dev.report_interval
                self._report(dev)

    def _report(self, dev: SimDevice) -> None:
        dev.summation += dev.step
        dev.demand = (dev.demand * 7 + 13) % 4000 + 100
        dev.reports_sent += 1
        T = zcl.TypedValue
        if zcl.METERING in dev.reporting:
            attrs = dev.attributes(zcl.METERING) or {}
            summ = attrs[0x0000]
            if dev.invalid_every and dev.reports_sent % dev.invalid_every == 0:
                summ = T(zcl.U48, 0xFFFFFFFFFFFF)
            self._report_frame(dev, zcl.METERING, (
                zcl.AttributeReport(0x0000, summ), zcl.AttributeReport(0x0400, attrs[0x0400])))
        if zcl.ELECTRICAL_MEASUREMENT in dev.reporting:
            attrs = dev.attributes(zcl.ELECTRICAL_MEASUREMENT) or {}
            self._report_frame(dev, zcl.ELECTRICAL_MEASUREMENT, tuple(
                zcl.AttributeReport(a, attrs[a]) for a in (0x0505, 0x0508, 0x050B)))

    def _report_frame(self, dev: SimDevice, cluster: int,
                      reports: tuple[zcl.AttributeReport, ...]) -> None:
        self._report_seq = (self._report_seq + 1) & 0xFF
        data = zcl.general_frame(zcl.ReportAttributes(reports), self._report_seq,
                                 to_client=True, disable_default_response=False)
        self._from_device(dev, cluster, dev.profile, data, corruptible=True)
        self.stats["reports"] += 1

    # -- requests ----------------------------------------------------------------------

    def _on_at(self, f: xbee.ATCommand) -> None:
        cmd, p = f.command, f.parameter
        self.at_log.append((cmd, p))
        self.stats["at"] += 1
        value: bytes | None = b""
        if cmd == "SH":
            value = (COORDINATOR_IEEE >> 32).to_bytes(4, "big")
        elif cmd == "SL":
            value = (COORDINATOR_IEEE & 0xFFFFFFFF).to_bytes(4, "big")
        elif cmd == "VR":
            value = FIRMWARE
        elif cmd in ("OP", "ID"):
            value = EXT_PAN_ID.to_bytes(8, "big") if not p else b""
        elif cmd == "OI":
            value = PAN16.to_bytes(2, "big")
        elif cmd == "AI":
            value = b"\x00"
        elif cmd == "AO":
            if p:
                self.ao = p[-1]
            else:
                value = bytes((self.ao,))
        elif cmd == "NJ":
            if p:
                self.nj = p[-1]
            else:
                value = bytes((self.nj,))
        elif cmd == "AC":
            if self.nj:
                self.join_open_until = time.monotonic() + self.nj
        elif cmd == "CB":
            if p and p[-1] == 2:
                self.join_open_until = time.monotonic() + 60
        elif cmd == "DB":
            value = bytes((self.last_rssi,))
        elif cmd == "WR":
            pass
        else:
            value = None
        if f.frame_id:
            if value is None:
                self._send(xbee.ATCommandResponse(f.frame_id, cmd, 2))
            else:
                self._send(xbee.ATCommandResponse(f.frame_id, cmd, 0, value))

    def _tx_status(self, f: xbee.ExplicitAddressingCommand, status: int) -> None:
        if f.frame_id:
            self._send(xbee.TransmitStatus(f.frame_id, f.dest16, 0, status, 0))

    def _on_explicit(self, f: xbee.ExplicitAddressingCommand) -> None:
        self.stats["tx_requests"] += 1
        now = time.monotonic()
        if f.dest64 == xbee.BROADCAST64 or f.dest16 in (0xFFFC, 0xFFFD, 0xFFFF):
            self._tx_status(f, 0)
            if f.profile == zdo.ZDO_PROFILE and f.cluster == zdo.MGMT_PERMIT_JOINING_REQ:
                req = zdo.parse_zdo(f.cluster, f.data)
                self.join_open_until = now + req.duration
                self.requests.append(("broadcast", f.cluster, "permit joining"))
            return
        if f.dest64 == COORDINATOR_IEEE or f.dest16 == 0x0000:
            self._tx_status(f, 0)
            if f.profile == zdo.ZDO_PROFILE and f.cluster == zdo.MGMT_LQI_REQ:
                self._neighbor_table(zdo.parse_zdo(f.cluster, f.data))
            return
        dev = self.devices.get(f.dest64)
        if dev is None or not dev.joined or self._silent(dev, now):
            self._tx_status(f, 0x21)  # network ACK failure: nobody answered
            return
        self._tx_status(f, 0)
        if f.profile == zdo.ZDO_PROFILE:
            self._on_zdo(dev, f)
            return
        if f.dst_endpoint not in (dev.endpoint, *dev.other_endpoints):
            self.stats["wrong_endpoint"] += 1  # the APS layer drops it: no answer at all
            return
        try:
            frame = zcl.parse_zcl(f.data)
        except zcl.ZCLDecodeError:
            self.stats["bad_zcl_in"] += 1
            return
        hdr, p = frame.header, frame.payload
        if not hdr.is_global:
            return
        cluster = f.cluster
        attrs = dev.attributes(cluster)
        if f.dst_endpoint != dev.endpoint and cluster != zcl.BASIC:
            attrs = None  # its other endpoints have no Metering: UNSUPPORTED_CLUSTER

        def reply(payload: zcl.Payload) -> None:
            data = zcl.general_frame(payload, hdr.seq, to_client=True,
                                     disable_default_response=True)
            self._from_device(dev, cluster, f.profile, data, src_ep=f.dst_endpoint,
                              dst_ep=f.src_endpoint)  # the addressed endpoint answers

        if isinstance(p, zcl.DefaultResponse):
            self.stats["default_responses_in"] += 1
            return
        if attrs is None:
            reply(zcl.DefaultResponse(hdr.command, zcl.UNSUPPORTED_CLUSTER))
            return
        if isinstance(p, zcl.ReadAttributes):
            self.requests.append((dev.meter_id, cluster, "read"))
            if cluster == zcl.METERING and now - self.started < dev.ignore_reads_until_s:
                self.stats["reads_ignored"] += 1
                return
            reply(zcl.ReadAttributesResponse(tuple(
                zcl.AttributeStatus(a, zcl.SUCCESS, attrs[a]) if a in attrs
                else zcl.AttributeStatus(a, zcl.UNSUPPORTED_ATTRIBUTE)
                for a in p.attribute_ids)))
        elif isinstance(p, zcl.ConfigureReporting):
            self.requests.append((dev.meter_id, cluster, "configure"))
            if dev.supports_reporting:
                dev.reporting.add(cluster)
                longest = max((r.max_interval for r in p.records), default=0)
                dev.report_interval = min(self.report_interval_s, longest or 1e9)
                dev.next_report = time.monotonic() + dev.report_interval
                reply(zcl.ConfigureReportingResponse((zcl.ReportingStatus(zcl.SUCCESS),)))
            else:
                reply(zcl.ConfigureReportingResponse(tuple(
                    zcl.ReportingStatus(zcl.UNREPORTABLE_ATTRIBUTE, 0, r.attribute_id)
                    for r in p.records)))
        else:
            reply(zcl.DefaultResponse(hdr.command, zcl.UNSUP_GENERAL_COMMAND))

    LQI_PAGE = 3  # neighbors per Mgmt_Lqi_rsp, as small stacks answer: makes callers page

    def _neighbor_table(self, req: zdo.LqiRequest) -> None:
        """The coordinator answers its own Mgmt_Lqi_req: its joined devices as children."""
        self.stats["lqi_requests"] += 1
        table = [zdo.Neighbor(EXT_PAN_ID, d.ieee, d.nwk, 2, 1, 1, 0, 1, d.lqi)
                 for d in self.devices.values() if d.joined]
        page = tuple(table[req.start:req.start + self.LQI_PAGE])
        rsp = zdo.LqiResponse(req.seq, 0, len(table), req.start, page)
        self._send(xbee.ExplicitRxIndicator(COORDINATOR_IEEE, 0x0000, 0, 0, zdo.MGMT_LQI_RSP,
                                            zdo.ZDO_PROFILE, 0x01, rsp.serialize()))

    def _on_zdo(self, dev: SimDevice, f: xbee.ExplicitAddressingCommand) -> None:
        if f.cluster == zdo.ACTIVE_EP_REQ:
            req = zdo.parse_zdo(f.cluster, f.data)
            self.requests.append((dev.meter_id, f.cluster, "active endpoints"))
            rsp: Any = zdo.ActiveEpResponse(req.seq, 0, dev.nwk,
                                            (*dev.other_endpoints, dev.endpoint))
            self._from_device(dev, zdo.ACTIVE_EP_RSP, zdo.ZDO_PROFILE, rsp.serialize(), 0, 0)
            return
        if f.cluster == zdo.SIMPLE_DESC_REQ:
            req = zdo.parse_zdo(f.cluster, f.data)
            self.requests.append((dev.meter_id, req.endpoint, "simple descriptor"))
            if req.endpoint == dev.endpoint:
                clusters = (zcl.BASIC, zcl.METERING) + ((zcl.ELECTRICAL_MEASUREMENT,)
                                                        if dev.ac else ())
                rsp = zdo.SimpleDescResponse(req.seq, 0, dev.nwk, dev.endpoint, dev.profile,
                                             0x0501, 1, clusters, ())
            elif req.endpoint in dev.other_endpoints:
                rsp = zdo.SimpleDescResponse(req.seq, 0, dev.nwk, req.endpoint, dev.profile,
                                             0x0002, 1, (zcl.BASIC, 0x0006), ())
            else:
                rsp = zdo.SimpleDescResponse(req.seq, 0x82, dev.nwk)  # INVALID_EP
            self._from_device(dev, zdo.SIMPLE_DESC_RSP, zdo.ZDO_PROFILE, rsp.serialize(), 0, 0)
            return
        if f.cluster == zdo.BIND_REQ:
            req = zdo.parse_zdo(f.cluster, f.data)
            self.requests.append((dev.meter_id, req.cluster, "bind"))
            status = 0x00 if dev.supports_reporting else 0x84  # NOT_SUPPORTED
            self._from_device(dev, zdo.BIND_RSP, zdo.ZDO_PROFILE,
                              zdo.StatusResponse(req.seq, status).serialize(), 0, 0)


def start(devices: list[SimDevice] | None = None, n_devices: int = 6, **kw: Any
          ) -> XBeeSimulator:
    """Start a simulator; ``sim.device`` is the pty path for the driver's ``serial.port``."""
    return XBeeSimulator(devices if devices is not None else default_devices(n_devices),
                         **kw).start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.sim.xbee", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--devices", type=int, default=6, help="number of devices (default 6)")
    ap.add_argument("--report-interval", type=float, default=5.0, help="seconds")
    ap.add_argument("--api-mode", type=int, choices=(1, 2), default=2)
    ap.add_argument("--corrupt-every", type=int, default=0,
                    help="send every Nth report frame with a bad checksum")
    ap.add_argument("--garbage-every", type=int, default=0,
                    help="send line garbage after every Nth frame")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: never)")
    args = ap.parse_args(argv)
    sim = start(n_devices=args.devices, escaped=args.api_mode == 2,
                report_interval_s=args.report_interval, corrupt_every=args.corrupt_every,
                garbage_every=args.garbage_every)
    print(sim.device, flush=True)
    try:
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        print(dict(sim.stats), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

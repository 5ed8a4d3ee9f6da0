"""A wireless M-Bus USB dongle (IMST iM871A or Amber AMB8465) hearing meters, on a pty.

    python -m tools.sim.wmbus --dongle im871a      # prints the pty path; Ctrl-C stops

The dongle answers its host protocol (set mode, ping, reset, device info / serial number)
and, once put in a link mode, delivers the telegrams of the meters in that mode, each
encrypted with the key that meter uses (security mode 5, mode 7 with AFL/CMAC, ELL
AES-CTR, or none). Registers rise with wall-clock time. A ``replay`` meter sends given
telegrams of a real meter in turn (manufacturer-specific payloads).

Faults per meter (``fault``): ``truncate`` (the end of every telegram is lost),
``crc`` (the dongle's CRC16/checksum of the message is damaged), ``duplicate`` (every
telegram heard twice), ``unsupported`` (a security mode the gateway does not implement).
A wrong key is simply a meter whose key differs from the one the gateway is given.
``compact``: ``mixed`` sends compact frames (CI 0x7B) with a full frame every 8th, ``only``
never sends the full frame (a gateway must have learned the format before).
Dongle faults: ``hang(seconds)`` -- no telegrams and no answers to anything for a while.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

from gateway.protocols.mbus import amb8465, im871a, wireless
from gateway.protocols.mbus import records as rec

from gateway.protocols.mbus.compact import compact_payload

from .pty import PtyEndpoint, serve_forever


@dataclass
class SimRadioMeter:
    ident: str
    manufacturer: str = "KAM"
    version: int = 1
    device_type: int = 0x07          # water
    key: bytes | None = None         # the key this meter encrypts with
    security: str = "mode5"          # none | mode5 | mode7 | ell | replay
    link_mode: str = "T1"
    interval_s: float = 1.0
    fault: str | None = None         # truncate | crc | duplicate | unsupported
    compact: str = "off"             # off | mixed (a full frame every 8th) | only
    rssi_dbm: int = -60              # signal strength the dongle reports
    litres_base: int = 123456
    flow_lph: int = 40
    status: int = 0
    access: int = 0
    sent: int = 0
    next_at: float = 0.0
    frames: list[bytes] = field(default_factory=list)  # replay: telegrams as sent, in turn

    def apl(self, now: float) -> bytes:
        litres = self.litres_base + int(self.flow_lph * (now % 10_000_000) / 3600)
        return (rec.encode_record(b"\x13", *rec.encode_int(litres, 4))                   # l
                + rec.encode_record(b"\x13", *rec.encode_int(self.litres_base, 4), storage=1)
                + rec.encode_record(b"\x3b", *rec.encode_int(self.flow_lph, 2))          # l/h
                + rec.encode_record(b"\xfd\x17", *rec.encode_int(0, 1)))               # errors

    def telegram(self, now: float) -> bytes:
        self.access = (self.access + 1) & 0xFF
        self.sent += 1
        if self.security == "replay":  # a real meter's telegrams (manufacturer formats)
            return self.frames[(self.sent - 1) % len(self.frames)]
        apl = self.apl(now)
        args = (self.manufacturer, self.ident, self.version, self.device_type)
        if self.fault == "unsupported":
            head = wireless.dll(0x44, *args)
            cw = (9 << 8) | (1 << 4)  # security mode 9 (AES-GCM): not implemented
            return wireless.finish(head + wireless.tpl_short(self.access, self.status, cw)
                                   + bytes(16))
        if self.compact == "only" or (self.compact == "mixed" and (self.sent - 1) % 8):
            # CI 0x7B: short header, then signature, CRC and the data bytes only
            _, body = compact_payload(apl)
            head = wireless.dll(0x44, *args)
            return wireless.finish(head + bytes((0x7B, self.access, self.status, 0, 0)) + body)
        if self.security == "none" or self.key is None:
            return wireless.encode_wmbus(*args, apl, access=self.access, status=self.status)
        if self.security == "mode5":
            return wireless.encode_wmbus(*args, apl, access=self.access, status=self.status,
                                         key=self.key, mode=5)
        if self.security == "mode7":
            return wireless.encode_wmbus(*args, apl, access=self.access, status=self.status,
                                         key=self.key, mode=7, counter=self.sent)
        if self.security == "ell":
            return wireless.encode_ell_ctr(*args, b"\x78" + apl, key=self.key, acc=self.access,
                                           session=self.sent)
        raise ValueError(f"unknown security {self.security!r}")


DEMO_KEY = bytes(range(16))  # 000102...0F: the key every default meter encrypts with


def default_meters() -> list[SimRadioMeter]:
    k = DEMO_KEY
    return [
        SimRadioMeter("11111111", "KAM", 0x1B, 0x16, k, "ell"),
        SimRadioMeter("22222222", "APA", 0x05, 0x07, k, "mode5"),
        SimRadioMeter("33333333", "LAS", 0x14, 0x07, k, "mode7"),
        SimRadioMeter("44444444", "SEN", 0x68, 0x07, None, "none"),
    ]


@dataclass
class DongleState:
    mode: str | None = None
    inits: int = 0
    pings: int = 0
    resets: int = 0
    hang_until: float = 0.0
    commands: list[str] = field(default_factory=list)


class WMBusDongleSimulator:
    def __init__(self, dongle: str = "im871a", meters: list[SimRadioMeter] | None = None,
                 *, rssi: bool = True) -> None:
        if dongle not in ("im871a", "amb8465"):
            raise ValueError(f"dongle is im871a or amb8465, not {dongle!r}")
        self.dongle = dongle
        self.meters = default_meters() if meters is None else meters
        self.rssi = rssi
        self.state = DongleState()
        self.delivered = 0
        self.decoder = im871a.HciDecoder() if dongle == "im871a" else amb8465.AmberDecoder(rssi)
        self.pty = PtyEndpoint(self._on_data, self._tick, 0.02, name=f"sim-{dongle}")
        self.device = self.pty.device

    def meter(self, ident: str) -> SimRadioMeter:
        return next(m for m in self.meters if m.ident == ident)

    def hang(self, seconds: float) -> None:
        """Stop hearing and answering for ``seconds`` (a wedged dongle)."""
        self.state.hang_until = time.monotonic() + seconds

    @property
    def hung(self) -> bool:
        return time.monotonic() < self.state.hang_until

    def stop(self) -> None:
        self.pty.stop()

    # -- host protocol

    def _on_data(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        while True:
            msg = self.decoder.next_event()
            if msg is None:
                return
            if self.hung or msg.damaged:
                continue
            if self.dongle == "im871a":
                self._im871a_command(msg)
            else:
                self._amber_command(msg)

    def _im871a_command(self, msg: im871a.HciMessage) -> None:
        if msg.endpoint != im871a.DEVMGMT:
            return
        reply = None
        if msg.msg_id == im871a.PING_REQ:
            self.state.pings += 1
            reply = im871a.HciMessage(im871a.DEVMGMT, im871a.PING_RSP)
        elif msg.msg_id == im871a.SET_CONFIG_REQ:
            try:
                mode, _, _ = im871a.parse_set_mode(msg.payload)
                status = 0
            except ValueError:
                mode, status = None, 1
            if status == 0:
                self.state.mode = mode
                self.state.inits += 1
            reply = im871a.HciMessage(im871a.DEVMGMT, im871a.SET_CONFIG_RSP, bytes((status,)))
        elif msg.msg_id == im871a.RESET_REQ:
            self.state.resets += 1
            self.state.mode = None
            reply = im871a.HciMessage(im871a.DEVMGMT, im871a.RESET_RSP, b"\x00")
        elif msg.msg_id == im871a.GET_DEVICEINFO_REQ:
            reply = im871a.HciMessage(im871a.DEVMGMT, im871a.GET_DEVICEINFO_RSP,
                                      bytes((0x33, 0x00, 0x15, 0x01)) + b"\x78\x56\x34\x12")
        if reply is not None:
            self.state.commands.append(f"{msg.msg_id:#04x}")
            self.pty.write(im871a.encode(reply))

    def _amber_command(self, msg: amb8465.AmberMessage) -> None:
        reply = None
        if msg.cmd == amb8465.CMD_SET_MODE_REQ and len(msg.payload) == 1:
            names = {v: k for k, v in amb8465.MODES.items()}
            mode = names.get(msg.payload[0])
            if mode is not None:
                self.state.mode = mode
                self.state.inits += 1
            reply = amb8465.AmberMessage(amb8465.CMD_SET_MODE_REQ | amb8465.CNF,
                                         bytes((0 if mode else 1,)))
        elif msg.cmd == amb8465.CMD_SERIALNO_REQ:
            self.state.pings += 1
            reply = amb8465.AmberMessage(amb8465.CMD_SERIALNO_REQ | amb8465.CNF,
                                         b"\x12\x34\x56\x78")
        elif msg.cmd == amb8465.CMD_RESET_REQ:
            self.state.resets += 1
            self.state.mode = None
            reply = amb8465.AmberMessage(amb8465.CMD_RESET_REQ | amb8465.CNF, b"\x00")
        if reply is not None:
            self.state.commands.append(f"{msg.cmd:#04x}")
            self.pty.write(amb8465.encode(reply))

    # -- the radio

    def _tick(self) -> None:
        if self.hung or self.state.mode is None:
            return
        now = time.monotonic()
        for m in self.meters:
            if m.link_mode.upper() not in self.state.mode.split("+"):
                continue
            if now < m.next_at:
                continue
            m.next_at = now + m.interval_s
            frame = m.telegram(time.time())
            if m.fault == "truncate":
                frame = bytes((frame[0],)) + frame[1:-7]
            out = self._indication(frame, m.rssi_dbm)
            if m.fault == "crc":
                out = out[:-1] + bytes((out[-1] ^ 0x5A,))
            self.pty.write(out)
            self.delivered += 1
            if m.fault == "duplicate":
                self.pty.write(out)
                self.delivered += 1

    def _indication(self, frame: bytes, rssi_dbm: int) -> bytes:
        """The dongle's message for a received frame (L field removed, L = length), with
        the RSSI byte in the dongle's own scale."""
        body = frame[1:]
        if self.dongle == "im871a":
            rssi = max(0, min(255, 45 + (rssi_dbm + 100) * 2))
            return im871a.encode(im871a.HciMessage(im871a.RADIOLINK, im871a.WMBUSMSG_IND, body,
                                                   timestamp=int(time.monotonic() * 1000),
                                                   rssi=rssi if self.rssi else None))
        rssi = ((rssi_dbm + 74) * 2) & 0xFF
        return amb8465.encode(amb8465.AmberMessage(amb8465.CMD_DATA_IND, body,
                                                   rssi if self.rssi else None))


def start(dongle: str = "im871a", meters: list[SimRadioMeter] | None = None,
          **kw: bool) -> WMBusDongleSimulator:
    return WMBusDongleSimulator(dongle, meters, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description="wM-Bus dongle simulator on a pty")
    ap.add_argument("--dongle", choices=["im871a", "amb8465"], default="im871a")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between telegrams")
    args = ap.parse_args()
    meters = default_meters()
    for m in meters:
        m.interval_s = args.interval
    sim = start(args.dongle, meters)
    print(sim.device, flush=True)
    for m in meters:
        key = m.key.hex().upper() if m.key else "-"
        print(f"  {m.manufacturer} {m.ident}  {m.link_mode}  {m.security}  key {key}", flush=True)
    serve_forever(sim)


if __name__ == "__main__":
    main()

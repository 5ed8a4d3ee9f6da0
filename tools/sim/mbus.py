"""A wired M-Bus bus with several slave meters, on a pseudo-terminal.

    python -m tools.sim.mbus            # prints the pty path; Ctrl-C stops

Each meter has a primary and a secondary address and answers like a slave: E5 to SND_NKE,
RSP_UD to REQ_UD2 (repeating its last telegram when the FCB did not toggle, sending the
next when it did), selection by secondary address with wildcards (two matching meters
answer at once: a collision, garbled bytes on the line). A meter can send its data as
several telegrams (DIF 0x1F "more records follow"). Registers rise with wall-clock time.

Faults per meter: ``silent`` (never answers), ``drop`` (ignore the next n requests: the
master must repeat with the same FCB), ``corrupt`` (next n answers with a bad checksum).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

from gateway.protocols.mbus import records as rec
from gateway.protocols.mbus import wired

from .pty import PtyEndpoint, serve_forever


# --------------------------------------------------------------------------- meters


@dataclass
class SimMeter:
    primary: int
    ident: str
    manufacturer: str = "KAM"
    version: int = 1
    medium: int = 0x04          # heat (outlet)
    parts: int = 1              # telegrams per readout
    energy_base_kwh: int = 12345
    power_w: int = 1500
    status: int = 0
    silent: bool = False
    drop: int = 0
    corrupt: int = 0
    humidity: int | None = None  # 0.01 %RH: adds an Elvaco-style plain-text VIF record
    app_error: int | None = None  # answer with this CI 0x70 application error code
    # state
    selected: bool = False
    last_fcb: bool | None = None
    index: int = 0
    access: int = 0
    last_response: bytes = b""
    requests: list[tuple[int, int]] = field(default_factory=list)  # (C, address)
    repeats: int = 0

    def reset(self) -> None:
        self.last_fcb = None
        self.index = 0
        self.last_response = b""

    def energy_wh(self, now: float | None = None) -> int:
        t = time.time() if now is None else now
        return self.energy_base_kwh * 1000 + int(self.power_w * (t % 10_000_000) / 3600)

    def clock(self) -> tuple[int, bytes]:
        """The meter's clock as a type F record value: UTC, to the minute."""
        t = time.gmtime(time.time())
        return rec.encode_datetime_f(t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min)

    def records(self, part: int) -> bytes:
        """Records of telegram ``part``; all but the last end with DIF 0x1F."""
        wh = self.energy_wh()
        if part == 0:
            body = (rec.encode_record(b"\x06", *rec.encode_bcd(wh // 1000, 4))        # kWh
                    + rec.encode_record(b"\x13", *rec.encode_bcd(wh // 7, 4))          # l
                    + rec.encode_record(b"\x2b", *rec.encode_int(self.power_w, 3))     # W
                    + rec.encode_record(b"\x5a", *rec.encode_int(654, 2))              # 0.1 C
                    + rec.encode_record(b"\x5e", *rec.encode_int(421, 2))
                    + rec.encode_record(b"\x6d", *self.clock()))                       # now
            if self.humidity is not None:  # VIF 0xFC, "%RH" (text first), VIFE 10^-2
                body += rec.encode_record(rec.encode_plain_text_vib("%RH", b"\x74"),
                                          *rec.encode_int(self.humidity, 2))
        else:
            body = b"".join(rec.encode_record(b"\x06", *rec.encode_bcd(
                max(0, wh // 1000 - 100 * (part * 4 + s)), 4), storage=part * 4 + s)
                for s in range(1, 5))
        if part < self.parts - 1:
            body += b"\x1f"
        return body

    def telegram(self, address: int) -> bytes:
        if self.app_error is not None:
            return wired.encode_rsp_ud(address, 0x70, bytes((self.app_error,)))
        self.access = (self.access + 1) & 0xFF
        head = wired.long_header(self.ident, self.manufacturer, self.version, self.medium,
                                 self.access, self.status)
        return wired.encode_rsp_ud(address, 0x72, head + self.records(self.index))

    def matches(self, mask: wired.SecondaryMask) -> bool:
        return mask.matches(self.ident, self.manufacturer, self.version, self.medium)


def default_meters() -> list[SimMeter]:
    """Three meters: a heat meter answering in 3 telegrams, and two water meters whose ids
    start with the same digit (a secondary scan meets a collision and must go deeper)."""
    return [
        SimMeter(5, "12345678", "KAM", 8, 0x04, parts=3),
        SimMeter(6, "44001122", "ACW", 20, 0x07, energy_base_kwh=500, power_w=300),
        SimMeter(7, "45001199", "EFE", 0, 0x06, energy_base_kwh=800, power_w=200),
    ]


class MBusBusSimulator:
    """The bus: all meters share one pty like slaves share the two M-Bus wires."""

    def __init__(self, meters: list[SimMeter] | None = None) -> None:
        self.meters = default_meters() if meters is None else meters
        self.decoder = wired.FrameDecoder()
        self.frames_seen = 0
        self.collisions = 0
        self.pty = PtyEndpoint(self._on_data, name="sim-mbus")
        self.device = self.pty.device

    def meter(self, ident_or_primary: str | int) -> SimMeter:
        for m in self.meters:
            if m.ident == ident_or_primary or m.primary == ident_or_primary:
                return m
        raise KeyError(ident_or_primary)

    def stop(self) -> None:
        self.pty.stop()

    def _on_data(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        while True:
            f = self.decoder.next_event()
            if isinstance(f, wired.NeedData):
                return
            self.frames_seen += 1
            self._on_frame(f)

    def _targets(self, address: int) -> list[SimMeter]:
        if address == wired.ADDRESS_NETWORK_LAYER:
            return [m for m in self.meters if m.selected]
        if address in (wired.ADDRESS_BROADCAST, wired.ADDRESS_BROADCAST_REPLY):
            return list(self.meters)
        return [m for m in self.meters if m.primary == address]

    def _answer(self, meter: SimMeter, data: bytes) -> None:
        if meter.silent:
            return
        if meter.drop:
            meter.drop -= 1
            return
        if meter.corrupt and len(data) > 1:
            meter.corrupt -= 1
            data = data[:-2] + bytes(((data[-2] + 1) & 0xFF,)) + data[-1:]
        self.pty.write(data)

    def _on_frame(self, f: object) -> None:
        if isinstance(f, wired.ShortFrame):
            targets = self._targets(f.a)
            for m in targets:
                m.requests.append((f.c, f.a))
            if f.c == wired.C_SND_NKE:
                for m in targets:
                    m.reset()
                    if f.a == wired.ADDRESS_NETWORK_LAYER:
                        m.selected = False
                if f.a not in (wired.ADDRESS_BROADCAST,) and len(targets) == 1:
                    self._answer(targets[0], bytes((wired.ACK_BYTE,)))
                return
            if f.c & 0xDF == wired.C_REQ_UD2 and len(targets) == 1:
                m = targets[0]
                if m.silent:
                    return
                fcb = bool(f.c & wired.FCB)
                if m.last_response and m.last_fcb is not None and fcb == m.last_fcb:
                    m.repeats += 1
                    resp = m.last_response
                else:
                    if m.last_fcb is not None and m.last_response:
                        m.index = (m.index + 1) % m.parts
                    resp = m.telegram(f.a)
                    m.last_response = resp
                m.last_fcb = fcb
                self._answer(m, resp)
            return
        if isinstance(f, wired.LongFrame) and f.ci == 0x52 and f.a == wired.ADDRESS_NETWORK_LAYER:
            try:
                mask = wired.SecondaryMask.decode(f.data)
            except ValueError:
                return
            matching = [m for m in self.meters if m.matches(mask)]
            for m in self.meters:
                m.selected = m in matching
                if m.selected:
                    m.reset()
            live = [m for m in matching if not m.silent]
            if len(live) == 1:
                self._answer(live[0], bytes((wired.ACK_BYTE,)))
            elif len(live) > 1:
                self.collisions += 1
                self.pty.write(bytes((0xE5 & 0xA5, 0xE5 | 0x1A)))  # overlapping answers


def start(meters: list[SimMeter] | None = None) -> MBusBusSimulator:
    return MBusBusSimulator(meters)


def main() -> None:
    ap = argparse.ArgumentParser(description="M-Bus slave bus simulator on a pty")
    ap.parse_args()
    sim = start()
    print(sim.device, flush=True)
    for m in sim.meters:
        print(f"  primary {m.primary}  secondary {m.ident}  {m.manufacturer}  "
              f"{m.parts} telegram(s)", flush=True)
    serve_forever(sim)


if __name__ == "__main__":
    main()

"""Simulated IEC 62056-21 meters on a pseudo-terminal (modes A, B, C, P1 password, R1 reads).

    python -m tools.sim.iec62056_21 --meters 2      # prints the pty path to give the driver

Several meters share one pty like meters on one RS-485 bus: each answers only a sign-on
carrying its own address (an empty address is answered by the first meter). Registers
rise with wall-clock time, so successive readouts differ like a real meter's.
Faults: ``silent`` (never answers), ``bad_bcc`` (corrupts every readout's BCC), ``delay_s``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

from gateway.protocols import iec62056_21 as iec

from .pty import PtySimulator, serve_forever


@dataclass
class SimIecMeter:
    address: str
    manufacturer: str = "SIM"
    baud_char: str = "5"          # mode C 9600; 'E' = mode B 9600; 'X' = mode A
    ident: str = "IEC-METER"
    password: str | None = None
    base_wh: int = 1_234_567
    load_w: int = 1500
    silent: bool = False
    bad_bcc: bool = False
    delay_s: float = 0.0
    reads: int = 0
    started: float = field(default_factory=time.time)

    def values(self) -> list[tuple[str, str, str]]:
        """(address, value, unit): exact decimal text, as a meter prints it."""
        wh = self.base_wh + int(self.load_w * (time.time() - self.started) / 3600)
        export = self.base_wh // 7
        return [("1.8.0", f"{wh // 1000:07d}.{wh % 1000:03d}", "kWh"),
                ("2.8.0", f"{export // 1000:07d}.{export % 1000:03d}", "kWh"),
                ("32.7.0", "230.1", "V"),
                ("31.7.0", "006.52", "A"),
                ("0.9.1", "120000", "")]  # time hhmmss: not a register, not a reading

    def readout_text(self) -> str:
        lines = [f"0.0.0({self.address or '00000000'})"]
        lines += [f"{a}({v}*{u})" if u else f"{a}({v})" for a, v, u in self.values()]
        return "\r\n".join(lines) + "\r\n"

    def register(self, address: str) -> str | None:
        for a, v, u in self.values():
            if a == address or "1-0:" + a == address:
                return f"{address}({v}*{u})" if u else f"{address}({v})"
        return None


class IecBusSimulator(PtySimulator):
    """Meter-side state machine for every meter on the simulated bus."""

    def __init__(self, meters: list[SimIecMeter], push_s: float | None = None,
                 push_format: str = "crc", push_raw: list[bytes] | None = None) -> None:
        """push_s: the first meter pushes a telegram this often (mode D), unasked, as
        ``crc`` (``/ident CRLF CRLF data !CRC16 CRLF``, P1-like), ``bcc`` (ident, then
        ``STX data ! CRLF ETX BCC``) or ``plain`` (no check). push_raw: push these bytes
        in turn instead (captured telegrams, as they are: a real meter's exact output)."""
        self.push_raw = list(push_raw or [])
        self.meters = meters
        self.decoder = iec.Iec62056Decoder(meter_side=True)
        self.active: SimIecMeter | None = None
        self.state = "idle"
        self.sign_ons = 0
        self.push_s = push_s
        self.push_format = push_format
        self.pushes = 0
        self._next_push = time.monotonic()
        super().__init__(self._on_data, name="sim-iec62056-21")

    def idle(self) -> None:
        if self.push_s is None or time.monotonic() < self._next_push:
            return
        self._next_push = time.monotonic() + self.push_s
        m = self.meters[0]
        if m.silent:
            return
        self.pushes += 1
        self.write(iec.add_even_parity(self.push_telegram(m)))

    def push_telegram(self, m: SimIecMeter) -> bytes:
        if self.push_raw:
            return self.push_raw[(self.pushes - 1) % len(self.push_raw)]
        ident = iec.Identification(m.manufacturer, m.baud_char, m.ident).serialize()
        text = m.readout_text().encode()
        if self.push_format == "bcc":
            body = iec.data_message(m.readout_text())
            return ident + (body[:-1] + bytes([body[-1] ^ 0x55]) if m.bad_bcc else body)
        if self.push_format == "plain":
            return ident + b"\r\n" + text + b"!\r\n"
        head = ident + b"\r\n" + text + b"!"
        crc = iec.crc16_arc(head) ^ (0x5555 if m.bad_bcc else 0)
        return head + f"{crc:04X}".encode() + b"\r\n"

    def _reply(self, m: SimIecMeter, data: bytes) -> bytes:
        if m.delay_s:
            time.sleep(m.delay_s)
        return data

    def _readout(self, m: SimIecMeter) -> bytes:
        m.reads += 1
        msg = iec.data_message(m.readout_text())
        if m.bad_bcc:
            msg = msg[:-1] + bytes([msg[-1] ^ 0x55])
        return msg

    def _on_data(self, data: bytes) -> bytes | None:
        self.decoder.receive_data(data)
        out = b""
        while True:
            ev = self.decoder.next_event()
            if ev is iec.NEED_DATA:
                return out or None
            out += iec.add_even_parity(self._event(ev) or b"")  # 7E1 on the wire

    def _event(self, ev: object) -> bytes | None:
        if isinstance(ev, iec.SignOn):
            self.sign_ons += 1
            m = next((m for m in self.meters if m.address == ev.address
                      or (ev.address == "" and m is self.meters[0])), None)
            self.active, self.state = m, "idle"
            if m is None or m.silent:
                return None
            ident = iec.Identification(m.manufacturer, m.baud_char, m.ident).serialize()
            mode = iec.Identification(m.manufacturer, m.baud_char, m.ident).mode
            if mode in ("A", "B"):  # no option select: the readout follows at once
                return self._reply(m, ident + self._readout(m))
            self.state = "ident_sent"
            return self._reply(m, ident)
        m = self.active
        if m is None:
            return None
        if isinstance(ev, iec.Nak) and m.reads:  # §6.3.12: repeat the last block
            return self._reply(m, self._readout(m))
        if isinstance(ev, iec.OptionSelect) and self.state == "ident_sent":
            if ev.mode == iec.MODE_PROGRAMMING:
                self.state = "password"
                return self._reply(m, iec.command("P0", "(12345678)"))
            self.state = "idle"
            return self._reply(m, self._readout(m))
        if isinstance(ev, iec.Command):
            if ev.cmd == "B0":
                self.active, self.state = None, "idle"
                return None
            if ev.cmd == "P1" and self.state == "password":
                if m.password is not None and ev.data == f"({m.password})":
                    self.state = "programming"
                    return bytes([iec.ACK])
                return bytes([iec.NAK])
            if ev.cmd == "R1" and self.state == "programming":
                value = m.register(ev.data.removesuffix("()"))
                if value is None:
                    return iec.data_message("(ERROR)", end=b"")
                m.reads += 1
                return self._reply(m, iec.data_message(value, end=b""))
        return None


def start(meters: int = 1, *, addresses: list[str] | None = None, baud_char: str = "5",
          password: str | None = None, silent: tuple[str, ...] = (), bad_bcc: bool = False,
          delay_s: float = 0.0, push_s: float | None = None,
          push_format: str = "crc", push_raw: list[bytes] | None = None) -> IecBusSimulator:
    """Start a bus of ``meters`` simulated meters; ``.device`` is the pty path."""
    addrs = addresses or [f"{10000001 + i}" for i in range(meters)]
    sims = [SimIecMeter(a, baud_char=baud_char, password=password, silent=a in silent,
                        bad_bcc=bad_bcc, delay_s=delay_s, base_wh=1_000_000 * (i + 1),
                        ident=f"SIM{i + 1}") for i, a in enumerate(addrs)]
    return IecBusSimulator(sims, push_s, push_format, push_raw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meters", type=int, default=1)
    p.add_argument("--baud-char", default="5", help="0-6 mode C, A-F mode B, other mode A")
    p.add_argument("--password")
    p.add_argument("--silent", action="append", default=[], help="address of a silent meter")
    p.add_argument("--bad-bcc", action="store_true")
    p.add_argument("--delay-s", type=float, default=0.0)
    p.add_argument("--push-s", type=float, help="mode D: push a telegram this often")
    p.add_argument("--push-file", action="append", default=[],
                   help="mode D: push this captured telegram (repeatable, pushed in turn)")
    a = p.parse_args()
    raw = []
    for name in a.push_file:
        with open(name, "rb") as f:
            raw.append(f.read())
    sim = start(a.meters, baud_char=a.baud_char, password=a.password, silent=tuple(a.silent),
                bad_bcc=a.bad_bcc, delay_s=a.delay_s,
                push_s=a.push_s if a.push_s or not raw else 10.0, push_raw=raw)
    print(sim.device, flush=True)
    print("addresses: " + " ".join(m.address for m in sim.meters), flush=True)
    serve_forever(sim)


if __name__ == "__main__":
    main()

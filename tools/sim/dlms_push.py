"""Simulated HAN port: a meter pushing DLMS Data-Notifications in HDLC frames on a pty.

    python -m tools.sim.dlms_push [--key HEX] [--interval-s 2] [--segment 64]

Each notification is an Aidon-style list: structure{obis, value, structure{scaler, unit}}
for import energy (Wh, scaler 0), active power (W), and voltage (V, scaler -1), with the
meter's date-time in the header. With ``key`` it is general-glo-ciphered (suite 0, SC 0x30)
with a rising invocation counter. ``segment`` splits long APDUs over HDLC frames (S bit);
``framing="apdu"`` sends the ciphered APDUs bare, without HDLC (Luxembourg Smarty), and
``framing="mbus"`` in M-Bus long frames (Austrian Kaifa MA309);
``gbt=N`` splits each APDU into General-Block-Transfer blocks of N bytes, one per frame
(Landis+Gyr E450), and ``drop_block_every=K`` loses block 2 of every Kth transfer.
Faults: ``wrong_key`` (cipher with another key), ``corrupt_every`` (flip a byte of every
Nth frame, so its FCS fails), ``hostile`` (raw byte strings, e.g. mutated frames with valid
checksums, written one before each push).

The A-XDR bytes are written out here on purpose: the gateway parses them with gurux, so
the simulator and the parser do not share an encoder that could hide a bug in both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from dataclasses import dataclass

from gateway.protocols.dlms.cipher import encode_length, encrypt
from gateway.protocols.hdlc import LLC_RESPONSE, Address, HdlcFrame
from tools.sim.pty import PtySimulator, serve_forever

DEFAULT_SYSTEM_TITLE = b"SIMPUSH1"


def cosem_datetime(t: float) -> bytes:
    u = dt.datetime.fromtimestamp(int(t), dt.timezone.utc)
    return (u.year.to_bytes(2, "big") + bytes([u.month, u.day, u.isoweekday(), u.hour, u.minute,
                                                 u.second, 0]) + b"\x00\x00\x00")


def _entry(obis: bytes, value: bytes, scaler: int, unit: int) -> bytes:
    # structure(3){ octet-string(6) obis, value, structure(2){ integer scaler, enum unit } }
    return (b"\x02\x03\x09\x06" + obis + value + b"\x02\x02\x0f"
            + (scaler & 0xFF).to_bytes(1, "big") + b"\x16" + bytes([unit]))


@dataclass
class PushMeter:
    physical: int = 17
    base_wh: int = 5_000_000
    power_w: int = 1500
    key: bytes | None = None
    auth_key: bytes | None = None
    system_title: bytes = DEFAULT_SYSTEM_TITLE
    wrong_key: bool = False
    invocation_counter: int = 1
    sent: int = 0

    def values(self, t: float) -> dict[str, tuple[int, int, str]]:
        """What a push at time t carries: obis -> (mantissa, exponent, unit)."""
        return {"1-0:1.8.0": (self.base_wh + self.power_w * int(t) // 3600 % 10**9, 0, "Wh"),
                "1-0:1.7.0": (self.power_w, 0, "W"),
                "1-0:32.7.0": (2301, -1, "V")}

    def apdu(self, t: float) -> bytes:
        v = self.values(t)
        body = (b"\x01\x03"  # array of 3 entries
                + _entry(bytes([1, 0, 1, 8, 0, 255]), b"\x06" + v["1-0:1.8.0"][0].to_bytes(4, "big"), 0, 30)
                + _entry(bytes([1, 0, 1, 7, 0, 255]), b"\x06" + v["1-0:1.7.0"][0].to_bytes(4, "big"), 0, 27)
                + _entry(bytes([1, 0, 32, 7, 0, 255]), b"\x12" + v["1-0:32.7.0"][0].to_bytes(2, "big"), -1, 35))
        plain = b"\x0f" + (0x40000000 | (self.sent & 0xFFFFFF)).to_bytes(4, "big") + b"\x0c" \
            + cosem_datetime(t) + body
        if self.key is None:
            return plain
        key = bytes(b ^ 0xA5 for b in self.key) if self.wrong_key else self.key
        g = encrypt(plain, self.system_title, self.invocation_counter, key,
                    self.auth_key or key)
        self.invocation_counter += 1
        return g.serialize()

    def frames(self, t: float, segment: int = 0, framing: str = "hdlc", gbt: int = 0,
               drop_block: int = 0) -> list[bytes]:
        if framing == "apdu":  # bare APDU, no HDLC (Luxembourg Smarty P1 ports)
            self.sent += 1
            return [self.apdu(t)]
        if framing == "mbus":  # M-Bus long frames of 120-byte segments (Kaifa MA309)
            from gateway.protocols.dlms.mbus_link import frame
            apdu = self.apdu(t)
            self.sent += 1
            parts = [apdu[i:i + 120] for i in range(0, len(apdu), 120)]
            return [frame(p, i, i == len(parts) - 1) for i, p in enumerate(parts)]
        src = Address.server(1, self.physical)
        if gbt:  # General-Block-Transfer (L+G E450): one block per frame, numbered from 1
            apdu = self.apdu(t)
            self.sent += 1
            chunks = [apdu[i:i + gbt] for i in range(0, len(apdu), gbt)]
            blocks = [b"\xe0" + bytes([0xC0 if i == len(chunks) - 1 else 0x40])
                      + (i + 1).to_bytes(2, "big") + b"\x00\x00" + encode_length(len(c)) + c
                      for i, c in enumerate(chunks)]
            return [HdlcFrame(Address(16), src, 0x13, LLC_RESPONSE + b).serialize()
                    for i, b in enumerate(blocks, 1) if i != drop_block]
        info = LLC_RESPONSE + self.apdu(t)
        self.sent += 1
        parts = [info] if not segment else [info[i:i + segment] for i in range(0, len(info), segment)]
        return [HdlcFrame(Address(16), src, 0x13, p, segmented=i < len(parts) - 1).serialize()
                for i, p in enumerate(parts)]


class PushSimulator(PtySimulator):
    def __init__(self, meter: PushMeter, interval_s: float = 1.0, segment: int = 0,
                 corrupt_every: int = 0, hostile: list[bytes] | None = None,
                 framing: str = "hdlc", gbt: int = 0, drop_block_every: int = 0) -> None:
        self.meter = meter
        self.framing = framing
        self.gbt = gbt
        self.drop_block_every = drop_block_every  # every Nth GBT transfer loses block 2
        self.hostile = list(hostile or [])
        self.interval_s = interval_s
        self.segment = segment
        self.corrupt_every = corrupt_every
        self.frames_sent = 0
        self.pushed_at: list[float] = []
        self._next = time.monotonic()
        super().__init__(lambda data: None, name="sim-dlms-push")

    def idle(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next += self.interval_s
        t = time.time()
        out = self.hostile.pop(0) if self.hostile else b""
        n = len(self.pushed_at) + 1
        drop = 2 if self.drop_block_every and n % self.drop_block_every == 0 else 0
        for f in self.meter.frames(t, self.segment, self.framing, self.gbt, drop):
            self.frames_sent += 1
            if self.corrupt_every and self.frames_sent % self.corrupt_every == 0:
                f = f[:10] + bytes([f[10] ^ 0xFF]) + f[11:]
            out += f
        self.pushed_at.append(t)
        self.write(out)


def start(*, key: bytes | None = None, auth_key: bytes | None = None, interval_s: float = 1.0,
          segment: int = 0, wrong_key: bool = False, corrupt_every: int = 0,
          physical: int = 17, hostile: list[bytes] | None = None,
          invocation_counter: int = 1, framing: str = "hdlc", gbt: int = 0,
          drop_block_every: int = 0) -> PushSimulator:
    meter = PushMeter(physical=physical, key=key, auth_key=auth_key, wrong_key=wrong_key,
                      invocation_counter=invocation_counter)
    return PushSimulator(meter, interval_s, segment, corrupt_every, hostile, framing, gbt,
                         drop_block_every)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--key", help="block cipher key (hex): cipher the notifications")
    p.add_argument("--interval-s", type=float, default=2.0)
    p.add_argument("--segment", type=int, default=0)
    p.add_argument("--wrong-key", action="store_true")
    a = p.parse_args()
    sim = start(key=bytes.fromhex(a.key) if a.key else None, interval_s=a.interval_s,
                segment=a.segment, wrong_key=a.wrong_key)
    print(sim.device, flush=True)
    serve_forever(sim)


if __name__ == "__main__":
    main()

"""HDLC Data-Notification frames/s decoded into Readings, plain and general-glo-ciphered,
against gurux's own parse of the same frames in the same run.

    python -m tools.bench.dlms [--frames 400] [--rounds 5]

Ours: the push driver's PushDecoder: length-framed HDLC decode, AES-GCM with ``cryptography``
for ciphered frames, our strict A-XDR walker, exact OBIS mapping into Readings. Baseline: gurux's client
parses the whole HDLC frame itself (its GCM is pure Python), no mapping. Rounds interleave
A B A B and the medians are compared (CPU speed here swings). Last line:
``plain_ratio=R ciphered_ratio=Q``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
AUTH = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")


def make_frames(n: int, key: bytes | None) -> list[bytes]:
    from tools.sim.dlms_push import PushMeter
    m = PushMeter(key=key, auth_key=AUTH if key else None)
    return [m.frames(1_700_000_000 + 10 * i)[0] for i in range(n)]


def ours(frames: list[bytes], key: bytes | None) -> Callable[[], int]:
    from gateway.protocols.dlms.notification import (PushDecoder, PushParser, Pushed,
                                                     notification_values, to_readings)
    from gateway.protocols.hdlc import NEED_DATA
    dec = PushDecoder(PushParser(key, AUTH if key else None))

    def run() -> int:  # what the push driver does per frame (DlmsDriver._listen/_on_push)
        n = 0
        for f in frames:  # as a serial port delivers them
            dec.receive_data(f)
            while (ev := dec.next_event()) is not NEED_DATA:
                if isinstance(ev, Pushed):
                    t = ev.notification
                    n += len(to_readings(notification_values(t), "m", t.time_ms, 0, "bench"))
        return n
    return run


def gurux(frames: list[bytes], key: bytes | None) -> Callable[[], int]:
    from gateway.protocols.dlms import load_gurux
    load_gurux()  # also keeps gurux's "Encryption is applied." prints off stdout
    from gurux_dlms import GXByteBuffer, GXReplyData
    from gurux_dlms.enums import InterfaceType
    from gurux_dlms.secure import GXDLMSSecureClient
    c = GXDLMSSecureClient(True, 16, 1, interfaceType=InterfaceType.HDLC)
    if key:
        c.ciphering.blockCipherKey = bytearray(key)
        c.ciphering.authenticationKey = bytearray(AUTH)

    def run() -> int:
        n = 0
        for f in frames:
            r, notify = GXReplyData(), GXReplyData()
            c.getData(GXByteBuffer(f), r, notify)
            n += len(notify.value or ())
        return n
    return run


def rate(fn: Callable[[], int], frames: int) -> float:
    t = time.perf_counter()
    fn()
    return frames / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    ratios = {}
    for label, key in (("plain", None), ("ciphered", KEY)):
        frames = make_frames(a.frames, key)
        mine, base = ours(frames, key), gurux(frames, key)
        assert mine() == 3 * a.frames, "our decoder lost values"
        assert base() > 0
        r_ours, r_base = [], []
        for _ in range(a.rounds):  # interleaved A B A B
            r_ours.append(rate(mine, len(frames)))
            r_base.append(rate(base, len(frames)))
        mo, mb = statistics.median(r_ours), statistics.median(r_base)
        ratios[label] = mo / mb
        print(f"{label:9s} ours {mo:9.0f} frames/s (readings mapped)   gurux {mb:9.0f} frames/s"
              f"   ratio {mo / mb:.2f}")
    print(f"plain_ratio={ratios['plain']:.2f} ciphered_ratio={ratios['ciphered']:.2f}")


if __name__ == "__main__":
    main()

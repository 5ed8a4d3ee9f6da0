"""M-Bus decoding throughput, against pyMeterBus in the same run.

    python -m tools.bench.mbus [--seconds 0.5] [--rounds 5]

* wired: the five libmbus RSP_UD frames (12-27 records each) decoded to records, by this
  codec and by pyMeterBus (``meterbus.load`` and every record's value), rounds interleaved
  A B A B and the median taken (CPU speed here swings); then value agreement record by
  record (pyMeterBus reports energy in Wh and scales through floats: compared to 1e-9).
* wireless: the real-meter mode 5 telegrams (AES-128-CBC, a new cipher per telegram) and
  the plain ones, decoded all the way to Readings.

Last line: ``wmbus_per_s=X ratio_vs_pymeterbus=R`` (mode 5 telegrams/s to Readings; wired
frames/s of this codec over pyMeterBus's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from decimal import Decimal
from pathlib import Path
from typing import Callable

from gateway.drivers.mbus import telegram_readings
from gateway.protocols.mbus.wired import decode_rsp_ud
from gateway.protocols.mbus.wireless import decode_wmbus

VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors" / "mbus.json"


Item = tuple[bytes, "bytes | None", str]


def load_vectors() -> tuple[list[bytes], list[Item], list[Item]]:
    data = json.loads(VECTORS.read_text())["vectors"]
    wired = [bytes.fromhex(v["hex"]) for v in data if v["protocol"] == "mbus_wired"]
    mode5: list[Item] = []
    plain: list[Item] = []
    for v in data:
        if v["protocol"] != "wmbus" or v["gateway"].get("error"):
            continue
        frame = bytes.fromhex(v["hex"])
        fmt = "auto" if v["gateway"].get("frame_format") else "none"  # one capture kept a CRC
        if v["key"] is None:
            plain.append((frame, None, fmt))
        elif frame[10] in (0x7A, 0x72, 0x8C):  # TPL mode 5 (the ELL/CTR one is separate)
            mode5.append((frame, bytes.fromhex(v["key"]), fmt))
    return wired, mode5, plain


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Items per second of repeated fn() calls (each returns how many it did)."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        n += fn()
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def ours_wired(frames: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        for f in frames:
            t = decode_rsp_ud(f)
            for r in t.records:
                r.value  # noqa: B018 - values are decoded eagerly; touch them like the baseline
        return len(frames)
    return run


def pymeterbus_wired(frames: list[bytes]) -> Callable[[], int]:
    import meterbus

    def run() -> int:
        for f in frames:
            t = meterbus.load(f)
            for r in t.records:
                r.value  # noqa: B018 - pyMeterBus decodes lazily: this is the decode
        return len(frames)
    return run


def ours_wmbus(items: list[Item]) -> Callable[[], int]:
    def run() -> int:
        rx = 1_700_000_000_000
        for frame, key, fmt in items:
            t = decode_wmbus(frame, key, fmt=fmt)
            telegram_readings(t, t.id, "bench", rx)
        return len(items)
    return run


_TO_THEIRS = {"kWh": ("Wh", Decimal(1000)), "m3": ("m^3", Decimal(1)), "m3/h": ("m^3/h", 1),
              "°C": ("C", 1), "K": ("K", 1), "W": ("W", 1), "s": ("seconds", 1)}


def agreement(frames: list[bytes]) -> dict[str, int]:
    """Record-by-record comparison with pyMeterBus on the same frames."""
    import meterbus
    out = {"records": 0, "identical": 0, "differ": 0, "refused_invalid_bcd": 0}
    for f in frames:
        ours = decode_rsp_ud(f).records
        theirs = [r for r in meterbus.load(f).records
                  if str(r.interpreted.get("function")) != "FunctionType.SPECIAL_FUNCTION"]
        for a, b in zip(ours, theirs):
            out["records"] += 1
            tv = b.value
            if a.error:
                out["refused_invalid_bcd"] += 1
                continue
            if isinstance(tv, str) or not a.is_numeric:
                same = isinstance(tv, str) and str(a.value_text()).startswith(tv[:16])
            else:
                mine = a.decimal() * _TO_THEIRS.get(a.unit, ("", Decimal(1)))[1]
                t = Decimal(tv) if not isinstance(tv, Decimal) else tv
                same = abs(mine - t) <= Decimal("1e-9") * max(Decimal(1), abs(t))
            out["identical" if same else "differ"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    wired, mode5, plain = load_vectors()
    records = sum(len(decode_rsp_ud(f).records) for f in wired)
    print(f"wired: {len(wired)} libmbus RSP_UD frames, {records} records; "
          f"wireless: {len(mode5)} mode 5 and {len(plain)} plain real-meter telegrams")

    a_fn, b_fn = ours_wired(wired), pymeterbus_wired(wired)
    m5_fn = ours_wmbus(mode5)
    plain_fn = ours_wmbus(plain)
    a_fn(), b_fn(), m5_fn(), plain_fn()  # warm caches and imports
    ours, base, m5, pl = [], [], [], []
    for i in range(args.rounds):  # interleaved rounds, medians: robust to CPU swings
        ours.append(rate(a_fn, args.seconds))
        base.append(rate(b_fn, args.seconds))
        m5.append(rate(m5_fn, args.seconds))
        pl.append(rate(plain_fn, args.seconds))
        print(f"  round {i + 1}: wired ours {ours[-1]:,.0f}/s  pyMeterBus {base[-1]:,.0f}/s  "
              f"wM-Bus mode 5 {m5[-1]:,.0f}/s  plain {pl[-1]:,.0f}/s")
    o, b = statistics.median(ours), statistics.median(base)
    w5, wp = statistics.median(m5), statistics.median(pl)
    agree = agreement(wired)
    print(f"wired frames/s: this codec {o:,.0f}, pyMeterBus {b:,.0f} "
          f"({o * records / len(wired):,.0f} vs {b * records / len(wired):,.0f} records/s)")
    print(f"wM-Bus telegrams/s to Readings: mode 5 (AES-128-CBC) {w5:,.0f}, plain {wp:,.0f}")
    print(f"agreement with pyMeterBus: {agree['identical']}/{agree['records']} records identical, "
          f"{agree['differ']} differ, {agree['refused_invalid_bcd']} refused as invalid BCD "
          "(pyMeterBus prints a number for them)")
    print(f"wmbus_per_s={w5:.0f} ratio_vs_pymeterbus={o / b:.1f}")


if __name__ == "__main__":
    main()

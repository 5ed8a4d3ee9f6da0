"""Report by exception: backhaul bytes saved by the edge, with the real envelope encoder.

Workload: N meters read every 15 minutes for a day, three registers each, as an
electricity concentrator sees them: import energy 1-0:1.8.0 (Wh, cumulative), export energy
1-0:2.8.0 (Wh, cumulative, static for most homes) and active power 1-0:1.7.0 (W, moving).

* A (baseline): forward every register value read, as the gateway does without the edge.
* B (edge, deltas only added): every value plus the 15-minute deltas.
* C (report by exception): the 15-minute deltas, each register's value once an hour
  (every_n_intervals=4) and power only beyond a 5 % deadband.

Bytes are those of the signed, compressed envelopes (200 records per message, as the
uplink's default batch), so they are what the cellular modem sends (before MQTT/TLS
framing). The CPU cost of the edge is timed too, rounds A B A B interleaved, medians.

Run: python -m tools.bench.edge [--meters 1000] [--intervals 96] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import EdgeConfig, ReportByException
from gateway.edge.clock import Clock
from gateway.edge.pipeline import EdgePipeline
from gateway.model import Reading, StoredRecord
from gateway.wire.envelope import encode_envelope

QUARTER_MS = 900_000
EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00Z
BATCH = 200
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


class MemorySink:
    """What the pipeline needs of a store, in memory: the bench measures the edge and the
    encoder, not SQLite."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.cursors: dict[tuple[str, str], Any] = {}
        self.path = "/tmp/bench-edge.db"

    def submit(self, records: Iterable[Any],
               cursors: Mapping[tuple[str, str], Any] | None = None) -> "Future[list[int]]":
        self.records.extend(records)
        if cursors:
            self.cursors.update(cursors)
        f: Future[list[int]] = Future()
        f.set_result([])
        return f

    def get_cursor(self, meter_id: str, name: str, default: Any = None) -> Any:
        return self.cursors.get((meter_id, name), default)


def workload(meters: int, intervals: int, seed: int = 7) -> list[list[Reading]]:
    """One list of readings per (interval, meter) poll, in time order."""
    rnd = random.Random(seed)
    ids = [f"em-{i:05d}" for i in range(meters)]
    imp = [rnd.randrange(1_000_000, 60_000_000) for _ in ids]
    exp = [rnd.randrange(0, 3_000_000) if rnd.random() < 0.2 else 0 for _ in ids]
    solar = [e > 0 for e in exp]
    power = [rnd.randrange(150, 3000) for _ in ids]
    polls = []
    for k in range(intervals):
        ts = EPOCH_MS + k * QUARTER_MS
        for m, mid in enumerate(ids):
            rx = ts + 300 + m * 20
            # power: mostly steady (fridge, standby), sometimes an appliance switches
            if rnd.random() < 0.35:
                power[m] = max(50, int(power[m] * rnd.uniform(0.3, 2.5)))
            else:
                power[m] = max(50, int(power[m] * rnd.uniform(0.98, 1.02)))
            imp[m] += power[m] // 4
            if solar[m] and 32 <= k % 96 < 72:
                exp[m] += rnd.randrange(0, 900)
            polls.append([
                Reading(mid, "1-0:1.8.0", imp[m], 0, "Wh", ts, rx, (), "rs485"),
                Reading(mid, "1-0:2.8.0", exp[m], 0, "Wh", ts, rx, (), "rs485"),
                Reading(mid, "1-0:1.7.0", power[m], 0, "W", ts, rx, (), "rs485"),
            ])
    return polls


def run_edge(polls: list[list[Reading]], rbe: bool) -> tuple[list[Any], float]:
    cfg = replace(EdgeConfig(), report_by_exception=ReportByException(
        enabled=rbe, every_n_intervals=4, deadband=0.05))
    sink = MemorySink()
    pipe = EdgePipeline(cfg, sink, clock=Clock(assume_synced=True))
    t0 = time.perf_counter()
    for p in polls:
        pipe.submit(p)
    return sink.records, time.perf_counter() - t0


def envelope_bytes(records: list[Any]) -> tuple[int, int]:
    """Total bytes of the signed envelopes carrying records, and the message count."""
    total = msgs = 0
    for i in range(0, len(records), BATCH):
        chunk = [StoredRecord(i + j + 1, r) for j, r in enumerate(records[i:i + BATCH])]
        total += len(encode_envelope("gw-0001", "0123456789abcdef", chunk,
                                     chunk[0].record.rx_ts_ms + 1000, KEY))
        msgs += 1
    return total, msgs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--intervals", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    polls = workload(a.meters, a.intervals)
    baseline = [r for p in polls for r in p]
    n = len(baseline)
    print(f"workload: {a.meters} meters x {a.intervals} quarter hours x 3 registers = "
          f"{n} values read")

    deltas_all, _ = run_edge(polls, rbe=False)
    rbe_out, _ = run_edge(polls, rbe=True)
    bytes_a, msgs_a = envelope_bytes(baseline)
    bytes_b, msgs_b = envelope_bytes(deltas_all)
    bytes_c, msgs_c = envelope_bytes(rbe_out)
    n_deltas = sum(type(r) is Reading and "/delta/" in r.quantity for r in rbe_out)
    print(f"A every value read        : {len(baseline):8d} records {bytes_a:10d} B "
          f"{msgs_a:5d} msgs  {bytes_a / n:6.2f} B per value read")
    print(f"B values + 15-min deltas  : {len(deltas_all):8d} records {bytes_b:10d} B "
          f"{msgs_b:5d} msgs  {bytes_b / n:6.2f} B per value read")
    print(f"C report by exception     : {len(rbe_out):8d} records {bytes_c:10d} B "
          f"{msgs_c:5d} msgs  {bytes_c / n:6.2f} B per value read "
          f"({n_deltas} deltas, {len(rbe_out) - n_deltas} values)")
    saved = 1 - bytes_c / bytes_a
    print(f"report by exception saves {saved * 100:.1f} % of the bytes of forwarding every "
          f"value ({(bytes_a - bytes_c) / a.meters / 1024:.1f} KiB per meter per "
          f"{a.intervals / 4:g} h), while adding the interval consumption")

    # CPU: the edge stage (C) against encoding everything (A's cost), interleaved rounds.
    edge_times, enc_times = [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        envelope_bytes(baseline)
        enc_times.append(time.perf_counter() - t0)
        edge_times.append(run_edge(polls, rbe=True)[1])
    edge_us = statistics.median(edge_times) / n * 1e6
    enc_us = statistics.median(enc_times) / n * 1e6
    print(f"CPU: edge stage {edge_us:.2f} us per value read (median of {a.rounds}), "
          f"envelope encoding {enc_us:.2f} us per value: edge/encode = {edge_us / enc_us:.2f}")
    print(f"edge_rbe meters={a.meters} intervals={a.intervals} values={n} "
          f"bytes_all={bytes_a} bytes_with_deltas={bytes_b} bytes_rbe={bytes_c} "
          f"saved_pct={saved * 100:.1f} b_per_value_all={bytes_a / n:.2f} "
          f"b_per_value_rbe={bytes_c / n:.2f} edge_us_per_value={edge_us:.2f} "
          f"edge_vs_encode={edge_us / enc_us:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

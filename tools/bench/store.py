"""Outbox throughput: durable inserts and ack-deletes through gateway.store.Store, next to TinyDB.

    python -m tools.bench.store [--n 100000] [--rounds 3] [--tinydb-n 2000]

Per round, interleaved (store, tinydb, store, tinydb, ...):

* **store inserts**: N register readings submitted in driver-sized batches (one tick of M
  meters per ``submit``, the normal group-commit path: WAL, synchronous=FULL), timed from
  the first submit until every future has resolved, i.e. everything is durable.
* **store acks**: the rows are then acknowledged in message-sized seq ranges (as the uplink
  does on PUBACK) until the store is empty (``flush`` + depth 0).
* **tinydb**: the first 2,000 of the same readings inserted one by one into TinyDB (default
  JSON storage, a temp file); the rate for documents 1-1000 and 1001-2000 is printed too:
  every insert re-reads, re-parses and rewrites the whole JSON file (TinyDB 4.9 then fsyncs
  it, but truncates after the fsync), so it slows as the file grows.

The last line is ``inserts_per_s=.. acks_per_s=.. tinydb_inserts_per_s=.. ratio_vs_tinydb=..``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from gateway.model import Reading
from gateway.store import Store

from .common import chunks, fmt_rate, make_readings, median

TARGET_VS_TINYDB = 100.0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
Out = Callable[[str], None]


def _unlink_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(str(path) + suffix)
        except FileNotFoundError:
            pass


def store_round(tmp: Path, readings: Sequence[Reading], r: int, submit_size: int,
                ack_size: int, out: Out, timeout: float = 120.0) -> tuple[float, float]:
    n = len(readings)
    path = tmp / f"store-{r}.db"
    store = Store(path)
    try:
        deadline = time.monotonic() + timeout
        c0 = _cpu()
        t0 = time.perf_counter()
        futs = [store.submit(c) for c in chunks(readings, submit_size)]
        seqs: list[int] = []
        for f in futs:
            seqs += f.result(max(0.1, deadline - time.monotonic()))
        t1 = time.perf_counter()
        c1 = _cpu()
        st = store.stats()
        if len(seqs) != n or st.depth != n:
            raise RuntimeError(f"stored {len(seqs)} seqs, depth {st.depth}, expected {n}")
        commits = st.commits
        first = seqs[0]
        c2 = _cpu()
        t2 = time.perf_counter()
        # Ack as the uplink does: whole chunks, about ack_size records per message.
        hwm = first - 1
        while True:
            got = store.fetch_chunks(hwm, ack_size)
            if not got:
                break
            store.ack(got[0][0], got[-1][1])
            hwm = got[-1][1]
        store.flush(max(0.1, deadline - time.monotonic()))
        t3 = time.perf_counter()
        c3 = _cpu()
        st = store.stats()
        if st.depth != 0 or st.acked_records != n:
            raise RuntimeError(f"after acking everything: depth {st.depth}, "
                               f"acked {st.acked_records}")
    finally:
        store.close()
        _unlink_db(path)
    ins, acks = n / (t1 - t0), n / (t3 - t2)
    out(f"  store   round {r}: {fmt_rate(ins):>9} durable inserts/s ({t1 - t0:.2f} s, "
        f"{commits} commits of ~{n // max(commits, 1)}, {(c1 - c0) / n * 1e6:.2f} us CPU each), "
        f"{fmt_rate(acks):>9} ack-deletes/s ({t3 - t2:.2f} s, ranges of {ack_size}, "
        f"{(c3 - c2) / n * 1e6:.2f} us CPU each)")
    return ins, acks


def reading_doc(rd: Reading) -> dict[str, Any]:
    return {"meter": rd.meter_id, "quantity": rd.quantity, "mantissa": rd.mantissa,
            "exponent": rd.exponent, "unit": rd.unit, "meter_ts_ms": rd.meter_ts_ms,
            "rx_ts_ms": rd.rx_ts_ms, "quality": list(rd.quality), "bus": rd.bus}


def tinydb_round(tmp: Path, readings: Sequence[Reading], r: int, out: Out,
                 timeout: float = 60.0) -> tuple[float, list[tuple[int, float]]]:
    """Insert one by one; returns the overall rate and (docs so far, rate) per half."""
    from tinydb import TinyDB

    path = tmp / f"tinydb-{r}.json"
    db = TinyDB(str(path))
    n = len(readings)
    half = max(1, n // 2)
    parts: list[tuple[int, float]] = []
    try:
        deadline = time.monotonic() + timeout
        t0 = ts = time.perf_counter()
        done = 0
        for i, rd in enumerate(readings, 1):
            db.insert(reading_doc(rd))
            done = i
            if i % half == 0 or i == n:
                now = time.perf_counter()
                parts.append((i, (i - (parts[-1][0] if parts else 0)) / (now - ts)))
                ts = now
            if time.monotonic() > deadline:
                break
        t1 = time.perf_counter()
        size = path.stat().st_size
    finally:
        db.close()
        path.unlink(missing_ok=True)
    rate = done / (t1 - t0)
    halves = ", ".join(f"{rt:,.0f}/s up to {k} docs" for k, rt in parts)
    out(f"  tinydb  round {r}: {fmt_rate(rate):>9} inserts/s ({done} docs in {t1 - t0:.2f} s, "
        f"file {size // 1024} KiB; {halves})"
        + ("" if done == n else f" [stopped at the {timeout:.0f} s bound]"))
    return rate, parts


def run(n: int = 100_000, rounds: int = 3, tinydb_n: int = 2000, submit_size: int = 1000,
        ack_size: int = 100, base_dir: str | None = None, out: Out = print) -> dict[str, Any]:
    readings = make_readings(n, submit_size)
    tiny = readings[:max(1, min(tinydb_n, n))]
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-", dir=base_dir))
    out(f"store: {n} readings in submits of {submit_size}, acks in ranges of {ack_size}; "
        f"TinyDB {len(tiny)} one by one; {rounds} interleaved rounds; files in {tmp}")
    ins: list[float] = []
    acks: list[float] = []
    tdb: list[float] = []
    halves: list[list[tuple[int, float]]] = []
    try:
        for r in range(1, rounds + 1):
            i, a = store_round(tmp, readings, r, submit_size, ack_size, out)
            ins.append(i)
            acks.append(a)
            rate, parts = tinydb_round(tmp, tiny, r, out)
            tdb.append(rate)
            halves.append(parts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = median([a / b for a, b in zip(ins, tdb)])  # paired: interleaved rounds
    if all(len(h) == 2 for h in halves):
        first = median([h[0][1] for h in halves])
        second = median([h[1][1] for h in halves])
        out(f"tinydb slows as its file grows: {fmt_rate(first)}/s for docs 1-{halves[0][0][0]}, "
            f"{fmt_rate(second)}/s for docs {halves[0][0][0] + 1}-{halves[0][1][0]} "
            f"({second / first:.2f}x): each insert re-reads and rewrites the whole JSON file")
    s = {"inserts_per_s": median(ins), "acks_per_s": median(acks),
         "tinydb_inserts_per_s": median(tdb), "ratio_vs_tinydb": ratio}
    ok = ratio >= TARGET_VS_TINYDB
    s["pass"] = ok
    out(f"{'PASS' if ok else 'FAIL'}  durable inserts/s >= {TARGET_VS_TINYDB:.0f} x TinyDB: "
        f"{ratio:.0f}x")
    out(f"inserts_per_s={s['inserts_per_s']:.0f} acks_per_s={s['acks_per_s']:.0f} "
        f"tinydb_inserts_per_s={s['tinydb_inserts_per_s']:.0f} ratio_vs_tinydb={ratio:.1f}")
    return s


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.store", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="readings per store round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--tinydb-n", type=int, default=2000, help="readings per TinyDB round")
    ap.add_argument("--submit-size", type=int, default=1000,
                    help="records per Store.submit (one tick of this many meters)")
    ap.add_argument("--ack-size", type=int, default=100, help="seqs per Store.ack range")
    ap.add_argument("--dir", help="where the temp files go (default: $TMPDIR); "
                                  "put it on the gateway's storage to measure that medium")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    a = ap.parse_args(argv)
    if min(a.n, a.rounds, a.tinydb_n, a.submit_size, a.ack_size) < 1:
        ap.error("sizes must be >= 1")
    s = run(a.n, a.rounds, a.tinydb_n, a.submit_size, a.ack_size, a.dir)
    return 1 if a.strict and not s["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())

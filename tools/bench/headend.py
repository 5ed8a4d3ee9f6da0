"""Head-end ingest throughput into PostgreSQL, against two baselines of the same run.

    python -m tools.bench.headend [--gateways 100] [--envelopes 20] [--workers 2]

The same signed envelopes (64 readings each, from many gateways) are published to a TLS
Mosquitto and ingested by N ``gateway-headend ingest`` workers (one share group) into a
throw-away PostgreSQL cluster (fsync on, as in production), timed from the first publish
until the database holds every record. Baselines, on a fresh database of the same schema:

* naive: verify each envelope and INSERT one reading per transaction;
* copy:  a bare ``COPY`` of the same reading rows into the same table, one transaction.

Last line: ``readings_per_s=... ratio_vs_naive=... ratio_vs_copy=...`` (targets >= 20x naive
and >= 0.25x COPY).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.wire.cose import load_private_key, load_public_key
from gateway.headend.db import READING_COLS, open_db
from gateway.headend.ingest import reading_row
from gateway.model import Reading, StoredRecord
from gateway.wire.envelope import decode_envelope, encode_envelope
from tools.bench.common import EPOCH_MS, bench_env, close_client, make_readings, paho_publisher
from tools.pg import PgCluster

ROOT = Path(__file__).resolve().parents[2]
PER_ENVELOPE = 64
Out = Callable[[str], None]


def envelopes(gateways: int, per_gateway: int, key: Ed25519PrivateKey,
              per: int = PER_ENVELOPE) -> list[tuple[str, bytes, list[Reading]]]:
    """(topic, payload, readings): each gateway's readings in envelopes of `per`."""
    out = []
    for g in range(gateways):
        gid = f"gw-{g + 1:05d}"
        rs = make_readings(per * per_gateway, meters=per, bus=f"b{g}",
                           start_ms=EPOCH_MS + g * 1000)
        for i in range(per_gateway):
            chunk = rs[i * per:(i + 1) * per]
            recs = [StoredRecord(i * per + j + 1, r) for j, r in enumerate(chunk)]
            out.append((f"meters/{gid}/up/data",
                        encode_envelope(gid, "e1", recs, chunk[-1].rx_ts_ms, key), chunk))
    return out


def _fresh_db(cluster: PgCluster) -> str:
    import psycopg
    name = f"b_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    dsn = cluster.dsn.rsplit("/", 1)[0] + f"/{name}"
    db = open_db(dsn)
    db.connect()
    db.migrate()
    db.close()
    return dsn


def _accepted(db: Any) -> int:
    """Records the workers have committed (one kept connection: polling must stay cheap)."""
    n = int(db.all("SELECT coalesce(sum(value), 0) FROM counters "
                   "WHERE name IN ('accepted', 'duplicates', 'conflicts')")[0][0])
    db.commit()
    return n


def _workers(env: Any, dsn: str, ids: list[str],
             group: str) -> list[tuple[subprocess.Popen[bytes], Any]]:
    """Workers in share group `group` (one per round: an earlier round's offline members
    would otherwise keep getting their share)."""
    out = []
    for cid in ids:
        log = open(env.tmp / f"{cid}.log", "ab")
        out.append((subprocess.Popen(
            [sys.executable, "-m", "gateway.headend", "ingest", "--db", dsn, "--host",
             "localhost", "--port", str(env.port), "--pki", str(env.pki), "--share", group,
             "--client-id", cid, "-q"], cwd=ROOT, stdout=log, stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)}), log))
    return out


def _stop(procs: list[tuple[subprocess.Popen[bytes], Any]]) -> None:
    for p, _ in procs:
        if p.poll() is None:
            p.terminate()
    for p, log in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()


def bench_pipeline(env: Any, cluster: PgCluster, envs: list[tuple[str, bytes, list[Reading]]],
                   workers: int, timeout: float, out: Out, tag: str = "r") -> float:
    """The workers' sessions first subscribe, then go offline while every envelope is
    published (the broker queues each member's share, as during a head-end outage: the
    gateways' publishing is not on this machine in the field); then the workers start and
    are timed from their first commit to the last record."""
    dsn = _fresh_db(cluster)
    poll = open_db(dsn)
    poll.connect()
    poll.ensure_partitions(r.meter_ts_ms or r.rx_ts_ms for _t, _p, rs in envs for r in rs)
    ids = [f"bench-{tag}-w{i}" for i in range(workers)]
    total = len(envs) * PER_ENVELOPE
    procs = _workers(env, dsn, ids, f"bench-{tag}")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                b"subscribed" in (env.tmp / f"{cid}.log").read_bytes() for cid in ids):
            time.sleep(0.05)
        _stop(procs)
        pub = paho_publisher(env, inflight=100)
        infos = [pub.publish(topic, payload, qos=1) for topic, payload, _ in envs]
        for info in infos:
            info.wait_for_publish(timeout)
        close_client(pub)
        procs = _workers(env, dsn, ids, f"bench-{tag}")
        t_launch = time.perf_counter()
        end = time.monotonic() + timeout
        n0 = n = 0
        t0 = None
        while time.monotonic() < end:
            n = _accepted(poll)
            if n and t0 is None:
                t0, n0 = time.perf_counter(), n
            if n >= total:
                break
            time.sleep(0.02)
        dt = time.perf_counter() - (t0 or 0)
        if n < total or t0 is None:
            logs = "\n".join(f"--- {cid}\n" + (env.tmp / f"{cid}.log").read_text(
                errors="replace")[-1500:] for cid in ids)
            raise RuntimeError(f"only {n} of {total} records in {timeout}s; logs:\n{logs}")
    finally:
        _stop(procs)
        poll.close()
    if n0 >= total:  # drained before the first poll (tiny runs): count from the launch
        n0, dt = 0, (t0 or 0) - t_launch
    rate = (total - n0) / dt
    out(f"  pipeline: {workers} workers, {len(envs)} queued envelopes, {total - n0} readings "
        f"after the first commit in {dt:.2f}s: {rate:,.0f} readings/s")
    return rate


def bench_naive(cluster: PgCluster, envs: list[tuple[str, bytes, list[Reading]]],
                trusted: dict[str, Any], n: int, out: Out) -> float:
    dsn = _fresh_db(cluster)
    db = open_db(dsn)
    db.connect()
    db.ensure_partitions(r.meter_ts_ms or r.rx_ts_ms for _t, _p, rs in envs for r in rs)
    sql = (f"INSERT INTO readings ({', '.join(READING_COLS)}) "
           f"VALUES ({', '.join(['%s'] * len(READING_COLS))})")
    done = 0
    t0 = time.perf_counter()
    for topic, payload, _ in envs:
        env = decode_envelope(payload, trusted)
        for sr in env.records:
            db.conn.execute(sql, reading_row(sr.record, env.gateway_id, env.epoch, sr.seq, True))
            db.conn.commit()
            done += 1
        if done >= n:
            break
    dt = time.perf_counter() - t0
    db.close()
    rate = done / dt
    out(f"  naive:    {done} readings, one INSERT + COMMIT each, in {dt:.2f}s: "
        f"{rate:,.0f} readings/s")
    return rate


def bench_copy(cluster: PgCluster, envs: list[tuple[str, bytes, list[Reading]]],
               out: Out) -> float:
    dsn = _fresh_db(cluster)
    db = open_db(dsn)
    db.connect()
    db.ensure_partitions(r.meter_ts_ms or r.rx_ts_ms for _t, _p, rs in envs for r in rs)
    rows = []
    for topic, _p, rs in envs:
        gid = topic.split("/")[1]
        rows += [reading_row(r, gid, "e1", i + 1, True) for i, r in enumerate(rs)]
    t0 = time.perf_counter()
    db.write_readings(rows)
    db.commit()
    dt = time.perf_counter() - t0
    db.close()
    rate = len(rows) / dt
    out(f"  copy:     {len(rows)} prepared rows, one COPY, in {dt:.2f}s: {rate:,.0f} readings/s")
    return rate


def run(gateways: int = 100, per_gateway: int = 20, workers: int = 2, naive_n: int = 3000,
        rounds: int = 3, timeout: float = 300.0, fsync: bool = True,
        out: Out = print) -> dict[str, float]:
    out(f"headend: {gateways} gateways x {per_gateway} envelopes x {PER_ENVELOPE} readings, "
        f"{workers} workers, {rounds} rounds, PostgreSQL fsync {'on' if fsync else 'off'}, "
        f"{os.cpu_count()} CPUs")
    with bench_env("bench-headend-") as env:
        key = load_private_key(env.pki / "gateway-sign.key")
        trusted = {"*": load_public_key(env.pki / "gateway-sign.pub")}
        envs = envelopes(gateways, per_gateway, key)
        copies, naives, rates = [], [], []
        with PgCluster(fsync=fsync) as cluster:
            for r in range(rounds):  # interleaved, so a busy moment hits all three alike
                out(f" round {r + 1}/{rounds}")
                copies.append(bench_copy(cluster, envs, out))
                naives.append(bench_naive(cluster, envs, trusted, naive_n, out))
                rates.append(bench_pipeline(env, cluster, envs, workers, timeout, out, f"r{r}"))
    copy, naive, rate = (statistics.median(x) for x in (copies, naives, rates))
    out(f"medians: pipeline {rate:,.0f}/s, naive {naive:,.0f}/s, copy {copy:,.0f}/s")
    s = {"readings_per_s": rate, "ratio_vs_naive": rate / naive, "ratio_vs_copy": rate / copy}
    for name, ok, val in (("ingest >= 20x naive", s["ratio_vs_naive"] >= 20,
                           f"{s['ratio_vs_naive']:.1f}x"),
                          ("ingest >= 0.25x bare COPY", s["ratio_vs_copy"] >= 0.25,
                           f"{s['ratio_vs_copy']:.2f}x")):
        out(f"{'PASS' if ok else 'FAIL'}  {name}: {val}")
    out(f"readings_per_s={rate:.0f} ratio_vs_naive={s['ratio_vs_naive']:.2f} "
        f"ratio_vs_copy={s['ratio_vs_copy']:.3f}")
    return s


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.headend", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=100)
    ap.add_argument("--envelopes", type=int, default=20, help="per gateway")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--naive", type=int, default=3000, help="readings for the naive baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-fsync", action="store_true")
    a = ap.parse_args(argv)
    run(a.gateways, a.envelopes, a.workers, a.naive, a.rounds, fsync=not a.no_fsync)
    return 0


if __name__ == "__main__":
    sys.exit(main())

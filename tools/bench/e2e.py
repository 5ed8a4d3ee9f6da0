"""End-to-end throughput: the real store + the real uplink over mutual-TLS Mosquitto.

    python -m tools.bench.e2e [--n 100000] [--rounds 5] [--batch B] [--naive-n 20000]

Per round, interleaved (pipeline, naive, raw, pipeline, naive, raw, ...):

* **pipeline**: the same N 15-minute register readings are submitted to a fresh
  ``gateway.store.Store`` in driver-sized batches (one tick of M meters per submit, normal
  group-commit path, fsync'd WAL); the real ``gateway.uplink.mqtt.Uplink`` fetches them,
  builds signed COSE envelopes of up to B records, publishes them QoS 1 (window 20) to a
  mutual-TLS Mosquitto and deletes each batch on its PUBACK. Timed from the first submit
  until the store is empty.
* **naive**: one JSON document per reading, QoS 1, same window, one topic per meter, as
  many gateways publish (fewer readings; a rate).
* **raw**: paho publishing our envelopes, pre-encoded before timing (same B), no store,
  no signing: the ceiling for these bytes on this broker/TLS/client stack (in several
  passes when they are fewer than --raw-min-msgs, so the timed window is not milliseconds).

With 2 or more CPUs this process (pipeline and baselines alike) runs on the first CPU and
the broker and mosquitto_sub on the others (--no-pin to let them share): in the field the
broker is another machine, and on a 2-core box a shared CPU makes the figures depend more on
the scheduler than on the code.

A mosquitto_sub (head-end certificate) counts what arrives; the pipeline's envelopes are
verified afterwards (signature, every seq exactly once, every reading equal to the input).
The last line is ``readings_per_s=.. ratio_vs_naive=.. ratio_vs_raw=.. bytes_per_reading=..``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.model import Reading
from gateway.runtime import load_signing_key
from gateway.store import CHUNK_MAX_RECORDS, Store, encode_chunk
from gateway.wire.envelope import decode_envelope, seal
from gateway.uplink.mqtt import Uplink

from .common import (Env, PubackCounter, Subscriber, UplinkCfg, bench_env, chunks, close_client,
                     fmt_rate, make_readings, median, paho_publisher, thread_cpu_s, wait_until)

GATEWAY_ID = "gw-0001"
DEFAULT_BATCH = 64  # = the gateway's default uplink.batch_max_records
TARGET_VS_NAIVE = 10.0
TARGET_VS_RAW = 0.25
TARGET_BYTES = 30.0

Out = Callable[[str], None]


@dataclass
class RoundResult:
    rate: float
    seconds: float
    cpu_us_per_reading: float
    messages: int = 0
    payload_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _ThreadProfiler:
    """cProfile for every thread started while active (store writer, uplink, paho loop)."""

    def __init__(self, clock: str = "cpu") -> None:
        # cpu: per-thread CPU time (where the work is); wall: includes waiting, e.g. for the
        # GIL inside sqlite3/ssl calls that release it (where the threads stall).
        self.timer = time.thread_time if clock == "cpu" else time.perf_counter
        self.clock = clock
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        p = cProfile.Profile(self.timer)
        with self._lock:
            self.profiles.append(p)
        p.enable()  # replaces this hook in the new thread

    def __enter__(self) -> "_ThreadProfiler":
        threading.setprofile(self._hook)
        main = cProfile.Profile(self.timer)
        self.profiles.append(main)
        main.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]
        self.profiles[0].disable()

    def report(self, limit: int = 35) -> str:
        buf = io.StringIO()
        st = pstats.Stats(*self.profiles, stream=buf)
        st.sort_stats("tottime").print_stats(limit)
        return buf.getvalue()


# ------------------------------------------------------------------------------- rounds


def pipeline_round(env: Env, readings: Sequence[Reading], r: int, batch: int, inflight: int,
                   tick: int, key: Ed25519PrivateKey, verify_pub: Any, out: Out,
                   timeout: float, profiler: _ThreadProfiler | None = None) -> RoundResult:
    n = len(readings)
    prefix = f"bench{r}p"
    sub = Subscriber(env, f"{prefix}/#", env.tmp / f"sub-pipeline-{r}.txt", payloads=verify_pub
                     is not None)
    store_path = env.tmp / f"store-{r}.db"
    try:
        sub.wait_ready(env)
        cfg = UplinkCfg(host=env.host, port=env.port, ca=str(env.pki / "ca.pem"),
                        cert=str(env.pki / "gateway.pem"), key=str(env.pki / "gateway.key"),
                        topic_prefix=prefix, client_id=f"bench-gw-{r}", inflight=inflight,
                        batch_max_records=batch)
        ctx = profiler if profiler is not None else _Null()
        with ctx:
            store = Store(store_path)
            uplink = Uplink(cfg, GATEWAY_ID, store, key)
            try:
                uplink.start()
                if not wait_until(lambda: uplink.state.connected, 15):
                    raise RuntimeError(f"uplink did not connect: {uplink.state.last_error}")
                th0 = thread_cpu_s()
                c0 = _cpu()
                t0 = time.perf_counter()
                futs = [store.submit(c) for c in chunks(readings, tick)]
                deadline = time.monotonic() + timeout
                for f in futs:
                    f.result(max(0.1, deadline - time.monotonic()))
                t_stored = time.perf_counter()
                if not wait_until(lambda: store.stats().depth == 0, deadline - time.monotonic(),
                                  0.002):
                    raise RuntimeError(f"store not empty after {timeout:.0f} s: "
                                       f"{store.stats().depth} left")
                t1 = time.perf_counter()
                c1 = _cpu()
                th1 = thread_cpu_s()
                st = uplink.state
                msgs, acked = st.messages_acked, st.records_acked
                commits = store.stats().commits
            finally:
                uplink.stop(drain_timeout=1.0)
                store.close()
        if acked != n:
            raise RuntimeError(f"uplink acknowledged {acked} records, expected {n}")
        got = sub.wait_count(f"{prefix}/{GATEWAY_ID}/up/readings", msgs, 15)
        lines = sub.lines(f"{prefix}/{GATEWAY_ID}/up/readings")
        if got != msgs:
            raise RuntimeError(f"subscriber got {got} messages, broker acknowledged {msgs}")
        nbytes = sum(int(ln[1]) for ln in lines)
        if verify_pub is not None:
            _verify(lines, readings, verify_pub)
        threads = {k: (v - th0.get(k, 0.0)) / n * 1e6 for k, v in th1.items()}
        res = RoundResult(n / (t1 - t0), t1 - t0, (c1 - c0) / n * 1e6, msgs, nbytes,
                          {"stored_s": t_stored - t0, "threads": threads})
        out(f"  pipeline  round {r}: {fmt_rate(res.rate):>9} readings/s  "
            f"({res.seconds:.2f} s, all durable after {t_stored - t0:.2f} s; {msgs} msgs, "
            f"{commits} store commits, "
            f"{nbytes / n:.2f} B/reading, {res.cpu_us_per_reading:.1f} us CPU/reading"
            + (", verified" if verify_pub is not None else "") + ")")
        out("            CPU us/reading by thread: " + ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v > 0.05))
        return res
    finally:
        sub.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(str(store_path) + suffix)
            except FileNotFoundError:
                pass


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _verify(lines: list[list[bytes]], readings: Sequence[Reading], pub: Any) -> None:
    seen = 0
    next_seq = 1
    for ln in lines:
        env = decode_envelope(bytes.fromhex(ln[2].decode()), {"*": pub})
        for sr in env.records:
            if sr.seq != next_seq:
                raise RuntimeError(f"verification: seq {sr.seq} where {next_seq} was expected")
            if sr.record != readings[sr.seq - 1]:
                raise RuntimeError(f"verification: seq {sr.seq} carries {sr.record!r}, "
                                   f"expected {readings[sr.seq - 1]!r}")
            next_seq += 1
            seen += 1
    if seen != len(readings):
        raise RuntimeError(f"verification: {seen} readings arrived, expected {len(readings)}")


def naive_json(rd: Reading) -> bytes:
    """One reading as many gateways publish it: a self-describing JSON document."""
    return json.dumps({"meter": rd.meter_id, "obis": rd.quantity, "value": rd.mantissa,
                       "scaler": rd.exponent, "unit": rd.unit, "ts": rd.meter_ts_ms,
                       "rx": rd.rx_ts_ms, "quality": list(rd.quality)}).encode()


def _paho_round(env: Env, name: str, r: int, inflight: int, timeout: float,
                messages: Iterable[tuple[str, bytes]], expected: int,
                delivered_prefix: str) -> tuple[float, float, int]:
    """Publish (topic, payload) pairs with plain paho at QoS 1 and wait for every PUBACK and
    for the subscriber to see them all: (seconds, CPU seconds, payload bytes)."""
    prefix = f"bench{r}{name[0]}"
    sub = Subscriber(env, f"{prefix}/#", env.tmp / f"sub-{name}-{r}.txt")
    try:
        sub.wait_ready(env)
        c = paho_publisher(env, "gateway", inflight, client_id=f"bench-{name}-{r}")
        acks = PubackCounter(c)
        try:
            nbytes = 0
            c0 = _cpu()
            t0 = time.perf_counter()
            for topic, payload in messages:
                nbytes += len(payload)
                c.publish(f"{prefix}/{topic}", payload, qos=1)
            acks.expect(expected)
            if not acks.done.wait(timeout):
                raise RuntimeError(f"{name}: {acks.n} of {expected} PUBACKs after "
                                   f"{timeout:.0f} s")
            t1 = time.perf_counter()
            c1 = _cpu()
        finally:
            close_client(c)
        got = sub.wait_count(f"{prefix}/{delivered_prefix}", expected, 15)
        if got != expected:
            raise RuntimeError(f"{name}: subscriber got {got} of {expected} messages")
        return t1 - t0, c1 - c0, nbytes
    finally:
        sub.close()


def naive_round(env: Env, readings: Sequence[Reading], r: int, inflight: int, out: Out,
                timeout: float) -> RoundResult:
    n = len(readings)
    seconds, cpu, nbytes = _paho_round(
        env, "naive", r, inflight, timeout,
        ((f"{GATEWAY_ID}/{rd.meter_id}", naive_json(rd)) for rd in readings), n,
        f"{GATEWAY_ID}/")
    res = RoundResult(n / seconds, seconds, cpu / n * 1e6, n, nbytes)
    out(f"  naive     round {r}: {fmt_rate(res.rate):>9} readings/s  "
        f"({n} msgs in {res.seconds:.2f} s, {nbytes / n:.0f} B/reading, "
        f"{res.cpu_us_per_reading:.1f} us CPU/reading)")
    return res


def raw_round(env: Env, envelopes: Sequence[bytes], n: int, r: int, inflight: int, out: Out,
              timeout: float, min_msgs: int = 5000) -> RoundResult:
    """Publish the pre-encoded envelopes (several passes when they are few, so that the
    timed window is not a few milliseconds long) and wait for every PUBACK."""
    passes = max(1, -(-min_msgs // len(envelopes)))
    total = passes * len(envelopes)
    topic = f"{GATEWAY_ID}/up/readings"
    seconds, cpu, nbytes = _paho_round(
        env, "raw", r, inflight, timeout,
        ((topic, payload) for _ in range(passes) for payload in envelopes), total, topic)
    res = RoundResult(n * passes / seconds, seconds, cpu / (n * passes) * 1e6, total, nbytes)
    out(f"  raw       round {r}: {fmt_rate(res.rate):>9} readings/s  "
        f"({total} msgs{f' ({passes} passes)' if passes > 1 else ''} in {res.seconds:.2f} s"
        f" = {fmt_rate(total / res.seconds)} msgs/s)")
    return res


def build_envelopes(readings: Sequence[Reading], batch: int, key: Ed25519PrivateKey,
                    epoch: str = "0123456789abcdef", tick: int = 1000,
                    chunk_max: int = CHUNK_MAX_RECORDS) -> list[bytes]:
    """The envelopes the pipeline sends for these readings, same shape and size: chunks of
    at most chunk_max records within each tick (store submit), as many whole chunks per
    message as fit in batch records (at least one), the current envelope format."""
    stored = []
    seq = 1
    for t in chunks(list(readings), tick):
        for run in chunks(t, chunk_max):
            base, body = encode_chunk(seq, 0, [rd.to_obj() for rd in run])
            stored.append((seq, seq + len(run) - 1, len(run), base, body))
            seq += len(run)
    sent = readings[-1].rx_ts_ms if readings else 0
    out: list[bytes] = []
    msg: list[Any] = []
    n = 0
    for ch in stored:
        if msg and n + ch[2] > batch:
            out.append(seal(GATEWAY_ID, epoch, sent, msg, key))
            msg, n = [], 0
        msg.append(ch)
        n += ch[2]
    if msg:
        out.append(seal(GATEWAY_ID, epoch, sent, msg, key))
    return out


# ---------------------------------------------------------------------------------- main


def run(n: int = 100_000, rounds: int = 5, batch: int = DEFAULT_BATCH, naive_n: int = 20_000,
        meters: int = 1000, inflight: int = 20, verify: bool = True, profile: str | None = None,
        timeout: float = 300.0, raw_min_msgs: int = 5000, pin: bool = True,
        out: Out = print) -> dict[str, Any]:
    readings = make_readings(n, meters)
    naive_readings = readings[:max(1, min(naive_n, n))]
    out(f"e2e: {n} readings ({min(meters, n)} meters x 15 min), batch {batch}, window {inflight}, "
        f"{rounds} rounds (pipeline, naive, raw interleaved); naive uses {len(naive_readings)}; "
        f"{os.cpu_count()} CPUs")
    with bench_env("bench-e2e-", pin=pin) as env:
        out("  " + (f"this process (pipeline and baselines alike) pinned to CPU "
                    f"{_cpus(env.client_cpus)}, broker and subscriber to CPU "
                    f"{_cpus(env.server_cpus)}" if env.client_cpus else
                    "not pinned: the broker and subscriber share the CPUs with the pipeline"))
        key = load_signing_key(str(env.pki / "gateway-sign.key"))
        pub = serialization.load_pem_public_key((env.pki / "gateway-sign.pub").read_bytes()) \
            if verify else None
        envelopes = build_envelopes(readings, batch, key, tick=meters)
        out(f"  raw: {len(envelopes)} envelopes pre-encoded, "
            f"{sum(map(len, envelopes)) / n:.2f} B/reading; broker {env.host}:{env.port} "
            f"(mTLS), store in {env.tmp}")
        prof = _ThreadProfiler(profile) if profile else None
        res: dict[str, list[RoundResult]] = {"pipeline": [], "naive": [], "raw": []}
        for r in range(1, rounds + 1):
            res["pipeline"].append(pipeline_round(env, readings, r, batch, inflight, meters, key,
                                                  pub, out, timeout, prof))
            res["naive"].append(naive_round(env, naive_readings, r, inflight, out, timeout))
            res["raw"].append(raw_round(env, envelopes, n, r, inflight, out, timeout,
                                        raw_min_msgs))
    if prof is not None:
        out(f"profile of the pipeline rounds (all threads, {prof.clock} time, sorted by own time):")
        out(prof.report())
    p = [x.rate for x in res["pipeline"]]
    nv = [x.rate for x in res["naive"]]
    rw = [x.rate for x in res["raw"]]
    # Rounds are interleaved, so the per-round ratios pair runs that saw similar CPU speed.
    ratio_naive = median([a / b for a, b in zip(p, nv)])
    ratio_raw = median([a / b for a, b in zip(p, rw)])
    bpr = median([x.payload_bytes / n for x in res["pipeline"]])
    summary = {"readings_per_s": median(p), "ratio_vs_naive": ratio_naive,
               "ratio_vs_raw": ratio_raw, "bytes_per_reading": bpr,
               "naive_per_s": median(nv), "raw_per_s": median(rw),
               "pipeline_cpu_us": median([x.cpu_us_per_reading for x in res["pipeline"]]),
               "naive_cpu_us": median([x.cpu_us_per_reading for x in res["naive"]]),
               "raw_cpu_us": median([x.cpu_us_per_reading for x in res["raw"]])}
    out(f"medians: pipeline {fmt_rate(summary['readings_per_s'])}/s "
        f"({summary['pipeline_cpu_us']:.1f} us CPU/reading in this process), "
        f"naive {fmt_rate(summary['naive_per_s'])}/s ({summary['naive_cpu_us']:.1f} us), "
        f"raw {fmt_rate(summary['raw_per_s'])}/s ({summary['raw_cpu_us']:.1f} us)")
    need_naive = 1e6 / summary["naive_per_s"] / TARGET_VS_NAIVE
    need_raw = 1e6 / summary["raw_per_s"] / TARGET_VS_RAW
    out(f"wall time per reading: pipeline {1e6 / summary['readings_per_s']:.2f} us; the targets "
        f"need <= {need_naive:.2f} us (10 x naive) and <= {need_raw:.2f} us (0.25 x raw at "
        f"batch {batch}: {fmt_rate(summary['raw_per_s'] / batch)} msgs/s)")
    checks = [("readings/s >= 10 x naive", ratio_naive >= TARGET_VS_NAIVE,
               f"{ratio_naive:.1f}x"),
              ("readings/s >= 0.25 x raw", ratio_raw >= TARGET_VS_RAW, f"{ratio_raw:.2f}x"),
              ("bytes/reading <= 30", bpr <= TARGET_BYTES, f"{bpr:.2f}")]
    for name, ok, val in checks:
        out(f"{'PASS' if ok else 'FAIL'}  {name}: {val}")
    summary["pass"] = all(ok for _, ok, _ in checks)
    out(f"readings_per_s={summary['readings_per_s']:.0f} ratio_vs_naive={ratio_naive:.2f} "
        f"ratio_vs_raw={ratio_raw:.3f} bytes_per_reading={bpr:.2f}")
    return summary


def _cpus(cpus: set[int] | None) -> str:
    return ",".join(map(str, sorted(cpus or ())))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.e2e", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="readings per pipeline/raw round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                    help="records per message (uplink batch_max_records; raw uses the same)")
    ap.add_argument("--naive-n", type=int, default=20_000, help="readings per naive round")
    ap.add_argument("--meters", type=int, default=1000, help="simulated meters per 15-min tick "
                                                             "(= records per store submit)")
    ap.add_argument("--inflight", type=int, default=20, help="QoS 1 in-flight window")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip decoding/verifying the pipeline's envelopes after each round")
    ap.add_argument("--profile", choices=["cpu", "wall"],
                    help="cProfile every thread of the pipeline rounds (slows them down): "
                         "per-thread CPU time, or wall time (shows GIL/lock waits)")
    ap.add_argument("--raw-min-msgs", type=int, default=5000,
                    help="raw publishes the envelopes in as many passes as it takes to send "
                         "at least this many messages (a longer timed window)")
    ap.add_argument("--timeout", type=float, default=300.0, help="bound per round, seconds")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not keep this process on the first CPU and the broker and "
                         "subscriber on the others (with 2+ CPUs they are kept apart by "
                         "default: in the field the broker is another machine)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    a = ap.parse_args(argv)
    if a.n < 1 or a.rounds < 1 or a.batch < 1 or a.naive_n < 1 or a.meters < 1:
        ap.error("sizes must be >= 1")
    s = run(a.n, a.rounds, a.batch, a.naive_n, a.meters, a.inflight, not a.no_verify,
            a.profile, a.timeout, max(1, a.raw_min_msgs), not a.no_pin)
    return 1 if a.strict and not s["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())

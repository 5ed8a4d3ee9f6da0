"""Shared pieces of the benchmarks: workload, temp PKI + broker, subscriber, statistics.

Nothing here is timed itself; every helper bounds its waits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import paho.mqtt.client as mqtt

from gateway.model import QUALITY_SIMULATED, Reading
from tools.broker import Broker, client_tls_context
from tools.devpki import make_pki

QUARTER_MS = 15 * 60 * 1000
METER_QUANTITY = "1-0:1.8.0"
# A fixed 15-minute boundary (2024-01-01T00:00Z) keeps the workload identical run to run.
EPOCH_MS = 1_704_067_200_000


def make_readings(n: int, meters: int = 1000, bus: str = "sim",
                  start_ms: int = EPOCH_MS) -> list[Reading]:
    """n register readings as the simulated driver produces them: every 15 minutes one
    reading per meter (sim-00001, sim-00002, ...), meter_ts on the quarter-hour boundary,
    received a few hundred ms later, Wh with exponent 0, quality 'simulated'."""
    meters = max(1, min(meters, n))
    width = max(5, len(str(meters)))
    ids = [f"sim-{i:0{width}d}" for i in range(1, meters + 1)]
    base = [1_000_000 + (i * 7_919_003) % 49_000_000 for i in range(meters)]
    load = [100 + (i * 104_729) % 4_900 for i in range(meters)]
    q = (QUALITY_SIMULATED,)
    out: list[Reading] = []
    tick = 0
    while len(out) < n:
        ts = start_ms + tick * QUARTER_MS
        rx = ts + 200 + (tick * 37) % 400  # one bus poll: same rx for the whole tick
        for m in range(min(meters, n - len(out))):
            out.append(Reading(ids[m], METER_QUANTITY, base[m] + load[m] * tick // 4, 0, "Wh",
                               ts, rx + m // 50, q, bus))
        tick += 1
    return out


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


@dataclass
class UplinkCfg:
    """The attributes gateway.uplink.mqtt.Uplink reads (what config.UplinkConfig carries)."""

    host: str
    port: int
    ca: str
    cert: str
    key: str
    topic_prefix: str = "bench"
    client_id: str | None = None
    keepalive_s: int = 30
    inflight: int = 20
    batch_max_records: int = 64
    batch_max_bytes: int = 65536
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 1.0
    tls_version: str = "1.2"


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}".replace(",", "_")


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# ----------------------------------------------------------------------------- environment


@dataclass
class Env:
    tmp: Path
    pki: Path
    broker: Broker | None
    # CPUs of the broker and the subscriber (the head-end's side) when the benchmark keeps
    # them apart from the process under test; None when nothing is pinned.
    server_cpus: set[int] | None = None
    client_cpus: set[int] | None = None

    @property
    def host(self) -> str:
        assert self.broker is not None
        return self.broker.host

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.port


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(CPU for the process under test, CPUs for the broker side), or None on one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


def set_affinity(pid: int, cpus: set[int] | None) -> None:
    if cpus:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:  # the process is gone, or the container forbids it: run unpinned
            pass


def pin_this_process(cpus: set[int]) -> None:
    """Every thread of this process (sched_setaffinity(0) moves only the calling thread;
    threads and children started later inherit the mask)."""
    for tid in os.listdir("/proc/self/task"):
        set_affinity(int(tid), cpus)


@contextlib.contextmanager
def bench_env(prefix: str, broker: bool = True, keep: bool = False,
              base_dir: str | None = None, pin: bool = False) -> Iterator[Env]:
    """A temp dir holding a fresh dev PKI (and a started mTLS broker), removed afterwards.

    pin=True (with 2+ CPUs) runs this process, the one under test, on the first CPU and the
    broker and subscribers on the others: in the field the broker is another machine, and
    on a 2-core box sharing a CPU with it makes every figure depend on the scheduler.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
    b: Broker | None = None
    saved = os.sched_getaffinity(0)
    split = split_cpus() if pin else None
    try:
        pki = tmp / "pki"
        make_pki(pki)
        if broker:
            # No ACL: the benchmarks' probe topics and raw baselines publish outside the
            # gateway topic tree (tools.broker.render_acl), and it is the gateway under test.
            b = Broker(pki, data_dir=tmp / "broker", acl=False)
            b.start()
        env = Env(tmp, pki, b)
        if split is not None:
            env.client_cpus, env.server_cpus = split
            if b is not None and b.proc is not None:
                set_affinity(b.proc.pid, env.server_cpus)
            pin_this_process(env.client_cpus)
        yield env
    finally:
        if split is not None:
            pin_this_process(saved)
        if b is not None:
            b.stop()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def paho_publisher(env: Env, name: str = "gateway", inflight: int = 20,
                   client_id: str | None = None, timeout: float = 10.0) -> mqtt.Client:
    """A connected, looping paho client (MQTT 3.1.1, mTLS) with an in-flight window
    (paho only accepts the window before connecting, hence not tools.broker.connect_client)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                    client_id=client_id or f"bench-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv311, clean_session=True)
    c.tls_set_context(client_tls_context(env.pki, name))
    c.max_inflight_messages_set(inflight)
    connected = threading.Event()
    result: list[Any] = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result.append(reason)
        connected.set()

    c.on_connect = on_connect
    c.connect(env.host, env.port, keepalive=30)
    c.loop_start()
    if not connected.wait(timeout) or result[0].is_failure:
        close_client(c)
        raise ConnectionError(f"MQTT connect to {env.host}:{env.port} failed: {result}")
    return c


def close_client(c: mqtt.Client) -> None:
    try:
        c.disconnect()
    finally:
        c.loop_stop()


class PubackCounter:
    """Counts PUBACKs (on_publish) and signals when the expected number arrived."""

    def __init__(self, client: mqtt.Client) -> None:
        self.n = 0
        self.target = -1
        self.done = threading.Event()
        self._lock = threading.Lock()
        client.on_publish = self._on_publish

    def expect(self, target: int) -> None:
        with self._lock:
            self.target = target
            if self.n >= target:
                self.done.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            self.n += 1
            if self.n == self.target:
                self.done.set()


class Subscriber:
    """mosquitto_sub (headend cert, QoS 1) writing one line per message to a file.

    A C client, so that verifying delivery costs the publisher's CPU as little as possible
    on a 2-core box (a paho subscriber at 6,000 msg/s would eat a good part of a core).
    With payloads=True each line also carries the payload in hex (for verification).
    """

    def __init__(self, env: Env, topic_filter: str, out: Path, payloads: bool = False) -> None:
        self.out = out
        fmt = "%t %l %x" if payloads else "%t %l"
        self._f = open(out, "wb")
        exe = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
        self.proc = subprocess.Popen(
            [exe, "-h", env.host, "-p", str(env.port), "--cafile", str(env.pki / "ca.pem"),
             "--cert", str(env.pki / "headend.pem"), "--key", str(env.pki / "headend.key"),
             "-q", "1", "-i", f"bench-sub-{uuid.uuid4().hex[:8]}", "-F", fmt,
             "-t", topic_filter, "-t", "bench-probe/" + out.name],
            stdin=subprocess.DEVNULL, stdout=self._f, stderr=subprocess.DEVNULL)
        set_affinity(self.proc.pid, env.server_cpus)
        self._probe = "bench-probe/" + out.name

    def wait_ready(self, env: Env, timeout: float = 10.0) -> None:
        """Publish probes until one comes back: the subscription is then in place."""
        c = paho_publisher(env, "headend")
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("mosquitto_sub exited early")
                c.publish(self._probe, b"x", qos=1)
                if wait_until(lambda: self._probe.encode() in self.out.read_bytes(), 0.3, 0.01):
                    return
            raise RuntimeError("subscriber not ready (no probe came back)")
        finally:
            close_client(c)

    def lines(self, topic_prefix: str) -> list[list[bytes]]:
        data = self.out.read_bytes()
        pre = topic_prefix.encode()
        return [ln.split(b" ") for ln in data.splitlines() if ln.startswith(pre)]

    def wait_count(self, topic_prefix: str, n: int, timeout: float) -> int:
        got = [0]

        def enough() -> bool:
            got[0] = sum(1 for ln in self.out.read_bytes().splitlines()
                         if ln.startswith(topic_prefix.encode()))
            return got[0] >= n
        wait_until(enough, timeout, 0.05)
        return got[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._f.close()


def proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds (utime+stime) of each live thread of this process, by thread name."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for t in threading.enumerate():
        tid = t.native_id
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                data = f.read()
        except (OSError, TypeError):
            continue
        fields = data[data.rindex(")") + 2:].split()
        name = t.name
        if name.startswith("paho-mqtt-client"):
            name = "paho-loop"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out

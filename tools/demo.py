"""`make demo`: dev PKI, a local mutual-TLS broker, the gateway on config/demo.yaml and the
head-end verifier beside it, with readings printed as they arrive, plus a `gateway-headend
ingest` worker writing them into demo/headend.db (SQLite). Ctrl-C (or --seconds) stops the
gateway first and lets it drain, then the head-ends: the verifier's verdict and the ingested
books (`gateway-headend report`) come last; the exit code is 0 only when the verdict is OK.
Every run starts from an empty store, broker and books; one demo runs at a time
(demo/demo.lock)."""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from tools.broker import Broker, free_port
from tools.devpki import make_pki

ROOT = Path(__file__).resolve().parent.parent


def _start_dlms():
    from tools.sim import dlms
    return dlms.start(3, security="none", period_s=900, history_s=7200)


def _start_iec():
    from tools.sim import iec62056_21
    return iec62056_21.start(2)


def _start_xbee():
    from tools.sim import xbee
    return xbee.start(n_devices=6, report_interval_s=5, preconfigured=True)


def _start_mbus():
    from tools.sim import mbus
    return mbus.start()


def _start_wmbus():
    from tools.sim import wmbus
    return wmbus.start("im871a")


# driver type -> simulator factory (returns an object with .device and .stop())
SIMULATORS = {"dlms": _start_dlms, "iec62056-21": _start_iec, "zigbee": _start_xbee,
              "mbus": _start_mbus, "wmbus": _start_wmbus}


def start_simulators(cfg: dict, links: list[Path]) -> list:
    """Start one simulator per serial driver of the demo config and link its pty to the
    port the config names, so the gateway opens a 'real' device path. The links made are
    appended to ``links`` (removed on exit)."""
    sims = []
    for drv in cfg.get("drivers") or []:
        factory = SIMULATORS.get(drv.get("type"))
        port = (drv.get("serial") or {}).get("port")
        if factory is None or not port:
            continue
        sim = factory()
        sims.append(sim)
        link = Path(port)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(sim.device)
        links.append(link)
        print(f"demo: simulated {drv['type']} bus '{drv.get('name', drv['type'])}' on "
              f"{sim.device} (linked as {port})", flush=True)
    return sims


def write_demo_keys(keys: Path) -> None:
    """The wM-Bus simulator's demo key, as a key file the config points at (0600)."""
    from tools.sim import wmbus
    keys.mkdir(parents=True, exist_ok=True)
    path = keys / "wmbus.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(wmbus.DEMO_KEY.hex() + "\n")


VERDICT_OK = "OK: nothing lost, duplicated, forged or replayed"


class Pump:
    """Copies a child's output to ours with a prefix, remembering when it last spoke and
    whether the head-end's OK verdict went by. ``quiet`` drops the per-reading lines
    (DEMO_QUIET=1); ``meter`` keeps only the lines naming that meter (DEMO_METER=id)."""

    def __init__(self, stream, prefix: str, quiet: bool = False, meter: str | None = None) -> None:
        self.stream, self.prefix, self.quiet, self.meter = stream, prefix, quiet, meter
        self.last_output = time.monotonic()
        self.verdict_ok = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode(errors="replace")
            self.last_output = time.monotonic()
            if VERDICT_OK in line:
                self.verdict_ok = True
            if _is_reading_line(line) and (self.quiet or (self.meter and self.meter not in line)):
                continue
            sys.stdout.write(f"{self.prefix} {line}")
            sys.stdout.flush()


READING_LINE = re.compile(r"^\S+ \S+ -?[0-9.]+ \S* ?\d{4}-\d\d-\d\dT\S+Z$")


def _is_reading_line(line: str) -> bool:
    """The head-end's --print-readings lines: ``METER QUANTITY VALUE UNIT ISO-TIME``."""
    return bool(READING_LINE.match(line.rstrip("\n")))


def acquire_lock(demo: Path):
    """One demo at a time: a second one would delete the first one's store and re-point its
    pty links. The lock dies with the process, so a killed demo never blocks the next."""
    demo.mkdir(parents=True, exist_ok=True)
    f = open(demo / "demo.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        return None, pid
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f, None


def fresh_broker(data_dir: Path) -> None:
    """The demo broker's persistence holds what the last run's head-end never took; a new
    head-end would count it against this run's fresh store."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
        print(f"demo: removed the previous run's broker state {data_dir}", flush=True)


def stop_child(p: subprocess.Popen, what: str, timeout: float) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"demo: the {what} did not stop within {timeout:g} s; killing it", flush=True)
        p.kill()
        p.wait(5)


def fresh_store(path: Path) -> None:
    """Each demo starts with an empty store: the head-end verifier starts empty too, and a
    store kept from the last run would begin at that run's last seq + 1, which a fresh
    verifier must report as missing (it never saw them)."""
    removed = False
    for suffix in ("", "-wal", "-shm", ".reserve"):
        try:
            os.unlink(str(path) + suffix)
            removed = True
        except FileNotFoundError:
            pass
    if removed:
        print(f"demo: removed the previous run's store {path.resolve()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__)
    ap.add_argument("--config", default=str(ROOT / "config" / "demo.yaml"))
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    args = ap.parse_args(argv)

    demo = ROOT / "demo"
    lock, other = acquire_lock(demo)
    if lock is None:
        print(f"demo: another demo is running (pid {other}); stop it first (Ctrl-C in its "
              "terminal) — two would share one store, broker and set of ports", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    links: list[Path] = []
    sims: list = []
    try:
        return _run(args, demo, stop, links, sims)
    finally:
        for sim in sims:
            sim.stop()
        for link in links:
            if link.is_symlink():
                link.unlink()
        lock.close()


def _run(args: argparse.Namespace, demo: Path, stop: threading.Event, links: list[Path],
         sims: list) -> int:
    pki = demo / "pki"
    make_pki(pki)
    write_demo_keys(demo / "keys")
    config = Path(args.config)
    cfg = yaml.safe_load(config.read_text())
    port = int(cfg["uplink"]["port"])
    fresh_broker(demo / "broker")
    try:
        broker = Broker(pki, port=port, data_dir=demo / "broker").start()
    except Exception as exc:  # port taken by another broker: use a free one, say so
        port = free_port()
        print(f"demo: port {cfg['uplink']['port']} unavailable ({exc.__class__.__name__}); "
              f"using {port}", flush=True)
        broker = Broker(pki, port=port, data_dir=demo / "broker").start()
    try:
        if port != int(cfg["uplink"]["port"]):
            cfg["uplink"]["port"] = port
            # beside the original, so that its relative paths still resolve
            config = config.parent / ".demo-local.yaml"
            config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        print(f"demo: broker on 127.0.0.1:{port} (mutual TLS); gateway config {config}", flush=True)
        fresh_store(Path(args.config).parent / cfg["store"]["path"])
        sims.extend(start_simulators(cfg, links))
        return _run_pair(args, config, port, pki, stop)
    finally:
        broker.stop()


def _run_pair(args: argparse.Namespace, config: Path, port: int, pki: Path,
              stop: threading.Event) -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Own process groups: a terminal's Ctrl-C goes to the whole foreground group, and a
    # head-end that got it at the same time as the gateway would judge before the drain.
    own_group = {"start_new_session": True}
    quiet = os.environ.get("DEMO_QUIET", "") not in ("", "0")
    meter = os.environ.get("DEMO_METER") or None
    head = subprocess.Popen([sys.executable, "-m", "tools.headend", "--host", "localhost",
                             "--port", str(port), "--pki", str(pki), "--print-readings", "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            **own_group)
    # The durable head-end beside it, on its embedded SQLite default: the books of this run.
    demo = pki.parent
    books = f"sqlite:///{demo / 'headend.db'}"
    fresh_store(demo / "headend.db")
    ingest = subprocess.Popen([sys.executable, "-m", "gateway.headend", "ingest", "--db", books,
                               "--host", "localhost", "--port", str(port), "--pki", str(pki),
                               "--client-id", "demo-ingest", "--quiet"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              **own_group)
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          **own_group)
    head_out = Pump(head.stdout, "headend |", quiet, meter)
    ingest_out = Pump(ingest.stdout, "ingest  |")
    gw_out = Pump(gw.stdout, "gateway |")
    rel = os.path.relpath(config, ROOT)
    print(f"demo: attach the field-tech console with `make console` "
          f"(that is: {os.path.relpath(sys.executable, ROOT)} -m gateway console -c {rel}); "
          "Ctrl-C stops the demo", flush=True)
    deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
    while not stop.wait(0.5):
        if deadline and time.monotonic() > deadline:
            break
        if gw.poll() is not None:
            print(f"demo: the gateway exited with code {gw.returncode}", flush=True)
            break
    # The gateway first: it stops its drivers, commits, and drains what is in flight. Then
    # the head-ends, once the verifier has been quiet for a moment, so that the verdict and
    # the books cover all of that.
    print("demo: stopping the gateway (it drains what is in flight)", flush=True)
    stop_child(gw, "gateway", 60)
    quiet_deadline = time.monotonic() + 20
    while time.monotonic() < quiet_deadline and time.monotonic() - head_out.last_output < 2:
        time.sleep(0.1)
    stop_child(ingest, "ingest worker", 20)
    stop_child(head, "head-end", 20)
    for pump in (gw_out, ingest_out, head_out):
        pump.thread.join(5)
    rep = subprocess.run([sys.executable, "-m", "gateway.headend", "report", "--db", books],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    for line in (rep.stdout + rep.stderr).splitlines():
        print(f"ingest  | {line}", flush=True)
    gw_ok = gw.returncode in (0, -signal.SIGTERM)
    if not head_out.verdict_ok:
        print("demo: the head-end's verdict is not OK (see above)", flush=True)
    return 0 if gw_ok and head_out.verdict_ok else 1


if __name__ == "__main__":
    sys.exit(main())

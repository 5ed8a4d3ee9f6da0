"""`make demo`: dev PKI, a local mutual-TLS broker, the gateway on config/demo.yaml and the
head-end verifier beside it, with readings printed as they arrive, plus a `gateway-headend
ingest` worker writing them into demo/headend.db (SQLite). Ctrl-C stops everything and prints
the head-end's verdict and the ingested books (`gateway-headend report`)."""

from __future__ import annotations

import argparse
import os
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


def start_simulators(cfg: dict) -> list:
    """Start one simulator per serial driver of the demo config and link its pty to the
    port the config names, so the gateway opens a 'real' device path."""
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


def _pump(stream, prefix: str) -> None:
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{prefix} {raw.decode(errors='replace')}")
        sys.stdout.flush()


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
    pki = demo / "pki"
    make_pki(pki)
    write_demo_keys(demo / "keys")
    config = Path(args.config)
    cfg = yaml.safe_load(config.read_text())
    port = int(cfg["uplink"]["port"])
    try:
        broker = Broker(pki, port=port, data_dir=demo / "broker").start()
    except Exception as exc:  # port taken by another broker: use a free one, say so
        port = free_port()
        print(f"demo: port {cfg['uplink']['port']} unavailable ({exc.__class__.__name__}); "
              f"using {port}", flush=True)
        broker = Broker(pki, port=port, data_dir=demo / "broker").start()
    if port != int(cfg["uplink"]["port"]):
        cfg["uplink"]["port"] = port
        # beside the original, so that its relative paths still resolve
        config = config.parent / ".demo-local.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"demo: broker on 127.0.0.1:{port} (mutual TLS); gateway config {config}", flush=True)
    fresh_store(Path(args.config).parent / cfg["store"]["path"])
    sims = start_simulators(cfg)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    head = subprocess.Popen([sys.executable, "-m", "tools.headend", "--host", "localhost",
                             "--port", str(port), "--pki", str(pki), "--print-readings", "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # The durable head-end beside it, on its embedded SQLite default: the books of this run.
    books = f"sqlite:///{demo / 'headend.db'}"
    fresh_store(demo / "headend.db")
    ingest = subprocess.Popen([sys.executable, "-m", "gateway.headend", "ingest", "--db", books,
                               "--host", "localhost", "--port", str(port), "--pki", str(pki),
                               "--client-id", "demo-ingest", "--quiet"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threads = [threading.Thread(target=_pump, args=(head.stdout, "headend |"), daemon=True),
               threading.Thread(target=_pump, args=(ingest.stdout, "ingest  |"), daemon=True),
               threading.Thread(target=_pump, args=(gw.stdout, "gateway |"), daemon=True)]
    for t in threads:
        t.start()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
    while not stop.wait(0.5):
        if deadline and time.monotonic() > deadline:
            break
        if gw.poll() is not None:
            print(f"demo: the gateway exited with code {gw.returncode}", flush=True)
            break
    for p in (gw, head, ingest):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    for t in threads:
        t.join(2)
    rep = subprocess.run([sys.executable, "-m", "gateway.headend", "report", "--db", books],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    for line in (rep.stdout + rep.stderr).splitlines():
        print(f"ingest  | {line}", flush=True)
    broker.stop()
    for sim in sims:
        sim.stop()
    return 0 if gw.returncode in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: dev PKI, a local mutual-TLS broker, the gateway on config/demo.yaml and the
head-end verifier beside it, with readings printed as they arrive. Ctrl-C stops everything
and prints the head-end's verdict."""

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


def _pump(stream, prefix: str) -> None:
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{prefix} {raw.decode(errors='replace')}")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__)
    ap.add_argument("--config", default=str(ROOT / "config" / "demo.yaml"))
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    args = ap.parse_args(argv)

    demo = ROOT / "demo"
    pki = demo / "pki"
    make_pki(pki)
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
        for k in ("ca", "cert", "key", "signing_key"):
            cfg["uplink"][k] = str((config.parent / cfg["uplink"][k]).resolve())
        cfg["store"]["path"] = str((config.parent / cfg["store"]["path"]).resolve())
        config = demo / "demo-local.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"demo: broker on 127.0.0.1:{port} (mutual TLS); gateway config {config}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    head = subprocess.Popen([sys.executable, "-m", "tools.headend", "--host", "localhost",
                             "--port", str(port), "--pki", str(pki), "--print-readings", "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threads = [threading.Thread(target=_pump, args=(head.stdout, "headend |"), daemon=True),
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
    for p in (gw, head):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    for t in threads:
        t.join(2)
    broker.stop()
    return 0 if gw.returncode in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())

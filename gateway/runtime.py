"""Wires the stages together: drivers -> (edge) -> store -> uplink, and runs until told to stop."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import Future
from typing import Any, Iterable, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import __version__
from .config import Config
from .drivers.base import Driver
from .drivers.registry import make_driver
from .model import Event, Record, now_ms
from .store import Store
from .uplink.mqtt import Uplink

log = logging.getLogger("gateway")


def load_signing_key(path: str) -> Ed25519PrivateKey:
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: uplink.signing_key must be an Ed25519 private key")
    return key


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop_requested = threading.Event()
        self.store: Store | None = None
        self.uplink: Uplink | None = None
        self.drivers: list[Driver] = []

    # The sink drivers write to. The edge stage (deltas, diagnostics) hooks in here.
    def submit(self, records: Iterable[Record],
               cursors: Mapping[tuple[str, str], Any] | None = None) -> "Future[list[int]]":
        assert self.store is not None
        return self.store.submit(records, cursors)

    def emit_event(self, event: Event) -> None:
        if self.store is not None:
            self.store.submit([event])

    def start(self) -> None:
        c = self.config
        s = c.store
        self.store = Store(s.path, max_bytes=s.max_bytes, max_rows=s.max_rows,
                           commit_interval_ms=s.commit_interval_ms,
                           commit_max_records=s.commit_max_records,
                           reserve_bytes=s.reserve_bytes)
        for line in self.store.open_report:
            log.info("%s", line)
        key = load_signing_key(c.uplink.signing_key)
        birth = {"firmware": __version__, "epoch": self.store.epoch, "config_hash": c.config_hash,
                 "board": c.gateway.board}
        self.uplink = Uplink(c.uplink, c.gateway.id, self.store, key, birth, emit=self.emit_event)
        self.emit_event(Event("gateway.started", now_ms(), "runtime", detail={
            "firmware": __version__, "config_hash": c.config_hash}))
        for d in c.drivers:
            self.drivers.append(make_driver(d.type, d.name, d.options, self))
        self.uplink.start()
        for drv in self.drivers:
            drv.start()
        log.info("gateway %s running: firmware %s, %d drivers, broker %s:%d",
                 c.gateway.id, __version__, len(self.drivers), c.uplink.host, c.uplink.port)

    def stop(self) -> None:
        """Stop drivers, commit what they produced, give in-flight messages a moment to be
        acknowledged, then close the store. Nothing committed is lost either way."""
        log.info("stopping: drivers")
        for drv in self.drivers:
            drv.stop()
        if self.store is not None:
            self.store.submit([Event("gateway.stopping", now_ms(), "runtime")])
            self.store.flush()
        if self.uplink is not None:
            log.info("stopping: uplink (waiting for in-flight acks)")
            self.uplink.stop()
        if self.store is not None:
            st = self.store.stats()
            self.store.close()
            log.info("stopped cleanly: %d records left in the store for the next start (last seq %d)",
                     st.depth, st.last_seq)

    def run_forever(self) -> int:
        def on_signal(signum: int, frame: Any) -> None:
            log.info("received %s", signal.Signals(signum).name)
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        try:
            while not self.stop_requested.wait(1.0):
                pass
        finally:
            self.stop()
        return 0

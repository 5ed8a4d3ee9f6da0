"""Wires the stages together: drivers -> (edge) -> store -> uplink, and runs until told to stop."""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import Future
from typing import Any, Iterable, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import __version__
from .config import Config, DriverConfig
from .drivers.base import Driver
from .drivers.context import DriverContext
from .drivers.registry import make_driver
from .driverset import DriverSet
from .health import HealthSnapshot, collect
from .model import Event, Record, now_ms
from .store import Store
from .text import plural
from .uplink.mqtt import Uplink
from .wire.body import body_compression
from . import events as kinds

log = logging.getLogger("gateway")

EXIT_RESTART = 75  # "start me again" (OTA, new config/credentials); systemd Restart=always


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
        self.drivers = DriverSet(self._make_driver)
        self.edge: Any = None  # gateway.edge.pipeline.EdgePipeline when edge.enabled
        # Field-tech console (gateway/control): what went by, the socket, config apply.
        from .control.monitor import Monitor
        self.monitor = Monitor()
        self.control: Any = None
        self.metrics: Any = None  # gateway.metrics.MetricsServer when metrics.listen is set
        self.started_monotonic = time.monotonic()
        self._reconfig_lock = threading.Lock()
        self.fleet: Any = None  # downlink commands, OTA, trials, systemd watchdog
        self.exit_code = 0

    # The sink drivers write to. The edge stage (deltas, diagnostics) hooks in here.
    def submit(self, records: Iterable[Record],
               cursors: Mapping[tuple[str, str], Any] | None = None) -> "Future[list[int]]":
        assert self.store is not None
        records = list(records)
        self.monitor.observe(records)  # never blocks: feeds `meters` and `tail`
        if self.edge is not None:  # deltas, flags, diagnostics; state commits with records
            return self.edge.submit(records, cursors)
        return self.store.submit(records, cursors)

    def driver_context(self, config: Config, name: str) -> DriverContext:
        """What a driver of ``config`` is given: this runtime as its sink, the store's cursors,
        the keys directory, its own logger; never the runtime's other parts."""
        store = self.store
        ctx = DriverContext(self, log=logging.getLogger(f"gateway.drivers.{name}"),
                            keys_dir=config.control.keys_dir)
        if store is not None:
            ctx.cursors = store.get_cursor
        return ctx

    def health(self) -> HealthSnapshot:
        """One snapshot of every stage: what status, diag, metrics, the fleet's diagnostics,
        the edge's gateway row and the watchdog all read."""
        return collect(firmware=__version__, config_hash=self.config.config_hash,
                       started_mono=self.started_monotonic, drivers=self.drivers,
                       uplink=self.uplink, store=self.store, edge=self.edge)

    def _make_driver(self, config: Config, d: DriverConfig) -> Driver:
        return make_driver(d.type, d.name, d.options, self.driver_context(config, d.name))

    def emit_event(self, event: Event) -> None:
        if self.store is not None:
            self.monitor.observe([event])
            self.store.submit([event])

    def start(self) -> None:
        c = self.config
        s = c.store
        from .fleet.keys import check_private_key_file
        check_private_key_file(c.uplink.key, "uplink.key")  # refuse world-readable keys
        check_private_key_file(c.uplink.signing_key, "uplink.signing_key")
        self.store = Store(s.path, max_bytes=s.max_bytes, max_rows=s.max_rows,
                           commit_interval_ms=s.commit_interval_ms,
                           commit_max_records=s.commit_max_records,
                           reserve_bytes=s.reserve_bytes)
        for line in self.store.open_report:
            log.info("%s", line)
        key = load_signing_key(c.uplink.signing_key)
        birth = {"firmware": __version__, "epoch": self.store.epoch, "config_hash": c.config_hash,
                 "board": c.gateway.board}
        from .fleet.service import Fleet
        self.fleet = Fleet(self)
        self.fleet.start()
        self.uplink = Uplink(c.uplink, c.gateway.id, self.store, key, birth, emit=self.emit_event,
                             on_command=self.fleet.on_command, command_topics=self.fleet.topics)
        self.emit_event(Event(kinds.STARTED, now_ms(), "runtime", detail={
            "firmware": __version__, "config_hash": c.config_hash}))
        if c.edge.enabled:
            from .edge.pipeline import EdgePipeline
            self.edge = EdgePipeline(c.edge, self.store)
            self.edge.start(health=self.health)
        self.drivers.build(c)
        self.uplink.start()
        self.drivers.start()
        from .control.server import start_control
        self.control = start_control(self)
        if c.metrics.listen is not None:
            from .metrics import MetricsServer
            try:
                self.metrics = MetricsServer(self, *c.metrics.listen)
                self.metrics.start()
            except OSError as exc:  # a taken port must not keep the meters from being read
                log.error("metrics: cannot listen on %s:%d: %s; running without metrics",
                          *c.metrics.listen, exc.strerror or exc)
                self.metrics = None
        if self.control is not None and self.edge is not None:
            # The audit chain head goes up in the signed diagnostics: a line deleted or
            # edited on the gateway no longer matches what the head-end was told.
            audit = self.control.audit
            self.edge.gateway_extras.append(lambda: {"audit": audit.head()})
        self.fleet.started()
        log.info("gateway %s running: firmware %s, %s, broker %s:%d", c.gateway.id,
                 __version__, plural(len(self.drivers), "driver"), c.uplink.host, c.uplink.port)
        if body_compression() != "zstd":
            log.warning("the zstandard package is not installed in this venv: envelope bodies "
                        "are compressed with DEFLATE (same size, about 4x the CPU); "
                        "install it with: pip install zstandard")

    def stop(self) -> None:
        """Stop drivers, commit what they produced, give in-flight messages a moment to be
        acknowledged, then close the store. Nothing committed is lost either way."""
        if self.fleet is not None:
            self.fleet.stop()
        if self.control is not None:
            self.control.stop()
        if self.metrics is not None:
            self.metrics.stop()
        log.info("stopping: drivers")
        locked = self._reconfig_lock.acquire(timeout=60)  # let a config apply finish
        self.drivers.stop()
        if locked:
            self._reconfig_lock.release()
        if self.edge is not None:
            self.edge.stop()  # last diagnostics snapshot, clean-stop marker
        if self.store is not None:
            self.store.submit([Event(kinds.STOPPING, now_ms(), "runtime")])
            self.store.flush()
        if self.uplink is not None:
            log.info("stopping: uplink (waiting for in-flight acks)")
            self.uplink.stop()
        if self.store is not None:
            st = self.store.stats()
            self.store.close()
            log.info("stopped cleanly: %s left in the store for the next start (last seq %d)",
                     plural(st.depth, "record"), st.last_seq)

    def apply_config(self, new: Config) -> dict[str, Any]:
        """Hot-reload: stop/start only the drivers that changed; the store and the uplink,
        and so every buffered record, stay. Raises ReloadRefused keeping the old config."""
        from .control.reload import hot_reload
        with self._reconfig_lock:
            result = hot_reload(self.drivers, self.config, new, self.emit_event)
            self.config = new
            return result

    def request_restart(self, reason: str) -> None:
        """Stop cleanly and exit with EXIT_RESTART so that systemd starts us again."""
        log.info("restart requested: %s", reason)
        self.exit_code = EXIT_RESTART
        self.stop_requested.set()

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
        return self.exit_code

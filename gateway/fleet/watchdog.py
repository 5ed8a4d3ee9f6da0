"""systemd notifications (``sd_notify``) over ``$NOTIFY_SOCKET``, without libsystemd.

``Type=notify`` + ``WatchdogSec=``: READY=1 once started, then WATCHDOG=1 every half
period, but only while every thread the runtime depends on is alive. A dead uplink or store
writer thread (or a hung main loop) makes systemd kill and restart the service, which is
what recovers a gateway nobody can reach.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("gateway.fleet")


def notify(message: str) -> bool:
    """Send one datagram to systemd; False when not running under systemd (or it failed)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", addr, e)
        return False


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec for this process, or None when not enabled."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.05)
    except ValueError:
        return None


class Watchdog(threading.Thread):
    """Pets the systemd watchdog while ``alive()`` returns no dead thread names."""

    def __init__(self, dead_threads: Callable[[], list[str]],
                 interval_s: float | None = None) -> None:
        super().__init__(name="sd-watchdog", daemon=True)
        self.dead_threads = dead_threads
        self.interval_s = interval_s if interval_s is not None else watchdog_interval_s()
        self.stopping = threading.Event()
        self.pets = 0
        self.withheld: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None

    def run(self) -> None:
        assert self.interval_s is not None
        while not self.stopping.wait(self.interval_s):
            dead = self.dead_threads()
            if dead:
                if dead != self.withheld:
                    log.error("watchdog: not petting systemd: thread(s) %s died; systemd will "
                              "restart the service", ", ".join(dead))
                    notify("STATUS=degraded: dead threads " + ", ".join(dead))
                self.withheld = dead
                continue
            if notify("WATCHDOG=1"):
                self.pets += 1

    def stop(self) -> None:
        self.stopping.set()

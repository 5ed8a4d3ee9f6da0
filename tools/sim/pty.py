"""The pty plumbing every bus simulator shares: a pseudo-terminal whose master end a thread
serves, so a driver opens the slave path exactly like a serial port."""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
import tty
from typing import Callable

log = logging.getLogger("sim")


class PtyEndpoint:
    """A pty whose master end is served by ``handle(data)`` in a thread; bytes it returns
    are written back. ``tick()`` runs every ``tick_s`` whatever arrives.

    The slave fd stays open here, so the pty outlives any client that opens and closes (or
    is killed while holding) the slave path: exactly like a real bus. A write waits for room
    at most ``drop_after_s`` and then drops the rest, counted in ``dropped`` (a radio nobody
    hears); ``None`` waits for ever (a wire the meter must finish answering on).
    """

    def __init__(self, handle: Callable[[bytes], bytes | None],
                 tick: Callable[[], None] | None = None, tick_s: float = 0.05,
                 name: str = "sim", drop_after_s: float | None = 0.5,
                 start: bool = True) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.device = os.ttyname(self._slave)
        self._handle = handle
        self._tick = tick
        self._tick_s = tick_s
        self._drop_after_s = drop_after_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Serve the pty (when made with start=False, e.g. to hand out its path first)."""
        if not self._thread.is_alive():
            self._thread.start()

    def write(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            deadline = None if self._drop_after_s is None \
                else time.monotonic() + self._drop_after_s
            while view:
                try:
                    n = os.write(self.master, view)
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        self.dropped += len(view)
                        return
                    if self._stop.is_set():
                        return
                    time.sleep(0.001)
                    continue
                except OSError:
                    return
                view = view[n:]
                self.tx_bytes += n

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            timeout = max(0.0, min(0.05, next_tick - time.monotonic()))
            try:
                r, _, _ = select.select([self.master], [], [], timeout)
            except (OSError, ValueError):
                return
            if r:
                try:
                    data = os.read(self.master, 4096)
                except BlockingIOError:
                    data = b""
                except OSError as exc:
                    if exc.errno == errno.EIO:
                        time.sleep(0.01)
                        continue
                    return
                if data:
                    self.rx_bytes += len(data)
                    try:
                        reply = self._handle(data)
                    except Exception:  # a simulator bug must be visible, not fatal
                        log.exception("simulator handler failed")
                        reply = None
                    if reply:
                        self.write(reply)
            if self._tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self._tick_s
                try:
                    self._tick()
                except Exception:
                    log.exception("simulator tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


class PtySimulator(PtyEndpoint):
    """A :class:`PtyEndpoint` for simulators written as subclasses: ``handle`` returns the
    reply, :meth:`idle` runs every 50 ms (push simulators send from there), writes wait."""

    def __init__(self, handle: Callable[[bytes], bytes | None], name: str = "sim") -> None:
        super().__init__(handle, self.idle, 0.05, name, drop_after_s=None)

    def idle(self) -> None:
        """Called every 50 ms."""


def serve_forever(sim: object) -> None:
    """A simulator's command line: its path was printed; serve until Ctrl-C, then stop."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()  # type: ignore[attr-defined]

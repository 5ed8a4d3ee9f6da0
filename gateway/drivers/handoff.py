"""Console work handed to the driver thread that owns the port, and keys stored by the console.

A driver thread is the only one that touches its serial port. The console's capabilities
(``read_now``, ``scan``, ``set_key``; see :class:`~gateway.drivers.base.ConsoleCapabilities`)
are called from control-connection threads, so they queue a function here and wait for its
result; the driver's loop runs the queued work between two polls (:meth:`WorkQueue.service`)
and wakes early from its idle waits when work arrives (:meth:`WorkQueue.wait`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import CancelledError, Future, TimeoutError as FutureTimeout
from typing import Any, Callable, Iterable

from .keys import KeyFileError, read_key_file


class DriverNotRunning(RuntimeError):
    """The driver thread is not there to do the work (not started, stopped, crashed)."""


class WorkQueue:
    """Functions to run on one driver thread, each with a Future its caller waits on."""

    def __init__(self, owner: threading.Thread, stopping: threading.Event) -> None:
        self._owner = owner
        self._stopping = stopping
        self._q: "queue.Queue[tuple[str, Callable[[], Any], Future]]" = queue.Queue()
        self._wake = threading.Event()
        self._closed = False

    # -- any thread

    def call(self, what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
        """Run ``fn`` on the driver thread and return its result (or raise its exception).

        Raises TimeoutError when it has not finished within ``timeout_s``; work still
        waiting in the queue then is cancelled, work already running finishes unseen."""
        if threading.current_thread() is self._owner:
            return fn()  # already on the driver thread (e.g. from its own loop)
        if self._closed or not self._owner.is_alive() or self._stopping.is_set():
            raise DriverNotRunning(f"{what}: the driver is not running")
        fut: Future = Future()
        self._q.put((what, fn, fut))
        self._wake.set()
        if self._closed:  # the driver left between the check above and the put
            self.close()
        try:
            return fut.result(timeout_s)
        except FutureTimeout:
            fut.cancel()
            raise TimeoutError(f"{what}: not done within {timeout_s:g} s (the bus is busy "
                               "or a meter is slow)") from None
        except CancelledError:
            raise DriverNotRunning(f"{what}: the driver stopped first") from None

    def pending(self) -> bool:
        return not self._q.empty()

    # -- the driver thread

    def service(self) -> int:
        """Run every queued function now; returns how many ran."""
        n = 0
        while True:
            try:
                what, fn, fut = self._q.get_nowait()
            except queue.Empty:
                return n
            if not fut.set_running_or_notify_cancel():
                continue  # its caller gave up already
            n += 1
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early for queued work or a stop; True if stopping."""
        deadline = time.monotonic() + max(0.0, seconds)
        while not self._stopping.is_set():
            if self.pending():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._wake.wait(min(left, 0.1)):
                self._wake.clear()
        return True

    def idle(self, seconds: float) -> bool:
        """Sleep the whole ``seconds`` (a backoff) while still running queued work that
        needs no port (set_key) or says the port is down (reads); True if stopping."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            if self.wait(deadline - time.monotonic()):
                return True
            self.service()
            if time.monotonic() >= deadline:
                return self._stopping.is_set()

    def close(self) -> None:
        """The driver thread is leaving: fail what still waits instead of letting it time out."""
        self._closed = True
        while True:
            try:
                _, _, fut = self._q.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(DriverNotRunning("the driver stopped"))


class Listeners:
    """Callbacks of console ``listen`` sessions, called from the driver thread. A callback
    that returns False (its console has gone) or raises is dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[dict[str, Any]], Any]] = []

    def add(self, cb: Callable[[dict[str, Any]], Any]) -> None:
        with self._lock:
            self._callbacks.append(cb)

    def remove(self, cb: Callable[[dict[str, Any]], Any]) -> bool:
        """False when it was already dropped (its console went away)."""
        with self._lock:
            if cb in self._callbacks:
                self._callbacks.remove(cb)
                return True
            return False

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def __contains__(self, cb: object) -> bool:
        with self._lock:
            return cb in self._callbacks

    def notify(self, item: dict[str, Any]) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for cb in callbacks:
            try:
                keep = cb(dict(item)) is not False
            except Exception:  # noqa: BLE001 - a console's problem never reaches the bus
                keep = False
            if not keep:
                self.remove(cb)


# --------------------------------------------------------------------------- stored keys


def keys_dir_of(options: dict[str, Any], sink: Any) -> str | None:
    """Where the console stores meter keys: ``options["keys_dir"]`` when given (tests, a
    driver used on its own), else the running gateway's ``control.keys_dir`` (the sink the
    runtime hands every driver is the Runtime, at start-up and after a hot reload alike)."""
    given = options.get("keys_dir")
    if given:
        return str(given)
    from .context import DriverContext
    if isinstance(sink, DriverContext):
        return sink.keys_dir
    config = getattr(sink, "config", None)
    control = getattr(config, "control", None)
    d = getattr(control, "keys_dir", None)
    return str(d) if d else None


def stored_key(keys_dir: str | None, names: Iterable[str | None], sizes: tuple[int, ...],
               log: logging.Logger) -> tuple[bytes, str] | None:
    """The key ``keys set`` stored for the first of ``names`` that has a file, and its path.

    A file that is not a key of one of ``sizes`` bytes is logged and ignored (the key from
    the config stays); the key itself is never logged."""
    if not keys_dir:
        return None
    for name in names:
        if not name:
            continue
        path = os.path.join(keys_dir, f"{name}.key")
        if not os.path.exists(path):
            continue
        errors = []
        for size in sizes:
            try:
                return read_key_file(path, size), path
            except KeyFileError as exc:
                errors.append(str(exc))
        log.error("ignoring stored key %s: %s", path, errors[-1] if len(sizes) == 1 else
                  f"expected {' or '.join(str(s * 2) for s in sizes)} hex digits")
        return None
    return None

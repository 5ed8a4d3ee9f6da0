"""Receives downlink commands from the uplink's network thread, verifies them and runs them
one at a time in its own thread, reporting everything as events on ``.../up/events``.

The accepted sequence number is committed to the store (cursor ``("fleet", "cmd_seq")``) in
the same transaction as the ``fleet.command_accepted`` event and BEFORE the command runs: a
crash or a reboot command can never make a captured command valid again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..model import Event, now_ms
from .command import Command, Rejected, verify_command

log = logging.getLogger("gateway.fleet")

SOURCE = "fleet"
SEQ_CURSOR = ("fleet", "cmd_seq")
QUEUE_MAX = 64
REJECT_EVENTS_PER_MIN = 30  # a flood of forged commands must not flood the store


class CommandFailed(Exception):
    """An executor could not do what was asked; the message is reported to the head-end."""


Executor = Callable[[Command], Mapping[str, Any] | None]


class EventStore(Protocol):
    def append(self, records: Any, cursors: Any = None, timeout: float | None = 60.0) -> Any: ...
    def submit(self, records: Any, cursors: Any = None) -> Any: ...
    def get_cursor(self, meter_id: str, name: str, default: Any = None) -> Any: ...


class CommandHandler:
    def __init__(self, gateway_id: str, trusted: Mapping[bytes, Ed25519PublicKey],
                 store: EventStore, executors: Mapping[str, Executor],
                 clock: Callable[[], int] = now_ms) -> None:
        self.gateway_id = gateway_id
        self.trusted = dict(trusted)
        self.store = store
        self.executors = dict(executors)
        self.clock = clock
        self.last_seq = int(store.get_cursor(*SEQ_CURSOR, 0) or 0)
        self.counters = {"received": 0, "accepted": 0, "rejected": 0, "succeeded": 0,
                         "failed": 0, "dropped": 0}
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_MAX)
        self._thread = threading.Thread(target=self._run, name="fleet-commands", daemon=True)
        self._budget = float(REJECT_EVENTS_PER_MIN)
        self._budget_t = time.monotonic()
        self._suppressed = 0
        self._deferred: list[Callable[[], None]] = []

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the current command's result is stored (e.g. a restart)."""
        self._deferred.append(fn)

    def on_command(self, topic: str, payload: bytes) -> None:
        """Called from the MQTT network thread: never blocks, never raises."""
        self.counters["received"] += 1
        try:
            self._queue.put_nowait((topic, bytes(payload)))
        except queue.Full:
            self.counters["dropped"] += 1
            log.warning("fleet: command queue full; dropped a message from %s", topic)

    # ---------------------------------------------------------------------- work
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.handle(*item)
            except Exception:  # a bug here must not stop command handling for good
                log.exception("fleet: unexpected error handling a command")

    def handle(self, topic: str, payload: bytes) -> None:
        """Verify, persist the sequence, execute, report. Synchronous (tests call it)."""
        try:
            cmd = verify_command(payload, self.trusted, self.gateway_id, self.last_seq,
                                 self.clock())
        except Rejected as r:
            self._reject(topic, r)
            return
        self.store.append([Event("fleet.command_accepted", now_ms(), SOURCE, detail={
            **cmd.summary(), "topic": topic})], cursors={SEQ_CURSOR: cmd.seq})
        self.last_seq = cmd.seq
        self.counters["accepted"] += 1
        log.info("fleet: command %s (%s, seq %d) accepted", cmd.id, cmd.cmd, cmd.seq)
        executor = self.executors.get(cmd.cmd)
        if executor is None:
            self._result(cmd, False, error=f"unknown command {cmd.cmd!r}; this gateway knows "
                         + ", ".join(sorted(self.executors)))
            return
        self._deferred.clear()
        try:
            self._execute(cmd, executor)
        finally:
            deferred, self._deferred = self._deferred, []
            for fn in deferred:
                fn()

    def _execute(self, cmd: Command, executor: Executor) -> None:
        try:
            result = executor(cmd)
        except CommandFailed as e:
            self._result(cmd, False, error=str(e))
        except Exception as e:  # noqa: BLE001 - reported, never fatal
            log.exception("fleet: command %s (%s) crashed", cmd.id, cmd.cmd)
            self._result(cmd, False, error=f"{type(e).__name__}: {e}")
        else:
            self._result(cmd, True, result=dict(result or {}))

    def _result(self, cmd: Command, ok: bool, *, result: dict[str, Any] | None = None,
                error: str = "") -> None:
        self.counters["succeeded" if ok else "failed"] += 1
        detail: dict[str, Any] = {**cmd.summary(), "ok": ok}
        if ok:
            detail["result"] = result or {}
            log.info("fleet: command %s (%s) done", cmd.id, cmd.cmd)
        else:
            detail["error"] = error
            log.warning("fleet: command %s (%s) failed: %s", cmd.id, cmd.cmd, error)
        self.store.append([Event("fleet.command_result", now_ms(), SOURCE,
                              severity="info" if ok else "error", detail=detail)])

    def _reject(self, topic: str, r: Rejected) -> None:
        self.counters["rejected"] += 1
        log.warning("fleet: command rejected (%s) on %s: %s", r.reason, topic, r)
        now = time.monotonic()
        self._budget = min(float(REJECT_EVENTS_PER_MIN),
                           self._budget + (now - self._budget_t) * REJECT_EVENTS_PER_MIN / 60)
        self._budget_t = now
        if self._budget < 1:
            self._suppressed += 1
            return
        self._budget -= 1
        detail: dict[str, Any] = {"reason": r.reason, "error": str(r), "topic": topic,
                                  **r.command}
        if self._suppressed:
            detail["suppressed"], self._suppressed = self._suppressed, 0
        self.store.submit([Event("fleet.command_rejected", now_ms(), SOURCE, severity="warning",
                                 detail=detail)])

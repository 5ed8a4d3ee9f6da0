"""Receives downlink commands from the uplink's network thread, verifies them and runs them
one at a time in its own thread, reporting everything as events on ``.../up/events``.

The accepted sequence number is committed to the store (cursor ``("fleet", "cmd_seq")``) in
the same transaction as the ``fleet.command_accepted`` event and BEFORE the command runs: a
crash or a reboot command can never make a captured command valid again.
"""

from __future__ import annotations

import logging
import queue
from collections import Counter
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..model import Event, now_ms
from .command import Command, Rejected, verify_command
from .. import events as kinds

log = logging.getLogger("gateway.fleet")

SOURCE = "fleet"
SEQ_CURSOR = ("fleet", "cmd_seq")
NOT_BEFORE_CURSOR = ("fleet", "cmd_not_before")  # set by a seq reset: older commands refused
QUEUE_MAX = 64
REJECT_EVENTS_PER_MIN = 30  # a flood of forged commands must not flood the store
WARN_INTERVAL_S = 60.0      # ... nor the log: one summary line a minute


class CommandFailed(Exception):
    """An executor could not do what was asked; the message is reported to the head-end."""


Executor = Callable[[Command], Mapping[str, Any] | None]


class EventStore(Protocol):
    def append(self, records: Any, cursors: Any = None, timeout: float | None = 60.0) -> Any: ...
    def submit(self, records: Any, cursors: Any = None) -> Any: ...
    def get_cursor(self, meter_id: str, name: str, default: Any = None) -> Any: ...


class _RateLimitedWarning:
    """The first warning of a kind at once, then one line per interval with the counts."""

    def __init__(self, interval_s: float = WARN_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last = -interval_s
        self._held: Counter[str] = Counter()

    def __call__(self, what: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._held[what] += 1
            return
        held, self._held = self._held, Counter()
        self._last = now
        if held:
            message += " (and %d more in the last %.0f s: %s)"
            args = (*args, sum(held.values()), self.interval_s,
                    ", ".join(f"{k} {v}" for k, v in held.most_common()))
        log.warning(message, *args)


class CommandHandler:
    def __init__(self, gateway_id: str, trusted: Mapping[bytes, Ed25519PublicKey],
                 store: EventStore, executors: Mapping[str, Executor],
                 clock: Callable[[], int] = now_ms, max_seq_jump: int | None = 86_400_000
                 ) -> None:
        self.gateway_id = gateway_id
        self.trusted = dict(trusted)
        self.store = store
        self.executors = dict(executors)
        self.clock = clock
        self.max_seq_jump = max_seq_jump
        self.last_seq = int(store.get_cursor(*SEQ_CURSOR, 0) or 0)
        self.not_before_ms = int(store.get_cursor(*NOT_BEFORE_CURSOR, 0) or 0)
        self.counters = {"received": 0, "accepted": 0, "rejected": 0, "succeeded": 0,
                         "failed": 0, "dropped": 0}
        # Only verified commands are queued (see on_command), so 64 slots are plenty.
        self._queue: queue.Queue[tuple[str, Command] | None] = queue.Queue(QUEUE_MAX)
        self._lock = threading.Lock()  # last_seq and _queued_seq: network vs worker thread
        self._queued_seq = 0  # highest seq waiting in the queue
        self._thread = threading.Thread(target=self._run, name="fleet-commands", daemon=True)
        self._budget = float(REJECT_EVENTS_PER_MIN)
        self._budget_t = time.monotonic()
        self._suppressed = 0
        self._warn = _RateLimitedWarning()
        self._deferred: list[Callable[[], None]] = []

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self.locked():
            log.error("fleet: the last accepted command seq %d is more than fleet.max_seq_jump "
                      "past the clock: every command will be refused; recover with "
                      "`gateway console fleet reset-seq` (see README, Security)", self.last_seq)
            self.store.submit([Event(kinds.FLEET_SEQ_LOCKED, now_ms(), SOURCE, severity="error",
                                     detail={"last_seq": self.last_seq,
                                             "max_seq_jump": self.max_seq_jump})])
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

    def locked(self) -> bool:
        """The stored seq is so far ahead that a time-based head-end cannot catch up."""
        return (self.max_seq_jump is not None
                and self.last_seq > self.clock() + self.max_seq_jump)

    def state(self) -> dict[str, Any]:
        return {"last_seq": self.last_seq, "not_before_ms": self.not_before_ms,
                "max_seq_jump": self.max_seq_jump, "locked": self.locked(),
                "queued": self._queue.qsize(), "counters": dict(self.counters)}

    def reset_seq(self, seq: int | None, by: str) -> dict[str, Any]:
        """Recovery from a locked downlink (an operator on the console, role admin): the
        floor becomes ``seq`` (default: the gateway clock in ms) and commands issued before
        now are refused, so no captured command becomes valid again. Durable and reported."""
        now = self.clock()
        new = now if seq is None else int(seq)
        with self._lock:
            previous = self.last_seq
            self.store.append([Event(kinds.FLEET_SEQ_RESET, now_ms(), SOURCE, severity="warning",
                                     detail={"previous_seq": previous, "seq": new,
                                             "not_before_ms": now, "by": by})],
                              cursors={SEQ_CURSOR: new, NOT_BEFORE_CURSOR: now})
            self.last_seq, self.not_before_ms, self._queued_seq = new, now, 0
        log.warning("fleet: command seq reset from %d to %d by %s; commands issued before %d "
                    "are refused", previous, new, by, now)
        return {"previous_seq": previous, "seq": new, "not_before_ms": now}

    def on_command(self, topic: str, payload: bytes) -> None:
        """Called from the MQTT network thread: never blocks, never raises.

        Cheap checks first (size, CBOR/COSE shape, a known key id), then the signature, the
        target, expiry and seq (against the last accepted and the queued ones): only a
        verified command takes a queue slot, so no flood of garbage or replays can push a
        signed command out."""
        try:
            self.counters["received"] += 1
            try:
                cmd = self._verify(payload)
            except Rejected as r:
                self._reject(topic, r)
                return
            with self._lock:
                try:
                    self._queue.put_nowait((topic, cmd))
                except queue.Full:
                    self.counters["dropped"] += 1
                    self._warn("dropped", "fleet: command queue full (%d verified commands "
                               "waiting); dropped command %s", QUEUE_MAX, cmd.id)
                    return
                self._queued_seq = max(self._queued_seq, cmd.seq)
        except Exception:  # noqa: BLE001 - the network thread must go on
            log.exception("fleet: unexpected error receiving a command")

    def _verify(self, payload: bytes) -> Command:
        with self._lock:
            floor = max(self.last_seq, self._queued_seq)
        return verify_command(payload, self.trusted, self.gateway_id, floor, self.clock(),
                              self.max_seq_jump, self.not_before_ms)

    # ---------------------------------------------------------------------- work
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.process(*item)
            except Exception:  # a bug here must not stop command handling for good
                log.exception("fleet: unexpected error handling a command")
            finally:
                with self._lock:
                    if self._queue.empty():
                        self._queued_seq = 0

    def handle(self, topic: str, payload: bytes) -> None:
        """Verify, persist the sequence, execute, report. Synchronous (tests call it)."""
        try:
            cmd = self._verify(payload)
        except Rejected as r:
            self._reject(topic, r)
            return
        self.process(topic, cmd)

    def process(self, topic: str, cmd: Command) -> None:
        """Run a verified command: seq and expiry are checked again (it may have waited
        behind a long command), the seq is persisted, then the executor runs."""
        with self._lock:
            stale = cmd.seq <= self.last_seq
            last = self.last_seq
        if stale:
            self._reject(topic, Rejected("replayed", f"command {cmd.id} has seq {cmd.seq}, "
                                         f"not above the last accepted {last}", cmd.summary()))
            return
        if self.clock() >= cmd.expires_ms:
            self._reject(topic, Rejected("expired", f"command {cmd.id} expired while queued",
                                         cmd.summary()))
            return
        self.store.append([Event(kinds.FLEET_COMMAND_ACCEPTED, now_ms(), SOURCE, detail={
            **cmd.summary(), "topic": topic})], cursors={SEQ_CURSOR: cmd.seq})
        with self._lock:
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
        self.store.append([Event(kinds.FLEET_COMMAND_RESULT, now_ms(), SOURCE,
                              severity="info" if ok else "error", detail=detail)])

    def _reject(self, topic: str, r: Rejected) -> None:
        self.counters["rejected"] += 1
        self._warn(r.reason, "fleet: command rejected (%s) on %s: %s", r.reason, topic, r)
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
        self.store.submit([Event(kinds.FLEET_COMMAND_REJECTED, now_ms(), SOURCE, severity="warning",
                                 detail=detail)])

"""Who changed what, when, and what came of it: one JSON line per state-changing command.

Kept on disk (rotated by size, fsynced: the log is rare and must survive a power cut) and
forwarded through the store as a ``control.audit`` Event, so the head-end learns of a
field change even if the gateway is later wiped. Secrets never reach it: callers pass the
arguments through :func:`redact` first.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..model import Event, now_ms

log = logging.getLogger("gateway.control")

SECRET_ARGS = frozenset({"key", "key_hex", "password", "secret"})


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a console connection (from SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int
    user: str
    groups: tuple[int, ...] = ()


def redact(args: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if k in SECRET_ARGS else v) for k, v in args.items()}


class AuditLog:
    def __init__(self, path: str, max_bytes: int = 1024 * 1024, backups: int = 5,
                 emit: Callable[[Event], None] | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.emit = emit or (lambda ev: None)
        self._lock = threading.Lock()
        self.write_errors = 0

    def record(self, peer: Peer, command: str, args: dict[str, Any], ok: bool,
               result: str, meter_id: str | None = None) -> dict[str, Any]:
        ts = now_ms()
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts / 1000))
                 + f".{ts % 1000:03d}Z", "ts_ms": ts, "uid": peer.uid, "user": peer.user,
                 "pid": peer.pid, "command": command, "args": redact(args), "ok": ok,
                 "result": result}
        self._append(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        self.emit(Event("control.audit", ts, "control", meter_id,
                        "info" if ok else "warning",
                        {k: entry[k] for k in ("uid", "user", "command", "args", "ok", "result")}))
        return entry

    def _append(self, line: str) -> None:
        data = line.encode()
        with self._lock:
            try:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                try:
                    size = os.path.getsize(self.path)
                except FileNotFoundError:
                    size = 0
                if size and size + len(data) > self.max_bytes:
                    self._rotate()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self.write_errors += 1
                log.error("control: cannot write the audit log %s: %s (the entry still goes "
                          "to the store as an event)", self.path, exc)

    def _rotate(self) -> None:
        if self.backups <= 0:
            os.truncate(self.path, 0)
            return
        for i in range(self.backups - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        """The last n entries of the current file (for ``diag``)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                lines = f.read().decode(errors="replace").splitlines()[-n:]
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

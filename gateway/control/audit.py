"""Who did what on the console, when, and what came of it: one JSON line per command.

Kept on disk (rotated by size, fsynced: the log is rare and must survive a power cut).
State-changing and refused commands are also forwarded through the store as a
``control.audit`` Event, so the head-end learns of a field change even if the gateway is
later wiped.

Tamper-evident: every entry carries ``n`` (its number, counting on across rotations) and
``prev``, the SHA-256 of the previous entry's line, so deleting or editing a line breaks
the chain (``gateway audit verify``). The chain head (``n`` and the hash of the last line)
goes up in the signed diagnostics and in every forwarded event, so the head-end can tell
a log that was cut short or rewritten from the end.

Secrets never reach it: an entry's ``args`` are built from the command's declared,
non-secret arguments only (:func:`audit_args`); secret ones are shown as ``***``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..model import Event, now_ms
from .. import events as kinds

log = logging.getLogger("gateway.control")

GENESIS = "0" * 64  # ``prev`` of the very first entry
MAX_ARG_CHARS = 256  # a declared argument longer than this is cut in the log
MAX_RESULT_CHARS = 500
SECRET_ARGS = frozenset({"key", "key_hex", "password", "secret"})  # a safety net only


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a console connection (from SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int
    user: str
    groups: tuple[int, ...] = ()


def audit_args(args: Mapping[str, Any], declared: Mapping[str, bool]) -> dict[str, Any]:
    """The arguments as the audit log may show them: only declared names (``declared`` maps
    each to whether it is secret); secret ones as ``***``; values cut to plain short ones."""
    out: dict[str, Any] = {}
    for name, secret in declared.items():
        if name not in args:
            continue
        out[name] = "***" if secret else _plain(args[name])
    return out


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, str):
        return v if len(v) <= MAX_ARG_CHARS else v[:MAX_ARG_CHARS] + "..."
    return f"<{type(v).__name__}>"


def line_hash(line: bytes) -> str:
    """The chain hash of one entry: SHA-256 of its line without the newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


class AuditLog:
    def __init__(self, path: str, max_bytes: int = 1024 * 1024, backups: int = 5,
                 emit: Callable[[Event], None] | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.emit = emit or (lambda ev: None)
        self._lock = threading.Lock()
        self.write_errors = 0
        self._n, self._head = self._find_head()

    # ------------------------------------------------------------------ chain head
    def _find_head(self) -> tuple[int, str]:
        """Continue the chain from the last line on disk (the current file, else the newest
        backup); a fresh log starts at entry 1 after GENESIS."""
        for path in [self.path] + [f"{self.path}.{i}" for i in range(1, self.backups + 1)]:
            last = _last_line(path)
            if last is None:
                continue
            try:
                n = int(json.loads(last)["n"])
            except (ValueError, KeyError, TypeError):
                n = 0  # a pre-chain or torn line: number on from 0, verify will say so
            return n, line_hash(last)
        return 0, GENESIS

    def head(self) -> dict[str, Any]:
        """The chain head for the signed diagnostics: entries written and the last hash."""
        with self._lock:
            return {"entries": self._n, "head": self._head}

    # ------------------------------------------------------------------ writing
    def record(self, peer: Peer, command: str, args: dict[str, Any], ok: bool,
               result: str, meter_id: str | None = None, forward: bool = True
               ) -> dict[str, Any]:
        """Append one entry. ``args`` must already be audit-safe (see :func:`audit_args`)."""
        ts = now_ms()
        if len(result) > MAX_RESULT_CHARS:
            result = result[:MAX_RESULT_CHARS] + "..."
        with self._lock:
            entry = {"n": self._n + 1, "prev": self._head,
                     "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts / 1000))
                     + f".{ts % 1000:03d}Z", "ts_ms": ts, "uid": peer.uid, "user": peer.user,
                     "pid": peer.pid, "command": command,
                     "args": {k: "***" if k in SECRET_ARGS else _plain(v)
                              for k, v in args.items()}, "ok": ok,
                     "result": result}
            line = json.dumps(entry, ensure_ascii=False, default=str).encode()
            self._append(line + b"\n")
            self._n, self._head = entry["n"], line_hash(line)
            head = {"entries": self._n, "head": self._head}
        if forward:
            self.emit(Event(kinds.CONTROL_AUDIT, ts, "control", meter_id,
                            "info" if ok else "warning",
                            {**{k: entry[k] for k in ("uid", "user", "command", "args", "ok",
                                                      "result")}, "audit": head}))
        return entry

    def _append(self, data: bytes) -> None:
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
            log.error("control: cannot write the audit log %s: %s (a change still goes to "
                      "the store as an event)", self.path, exc)

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


def _last_line(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - 64 * 1024))
            lines = [ln for ln in f.read().split(b"\n") if ln.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


# --------------------------------------------------------------------------- verification


@dataclass
class ChainReport:
    entries: int = 0          # lines checked
    first: int | None = None  # n of the first entry still on disk
    last: int | None = None
    head: str = GENESIS       # hash of the last line
    problems: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def log_files(path: str, backups: int = 100) -> list[str]:
    """The audit log's files, oldest first (the highest-numbered backup is the oldest)."""
    found = [f"{path}.{i}" for i in range(backups, 0, -1) if os.path.exists(f"{path}.{i}")]
    return found + ([path] if os.path.exists(path) else [])


def verify_chain(files: Iterable[str]) -> ChainReport:
    """Check that every entry's ``prev`` is the hash of the line before it and that ``n``
    counts up by one, across the files in order. The first surviving entry's ``prev`` can
    only be checked when it is entry 1 (rotation drops the oldest files)."""
    rep = ChainReport(problems=[])
    prev_hash: str | None = None
    prev_n: int | None = None
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            rep.problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            prev_hash = prev_n = None
            continue
        if data and not data.endswith(b"\n"):
            rep.problems.append(f"{path}: the last line is incomplete (torn write or cut)")
        for lineno, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            rep.entries += 1
            h = line_hash(line)
            try:
                entry = json.loads(line)
                n, prev = entry["n"], entry["prev"]
                if type(n) is not int or not isinstance(prev, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                rep.problems.append(f"{where}: not an audit entry (edited or corrupt)")
                prev_hash, prev_n = h, None
                continue
            if rep.first is None:
                rep.first = n
                if n == 1 and prev != GENESIS:
                    rep.problems.append(f"{where}: entry 1 does not start the chain")
            elif prev_hash is not None and prev != prev_hash:
                rep.problems.append(f"{where}: entry {n} does not follow the line before it "
                                    "(a line was edited, inserted or deleted)")
            if prev_n is not None and n != prev_n + 1:
                rep.problems.append(f"{where}: entry {n} follows entry {prev_n} "
                                    f"({'missing entries' if n > prev_n else 'out of order'})")
            prev_hash, prev_n = h, n
            rep.last, rep.head = n, h
    return rep

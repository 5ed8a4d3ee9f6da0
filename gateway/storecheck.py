"""Read-only checks of a store file, for ``gateway store verify`` and for the salvage read of
a file the store moved aside at start.

Both open the database with ``mode=ro``: in WAL mode a reader never blocks the running
gateway's writer (it reads a consistent snapshot beside it), so they are safe on a running
gateway as on a stopped one. Neither ever raises on a damaged file: damage is what they report.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import SCHEMA_VERSION, _decodes, lenient_text, row_is_sound, schema_problem


@dataclass
class VerifyReport:
    """What ``gateway store verify`` found: file-level problems and the bad seq ranges."""

    path: str
    schema: int | None = None
    epoch: str | None = None
    next_seq: int | None = None
    chunks: int = 0
    records: int = 0
    problems: list[str] = field(default_factory=list)  # file-level: integrity, schema, meta
    bad: list[tuple[int, int, int]] = field(default_factory=list)  # first, last, records
    notes: list[str] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        return not self.problems and not self.bad

    def bad_ranges(self) -> list[tuple[int, int, int]]:
        """Bad chunks joined into runs of adjacent seqs: (first, last, records)."""
        out: list[list[int]] = []
        for first, last, n in sorted(self.bad):
            if out and first <= out[-1][1] + 1:
                out[-1][1] = max(out[-1][1], last)
                out[-1][2] += n
            else:
                out.append([first, last, n])
        return [(a, b, c) for a, b, c in out]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sound": self.sound, "schema": self.schema,
                "epoch": self.epoch, "next_seq": self.next_seq, "chunks": self.chunks,
                "records": self.records, "problems": self.problems,
                "bad_ranges": [{"first_seq": a, "last_seq": b, "records": c}
                               for a, b, c in self.bad_ranges()], "notes": self.notes}


def open_readonly(path: str) -> sqlite3.Connection:
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
    conn.text_factory = lenient_text
    return conn


def verify_store(path: str) -> VerifyReport:
    """Check the SQLite structure, the schema, the counters and every chunk's checksum
    (schema 3) or, for a schema-2 file not upgraded yet, that every body decodes."""
    rep = VerifyReport(path)
    try:
        conn = open_readonly(path)
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        rep.problems.append(f"cannot open: {exc}")
        return rep
    try:
        conn.execute("BEGIN")  # one snapshot for all the reads, beside a running writer
        result = [r[0] for r in conn.execute("PRAGMA integrity_check(20)").fetchall()]
        if result != ["ok"]:
            rep.problems.append("SQLite integrity check: " + "; ".join(result[:5]))
        rep.schema = conn.execute("PRAGMA user_version").fetchone()[0]
        if rep.schema not in (2, SCHEMA_VERSION):
            rep.problems.append(f"schema version {rep.schema} (this firmware writes "
                                f"{SCHEMA_VERSION}, checks 2 and {SCHEMA_VERSION})")
            return rep
        problem = schema_problem(conn)  # what makes the gateway move the file aside
        if problem:
            rep.problems.append(problem)
            if problem.startswith("schema"):
                return rep
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        rep.epoch = meta.get("epoch")
        try:
            rep.next_seq = int(meta["next_seq"])
        except (KeyError, TypeError, ValueError):
            rep.problems.append(f"meta next_seq is missing or damaged: {meta.get('next_seq')!r}")
        _check_rows(conn, rep)
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        rep.problems.append(f"cannot read: {exc}")
    finally:
        conn.close()
    return rep


def _check_rows(conn: sqlite3.Connection, rep: VerifyReport) -> None:
    checksums = rep.schema == SCHEMA_VERSION
    if not checksums:
        rep.notes.append("schema 2: chunks carry no checksums yet (the next start adds them); "
                         "bodies were checked by decoding only")
    cols = "first_seq, last_seq, kind, count, time_base_ms, body" + (", crc" if checksums else "")
    cur = conn.execute(f"SELECT {cols} FROM outbox ORDER BY first_seq")
    prev_last = 0
    top = rep.next_seq
    while True:
        try:
            rows = cur.fetchmany(512)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            rep.problems.append(f"outbox unreadable after seq {prev_last}: {exc}")
            return
        if not rows:
            return
        for row in rows:
            first, last, count = row[0], row[1], row[3]
            rep.chunks += 1
            ok = row_is_sound(*row) if checksums else _decodes(*row)
            if ok and (first <= prev_last or (top is not None and last >= top)):
                ok = False  # overlaps its neighbour, or beyond the seqs ever given out
            if ok:
                rep.records += count
                prev_last = last
                continue
            f = first if type(first) is int else prev_last + 1
            la = last if type(last) is int and last >= f and (top is None or last < top) else f
            n = count if type(count) is int and 1 <= count <= la - f + 1 else la - f + 1
            rep.bad.append((f, la, n))
            prev_last = max(prev_last, la)


def salvage_summary(path: str) -> dict[str, Any]:
    """Best effort: how many unsent records a moved-aside store file still held, and their
    seq range and epoch, for the ``store.recreated`` event. Fields it cannot read are None
    and ``salvage_error`` says why."""
    out: dict[str, Any] = {"lost_records": None, "lost_first_seq": None,
                           "lost_last_seq": None, "lost_epoch": None}
    try:
        conn = open_readonly(path)
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        out["salvage_error"] = str(exc)
        return out
    try:
        for key, value in conn.execute("SELECT key, value FROM meta WHERE key='epoch'"):
            out["lost_epoch"] = str(value)
        n, first, last = conn.execute(
            "SELECT coalesce(sum(count), 0), min(first_seq), max(last_seq) FROM outbox").fetchone()
        out.update(lost_records=int(n), lost_first_seq=first, lost_last_seq=last)
    except (sqlite3.Error, TypeError, ValueError) as exc:
        out["salvage_error"] = str(exc)
        # The aggregate failed (a damaged page on the way): count what can be walked.
        n = 0
        first = last = None
        try:
            for f, la, c in conn.execute("SELECT first_seq, last_seq, count FROM outbox"):
                if type(f) is int and type(la) is int and type(c) is int:
                    n += c
                    first = f if first is None else min(first, f)
                    last = la if last is None else max(last, la)
        except (sqlite3.Error, UnicodeDecodeError):
            pass
        if first is not None:
            out.update(lost_records=n, lost_first_seq=first, lost_last_seq=last)
    finally:
        conn.close()
    return out

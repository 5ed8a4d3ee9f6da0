"""The one durable outbox: every record is committed here before anything else may see it.

Guarantees, and how they are kept:

* **A seq is never reused.** Each record gets ``seq`` in the same SQLite transaction that
  stores it (the counter lives in ``meta`` and is written in that transaction). A crash
  before the commit rolls back the rows *and* the counter together; those seqs were never
  visible to the uplink, so nothing outside the gateway ever saw them. Together with the
  random ``epoch`` made when the database is created, ``(gateway_id, epoch, seq)`` is unique
  for ever.
* **Nothing committed is lost by a crash**: WAL with ``synchronous=FULL`` fsyncs the log on
  every commit. Commits are grouped (one writer thread drains whatever queued while the
  previous commit was being written, bounded by count and gathering time), so fsyncs stay few
  on flash even with many drivers.
* **Loss is explicit.** When the cap (bytes or rows) or the disk is reached, the oldest unsent
  rows are evicted and a :class:`~gateway.model.Gap` record naming the evicted seq range is
  written in the same transaction; it is delivered like any other record.
* **Records leave only when acknowledged**: :meth:`Store.ack` deletes the chunks inside a seq
  range once the broker has acknowledged the message that carried it. A commit that only
  deletes acknowledged chunks is not fsync'd on its own (``synchronous=NORMAL`` for that
  transaction): losing it to a power cut only re-sends messages the head-end drops as
  duplicates, and the next commit that stores records syncs it with them. On an SD card
  that saves an fsync per burst of PUBACKs.
* **Cursors commit with their readings**: a driver passes ``cursors`` to :meth:`Store.append`
  and they are written in the same transaction as the records they produced.

Records are kept in CHUNKS: one row holds a run of up to ``chunk_max_records`` consecutive
records of one kind from one commit, already encoded as an envelope body
(:func:`gateway.wire.body.encode_body`). A row per record cost ~2.3 us of CPU per
reading to insert and more to re-encode at send time; a chunk is encoded once, here, and the
uplink only seals stored bytes. Counts and caps are still in records (``depth``,
``max_rows``); eviction removes whole chunks (never gap chunks).
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
import zlib
from concurrent.futures import Future
from itertools import groupby, islice
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import cbor2

from .logs import RateLimitedLog
from .model import KIND_GAP, KIND_OF, KIND_READING, Event, Gap, Reading, Record, StoredRecord, now_ms
from .wire.body import decode_chunk, encode_body, encode_readings, first_ts
from . import events as kinds

log = logging.getLogger("gateway.store")

SCHEMA_VERSION = 3  # 3: every chunk row carries a checksum (crc) of its contents
# Accounted bytes per chunk row on top of its body (6 integer columns, b-tree cell overhead).
ROW_OVERHEAD = 48
# Records per chunk: big enough that per-row costs vanish, small enough that a few chunks
# fill one uplink message and that eviction stays fine-grained.
CHUNK_MAX_RECORDS = 64
# A full disk is reported at most once per this interval, with counts.
FULL_LOG_INTERVAL_S = 60.0
# While the reserve file is missing, a commit tries to re-make it at most this often.
RESERVE_RETRY_S = 5.0
# After an eviction the store holds at most this share of its cap, so that a full store
# does not write a gap record on every single insert.
EVICT_TO = 0.95

CursorKey = tuple[str, str]


class StoreError(Exception):
    """Base class for errors the store reports to its callers."""


class StoreFull(StoreError):
    """The disk (or the page limit) is full and eviction could not make room."""


class StoreClosed(StoreError):
    """The store was closed; nothing more is accepted."""


class StoreCorrupt(StoreError):
    """The database file failed its integrity check."""


@dataclass(slots=True)
class StoreStats:
    epoch: str
    depth: int
    bytes: int
    last_seq: int
    oldest_seq: int | None
    oldest_ts_ms: int | None
    commits: int
    records_committed: int
    evicted_records: int
    gap_records: int
    full_errors: int
    acked_records: int
    corrupt_chunks: int = 0  # chunks found failing their checksum (sent as gap records)


@dataclass(slots=True)
class _Append:
    records: list[Record]
    cursors: Mapping[CursorKey, Any] | None
    future: Future


@dataclass(slots=True)
class _Ack:
    first: int
    last: int


@dataclass(slots=True)
class _Corrupt:
    """A reader found the chunk at first_seq failing its checksum."""
    first: int


_STOP = object()

_INSERT_SQL = ("INSERT INTO outbox (first_seq, last_seq, kind, count, ts_ms, time_base_ms, body, "
               "crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_IN_RANGE = "first_seq BETWEEN ?1 AND ?2 AND last_seq <= ?2"
_ACKED_SIZE = f"SELECT count(*), total(count), total(length(body)) FROM outbox WHERE {_IN_RANGE}"
_CREATE_OUTBOX = ("CREATE TABLE outbox (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, "
                  "kind INTEGER NOT NULL, count INTEGER NOT NULL, ts_ms INTEGER NOT NULL, "
                  "time_base_ms INTEGER NOT NULL, body BLOB NOT NULL, crc INTEGER NOT NULL)")
# The columns of each table (schema 3; schema 2's outbox lacks the last, crc).
_COLUMNS = {"meta": ("key", "value"),
            "outbox": ("first_seq", "last_seq", "kind", "count", "ts_ms", "time_base_ms", "body",
                       "crc"),
            "cursors": ("meter_id", "name", "value", "updated_ms")}
# A crc that no chunk can have (CRC-32 is unsigned): marks a row found unreadable.
CRC_BAD = -1
GAP_REASON_CORRUPT = "store_corruption"

# A stored chunk as the uplink gets it.
ChunkRow = tuple[int, int, int, int, int, bytes]  # first, last, kind, count, time_base, body


def chunk_crc(first_seq: int, last_seq: int, kind: int, count: int, time_base_ms: int,
              body: bytes) -> int:
    """CRC-32 of everything a chunk row means (seq range, kind, count, time base, body).

    SQLite checks its own page structure but not the bytes of a value: a bit flipped on the
    SD card inside a body decodes, more often than not, into a different well-formed reading
    that the uplink would sign as authentic. CRC-32 catches every single-bit flip and every
    burst up to 32 bits; it costs ~1 us per 64-record chunk."""
    head = b"%d,%d,%d,%d,%d;" % (first_seq, last_seq, kind, count, time_base_ms)
    return zlib.crc32(body, zlib.crc32(head))


def row_is_sound(first_seq: Any, last_seq: Any, kind: Any, count: Any, time_base_ms: Any,
                 body: Any, crc: Any) -> bool:
    """True when a stored row's checksum matches its columns (any column may be damaged,
    down to its SQLite type)."""
    if not (type(first_seq) is int and type(last_seq) is int and type(kind) is int
            and type(count) is int and type(time_base_ms) is int and type(body) is bytes
            and type(crc) is int):
        return False
    if not 1 <= first_seq <= last_seq or not 1 <= count <= last_seq - first_seq + 1:
        return False
    return chunk_crc(first_seq, last_seq, kind, count, time_base_ms, body) == crc


def lenient_text(raw: bytes) -> str:
    """sqlite3 text_factory: damaged UTF-8 becomes U+FFFD instead of an exception."""
    return raw.decode("utf-8", "replace")


def schema_problem(conn: sqlite3.Connection) -> str:
    """'' when the tables have the columns of their schema version and the counters make
    sense (next_seq above every stored seq), else what is wrong. May raise sqlite3 errors."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        return ""  # created but never initialised: Store._create_schema does it
    if version >= 2:  # a flipped bit in the schema text renames a column
        for table, want in _COLUMNS.items():
            have = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            want = want[:-1] if table == "outbox" and version == 2 else want
            if have != list(want):
                return f"schema of table {table} damaged: columns {have}"
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    top = conn.execute("SELECT max(last_seq) FROM outbox").fetchone()[0] \
        if version >= 2 else None
    epoch, nxt = meta.get("epoch"), meta.get("next_seq")
    if not isinstance(epoch, str) or not epoch or not isinstance(nxt, str) \
            or not nxt.isdigit() or int(nxt) < 1:
        return f"store counters damaged (epoch {epoch!r}, next_seq {nxt!r})"
    if type(top) is int and int(nxt) <= top:  # seqs would be given out a second time
        return f"store counters damaged (next_seq {nxt} but seq {top} is stored)"
    return ""


def _new_tally() -> dict[str, Any]:
    return {"commits": 0, "evicted": 0, "refused": 0, "last_error": ""}


def _is_full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == 13 or "full" in str(exc).lower()  # SQLITE_FULL


def _encodable(records: Sequence[Record]) -> bool:
    try:
        for r in records:
            encode_chunk(1, KIND_OF[type(r)], [r.to_obj()])
    except (TypeError, ValueError, KeyError):
        return False
    return True


def encode_chunk(first_seq: int, kind: int, objs: Sequence[Any]) -> tuple[int, bytes]:
    """(time_base_ms, body) of consecutive records of one kind starting at first_seq."""
    try:
        base = first_ts(kind, objs[0])
        return base, encode_body([(q, kind, o) for q, o in enumerate(objs, first_seq)], base)
    except TypeError:
        # The body encoder takes exact ints and strs only; a driver may hand over subclasses
        # (a codec's int type, an IntEnum): normalise them through CBOR, as the
        # one-row-per-record store did, and encode again (a real type error raises again).
        objs = cbor2.loads(cbor2.dumps(list(objs)))
        base = first_ts(kind, objs[0])
        return base, encode_body([(q, kind, o) for q, o in enumerate(objs, first_seq)], base)


def encode_reading_chunk(readings: Sequence[Reading]) -> tuple[int, bytes]:
    """encode_chunk for a run of Reading objects, read straight from the objects (the hot
    path: no field lists); anything the fast encoder refuses goes the general way."""
    r0 = readings[0]
    base = r0.meter_ts_ms if r0.meter_ts_ms is not None else r0.rx_ts_ms
    try:
        return base, encode_readings(readings, base)
    except TypeError:
        return encode_chunk(1, KIND_READING, [r.to_obj() for r in readings])


def decode_chunk_row(first_seq: int, time_base_ms: int, body: bytes) -> list[StoredRecord]:
    return decode_chunk(body, first_seq, time_base_ms)


def _decodes(first_seq: Any, last_seq: Any, kind: Any, count: Any, time_base_ms: Any,
             body: Any) -> bool:
    """True when a row's body decodes into exactly `count` records of its kind within its
    seq range (the check a row without a checksum can still get)."""
    if type(body) is not bytes or type(first_seq) is not int or type(time_base_ms) is not int:
        return False
    try:
        recs = decode_chunk(body, first_seq, time_base_ms)
    except Exception:  # noqa: BLE001 - damaged bytes may raise anything
        return False
    return (len(recs) == count and bool(recs) and recs[0].seq == first_seq
            and recs[-1].seq == last_seq and all(KIND_OF[type(r.record)] == kind for r in recs))


class Store:
    """The outbox. Thread-safe: any thread may append, read or ack.

    Writes go through one writer thread (SQLite allows one writer; funnelling also gives
    the group commits). Reads use their own connection, which WAL lets run beside the writer.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 512 * 1024 * 1024,
        max_rows: int | None = None,
        commit_interval_ms: int = 50,
        commit_max_records: int = 5000,
        max_page_count: int | None = None,
        reserve_bytes: int = 1024 * 1024,
        chunk_max_records: int = CHUNK_MAX_RECORDS,
        reserve_retry_s: float = RESERVE_RETRY_S,
    ) -> None:
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self.commit_interval_s = commit_interval_ms / 1000.0
        self.commit_max_records = commit_max_records
        self.max_page_count = max_page_count
        self.reserve_bytes = reserve_bytes
        self.reserve_retry_s = reserve_retry_s
        self.chunk_max_records = max(1, chunk_max_records)
        self._full_tally = _new_tally()  # what a full disk did since the last log line
        self._full_since: float | None = None  # monotonic start of the full-disk spell
        self._full_logged_at = -1e18
        self._last_full_at = -1e18
        self._reserve_ok = False
        self._reserve_retry_at = 0.0
        self._evict_log = RateLimitedLog(log, 10.0)
        self._corrupt_log = RateLimitedLog(log, 60.0)
        self._after_commit: list[Any] = []
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._listeners: list[threading.Event] = []
        self._read_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.open_report: list[str] = []
        self._corrupt_pending: set[int] = set()  # first_seqs reported, not yet replaced
        self._wconn = self._open()
        self._make_reserve()
        self._rconn = self._connect()
        self._writer = threading.Thread(target=self._writer_loop, name="store-writer", daemon=True)
        self._writer.start()

    # ----------------------------------------------------------------- opening
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.text_factory = lenient_text  # a damaged TEXT value must not raise on reading
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if self.max_page_count:
            conn.execute(f"PRAGMA max_page_count={int(self.max_page_count)}")
        return conn

    def _open(self) -> sqlite3.Connection:
        """Open (or create) the database, check it, and load the counters.

        A file that fails its integrity check is moved aside (kept for forensics, never
        deleted) and a new store with a new epoch is created, so a corrupt file cannot keep
        a gateway from collecting readings; the event says what happened.
        """
        os.makedirs(os.path.dirname(os.path.abspath(self.path)) or ".", exist_ok=True)
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        recovered_from: str | None = None
        problem = ""
        if existed:
            problem = self._check_file()
            if problem:
                recovered_from = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(self.path + suffix):
                        os.replace(self.path + suffix, recovered_from + suffix)
                log.error("store: %s failed its integrity check (%s); moved it to %s and "
                          "started a new store", self.path, problem, recovered_from)
        conn = self._connect()
        self._create_schema(conn)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.epoch: str = meta["epoch"]
        self._next_seq = int(meta["next_seq"])
        chunks, rows, payload = conn.execute(
            "SELECT count(*), coalesce(sum(count), 0), coalesce(sum(length(body)), 0) "
            "FROM outbox").fetchone()
        self._rows = int(rows)
        self._bytes = int(payload) + ROW_OVERHEAD * int(chunks)
        self._commits = self._committed = self._evicted = self._gaps = 0
        self._full_errors = self._acked = self._corrupt = 0
        oldest = conn.execute("SELECT min(first_seq) FROM outbox").fetchone()[0]
        self.open_report.append(
            f"store {self.path}: epoch {self.epoch}, "
            + ("new database" if not existed or recovered_from else "integrity ok")
            + f", {self._rows} unsent records"
            + (f" (seq {oldest}..{self._next_seq - 1})" if oldest is not None else "")
            + f", {self._bytes} bytes of {self.max_bytes} cap")
        if recovered_from:
            from .storecheck import salvage_summary
            lost = salvage_summary(recovered_from)
            if lost["lost_records"] is not None:
                log.error("store: the moved-aside file held %d unsent records (seq %s..%s of "
                          "epoch %s); they are lost to the uplink", lost["lost_records"],
                          lost["lost_first_seq"], lost["lost_last_seq"], lost["lost_epoch"])
            self._write_now(conn, [Event(kinds.STORE_RECREATED, now_ms(), "store", severity="error",
                                         detail={"reason": problem, "moved_to": recovered_from,
                                                 **lost})])
        return conn

    def _check_file(self) -> str:
        """Return '' when the file is a healthy store, else what is wrong with it."""
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.text_factory = lenient_text  # quick_check quotes damaged bytes
            try:
                result = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            finally:
                conn.close()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            # (A damaged schema can make even SQLite's error message invalid UTF-8.)
            return str(exc)
        if result != ["ok"]:
            return "; ".join(result[:5])
        return self._check_meta()

    def _check_meta(self) -> str:
        """The columns and counters a structurally sound file still needs (a flipped bit in
        the schema text, a meta key or next_seq would otherwise stop every start)."""
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.text_factory = lenient_text
            try:
                return schema_problem(conn)
            finally:
                conn.close()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            return str(exc)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version == 1:
            self._migrate_v1(conn)
            return
        if version == 2:
            self._migrate_v2(conn)
            return
        if version not in (0,):
            raise StoreCorrupt(f"{self.path}: schema version {version} is newer than this "
                               f"firmware understands ({SCHEMA_VERSION})")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute(_CREATE_OUTBOX)
        conn.execute("CREATE TABLE cursors (meter_id TEXT NOT NULL, name TEXT NOT NULL, "
                     "value BLOB NOT NULL, updated_ms INTEGER NOT NULL, "
                     "PRIMARY KEY (meter_id, name))")
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("epoch", secrets.token_hex(8)), ("next_seq", "1"),
            ("created_ms", str(now_ms()))])
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")

    def _migrate_v1(self, conn: sqlite3.Connection) -> None:
        """Schema 1 (one row per record) to chunks, in one transaction: a crash half-way
        leaves the old schema intact. Seqs, kinds and contents are kept exactly; runs of
        consecutive seqs of one kind become chunks."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("ALTER TABLE outbox RENAME TO outbox_v1")
            conn.execute(_CREATE_OUTBOX)
            cur = conn.execute("SELECT seq, kind, ts_ms, payload FROM outbox_v1 ORDER BY seq")
            run: list[Any] = []
            n = 0

            def flush() -> None:
                first, kind, ts = run[0][0], run[0][1], run[0][2]
                objs = [cbor2.loads(r[3]) for r in run]
                base, body = encode_chunk(first, kind, objs)
                last = run[-1][0]
                conn.execute(_INSERT_SQL, (first, last, kind, len(run), ts, base, body,
                                           chunk_crc(first, last, kind, len(run), base, body)))
                run.clear()

            while True:
                rows = cur.fetchmany(4096)
                if not rows:
                    break
                for row in rows:
                    if run and (row[1] != run[-1][1] or row[0] != run[-1][0] + 1
                                or len(run) >= self.chunk_max_records):
                        flush()
                    run.append(row)
                    n += 1
            if run:
                flush()
            conn.execute("DROP TABLE outbox_v1")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.open_report.append(f"store {self.path}: migrated {n} records from schema 1 to "
                                f"{SCHEMA_VERSION} (chunks)")

    def _migrate_v2(self, conn: sqlite3.Connection) -> None:
        """Schema 2 (chunks without checksums) to 3, in one transaction: each row gets the
        checksum of what it holds now. A body that no longer decodes into its seq range is
        marked CRC_BAD instead, so it goes up as a store_corruption gap rather than as a
        message the head-end cannot read (or, worse, a wrong reading). What decodes cannot
        be told apart from what was written: corruption before this upgrade stays unseen."""
        conn.execute("BEGIN IMMEDIATE")
        n = bad = 0
        try:
            conn.execute("ALTER TABLE outbox ADD COLUMN crc INTEGER NOT NULL DEFAULT -1")
            cur = conn.execute("SELECT first_seq, last_seq, kind, count, time_base_ms, body "
                               "FROM outbox ORDER BY first_seq")
            updates = []
            while True:
                rows = cur.fetchmany(1024)
                if not rows:
                    break
                for row in rows:
                    n += 1
                    crc = chunk_crc(*row) if _decodes(*row) else CRC_BAD
                    bad += crc == CRC_BAD
                    updates.append((crc, row[0]))
            conn.executemany("UPDATE outbox SET crc=? WHERE first_seq=?", updates)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.open_report.append(f"store {self.path}: schema 2 to {SCHEMA_VERSION}: checksums "
                                f"added to {n} chunks" + (f", {bad} unreadable ones will go up "
                                                          "as store_corruption gaps" if bad else ""))

    # --------------------------------------------------------------- public API
    def submit(self, records: Iterable[Record],
               cursors: Mapping[CursorKey, Any] | None = None) -> "Future[list[int]]":
        """Queue records (and cursor updates) for the next group commit.

        The future resolves to their seqs once they are durable, or fails with
        :class:`StoreFull` / :class:`StoreClosed`.
        """
        fut: Future[list[int]] = Future()
        if self._closed:
            fut.set_exception(StoreClosed("store is closed"))
            return fut
        self._queue.put(_Append(list(records), cursors, fut))
        return fut

    def append(self, records: Iterable[Record], cursors: Mapping[CursorKey, Any] | None = None,
               timeout: float | None = 60.0) -> list[int]:
        """Store records durably; returns their seqs once committed."""
        return self.submit(records, cursors).result(timeout)

    def ack(self, first_seq: int, last_seq: int) -> None:
        """The broker acknowledged every record in first..last: remove them (asynchronously;
        a crash before the delete only means they are sent again, and the head-end dedups)."""
        if not self._closed:
            self._queue.put(_Ack(first_seq, last_seq))

    def fetch_chunks(self, after_seq: int, max_records: int, max_bytes: int | None = None
                     ) -> list[ChunkRow]:
        """Committed, unacknowledged chunks starting after after_seq, oldest first, as
        (first_seq, last_seq, kind, count, time_base_ms, body), up to max_records records
        and max_bytes of bodies (always at least one chunk)."""
        try:
            return self._fetch_chunks(after_seq, max_records, max_bytes)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            # SQLite itself found a damaged page on the way: nothing from it can be sent or
            # even named. Said once a minute; the uplink waits instead of reconnecting in a
            # loop, the records behind it stay until the file is repaired or moved aside.
            self._corrupt_log.error("store: cannot read unsent chunks after seq %d (%s); run "
                                    "gateway store verify", after_seq, exc)
            return []

    def _fetch_chunks(self, after_seq: int, max_records: int, max_bytes: int | None
                      ) -> list[ChunkRow]:
        out: list[ChunkRow] = []
        with self._read_lock:
            cur = self._rconn.execute(
                "SELECT first_seq, last_seq, kind, count, time_base_ms, body, crc FROM outbox "
                "WHERE first_seq > ? ORDER BY first_seq LIMIT ?", (after_seq, max(1, max_records)))
            records = size = 0
            for row in cur:
                if not row_is_sound(*row):
                    # Never sealed: the chunks before it go now, the writer replaces it by
                    # a gap record and the uplink's next fetch goes on past it.
                    self._report_corrupt(row)
                    break
                records += row[3]
                size += len(row[5])
                if out and (records > max_records or (max_bytes is not None and size > max_bytes)):
                    break
                out.append(row[:6])
            cur.close()
        return out

    def _report_corrupt(self, row: Sequence[Any]) -> None:
        first = row[0]
        if first in self._corrupt_pending:
            return
        self._corrupt_pending.add(first)
        self._queue.put(_Corrupt(first))

    def read_records(self, after_seq: int = 0, limit: int = 1000) -> list[StoredRecord]:
        """Decoded records with seq > after_seq, oldest first, at most limit of them."""
        out: list[StoredRecord] = []
        with self._read_lock:
            cur = self._rconn.execute(
                "SELECT first_seq, last_seq, kind, count, time_base_ms, body, crc FROM outbox "
                "WHERE first_seq >= coalesce((SELECT max(first_seq) FROM outbox "
                "WHERE first_seq <= ?), 0) ORDER BY first_seq", (after_seq,))
            for row in cur:
                if not row_is_sound(*row):
                    self._report_corrupt(row)
                    continue
                for sr in decode_chunk_row(row[0], row[4], row[5]):
                    if sr.seq > after_seq:
                        out.append(sr)
                if len(out) >= limit:
                    break
            cur.close()
        return out[:limit]

    def get_cursor(self, meter_id: str, name: str, default: Any = None) -> Any:
        with self._read_lock:
            row = self._rconn.execute("SELECT value FROM cursors WHERE meter_id=? AND name=?",
                                      (meter_id, name)).fetchone()
        return cbor2.loads(row[0]) if row else default

    def add_listener(self, event: threading.Event) -> None:
        """`event` is set after every commit that added records (wakes the uplink)."""
        self._listeners.append(event)

    def stats(self) -> StoreStats:
        with self._read_lock:
            row = self._rconn.execute(
                "SELECT first_seq, ts_ms FROM outbox ORDER BY first_seq LIMIT 1").fetchone()
        with self._stats_lock:
            return StoreStats(self.epoch, self._rows, self._bytes, self._next_seq - 1,
                              row[0] if row else None, row[1] if row else None,
                              self._commits, self._committed, self._evicted, self._gaps,
                              self._full_errors, self._acked, self._corrupt)

    def writer_alive(self) -> bool:
        """The writer thread runs (health snapshot, watchdog)."""
        return self._writer.is_alive()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is committed."""
        fut: Future[list[int]] = Future()
        self._queue.put(_Append([], None, fut))
        fut.result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop the writer and close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join(timeout)
        with self._read_lock:
            self._rconn.close()
        self._wconn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writer
    def _writer_loop(self) -> None:
        stop = False
        while not stop:
            op = self._queue.get()
            batch: list[Any] = []
            n = 0
            deadline = time.monotonic() + self.commit_interval_s
            while True:
                if op is _STOP:
                    stop = True
                    break
                batch.append(op)
                if isinstance(op, _Append):
                    n += len(op.records)
                if n >= self.commit_max_records or time.monotonic() >= deadline:
                    break
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit_batch(batch)
        # Anything submitted after close was requested is refused, never silently dropped.
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(op, _Append):
                op.future.set_exception(StoreClosed("store is closed"))

    def _commit_batch(self, batch: list[Any]) -> None:
        corrupt = [op.first for op in batch if isinstance(op, _Corrupt)]
        if corrupt:
            self._quarantine(corrupt)
        appends = [op for op in batch if isinstance(op, _Append)]
        acks = [op for op in batch if isinstance(op, _Ack)]
        records = [r for op in appends for r in op.records]
        cursors = [c for op in appends if op.cursors for c in op.cursors.items()]
        seqs: list[int] | None
        try:
            seqs = self._transaction(records, cursors, acks)
        except (TypeError, ValueError, KeyError) as exc:
            # A record that cannot be encoded (rolled back, nothing written): refuse the
            # submissions that carry one, with their cursors, and commit the others.
            bad = [op for op in appends if not _encodable(op.records)]
            if not bad:
                raise
            log.error("store: refusing %d submissions with records that cannot be encoded (%s)",
                      len(bad), exc)
            for op in bad:
                op.future.set_exception(StoreError(f"record cannot be encoded: {exc}"))
            self._commit_batch([op for op in batch if not any(op is b for b in bad)])
            return
        except sqlite3.Error as exc:
            if _is_full(exc):
                seqs = self._retry_after_full(records, cursors, acks)
                err: Exception = StoreFull(f"storage full ({exc}): {len(records)} records refused")
            else:
                log.exception("store: commit of %d records failed", len(records))
                seqs, err = None, StoreError(f"commit failed: {exc}")
            if seqs is None:
                for op in appends:
                    if op.records or op.cursors:
                        op.future.set_exception(err)
                    else:
                        op.future.set_result([])
                return
        if records or cursors:
            self._after_good_commit()
        i = 0
        for op in appends:
            op.future.set_result(seqs[i:i + len(op.records)])
            i += len(op.records)
        if records:
            for ev in self._listeners:
                ev.set()

    def _quarantine(self, firsts: list[int]) -> None:
        """Replace each chunk a reader found failing its checksum by a gap record (reason
        store_corruption) and a store.corrupt event, in one transaction per chunk."""
        added = False
        for first in firsts:
            try:
                lost = self._atomically(lambda: self._replace_corrupt(first))
            except sqlite3.Error as exc:
                # Left in place: the next fetch finds it again and it is retried then.
                self._corrupt_log.error("store: cannot replace the corrupt chunk at seq %d: %s",
                                        first, exc)
                lost = None
            finally:
                self._corrupt_pending.discard(first)
            if lost is not None:
                added = True
                with self._stats_lock:
                    self._corrupt += 1
                self._corrupt_log.error(
                    "store: the stored chunk of seq %d..%d (%d records) fails its checksum; "
                    "it is not sent, a store_corruption gap record goes up instead", *lost)
        if added:
            for ev in self._listeners:
                ev.set()

    def _replace_corrupt(self, first: int) -> tuple[int, int, int] | None:
        conn = self._wconn
        row = conn.execute("SELECT first_seq, last_seq, kind, count, time_base_ms, body, crc, "
                           "length(body) FROM outbox WHERE first_seq=?", (first,)).fetchone()
        if row is None or row_is_sound(*row[:7]):
            return None  # acknowledged meanwhile, or a reader's mistake
        _, last, _, count, _, _, _, size = row
        # The damaged row's own range and count cannot be trusted: bound them by the next
        # row and by the seqs ever given out.
        nxt = conn.execute("SELECT min(first_seq) FROM outbox WHERE first_seq > ?",
                           (first,)).fetchone()[0]
        top = min(self._next_seq - 1, (nxt - 1) if nxt is not None else self._next_seq - 1)
        if type(last) is not int or not first <= last <= top:
            last = max(first, top)
        n = count if type(count) is int and 1 <= count <= last - first + 1 else last - first + 1
        conn.execute("DELETE FROM outbox WHERE first_seq=?", (first,))
        with self._stats_lock:
            self._rows -= count if type(count) is int else 0
            self._bytes -= (size or 0) + ROW_OVERHEAD
        ts = now_ms()
        self._insert([
            Gap(first, last, n, GAP_REASON_CORRUPT, ts),
            Event(kinds.STORE_CORRUPT, ts, "store", severity="error", detail={
                "first_seq": first, "last_seq": last, "records": n,
                "reason": "checksum mismatch"})])
        return first, last, n

    def _retry_after_full(self, records: list[Record], cursors: list[Any],
                          acks: list[_Ack]) -> list[int] | None:
        """The disk is full: free the space of old unsent rows (with a gap record) and try
        once more; if that fails too, refuse the new records with a counted error.

        On a really full filesystem even the eviction needs room (WAL frames), so the store
        keeps a small reserve file beside the database: it is released first, the eviction
        is committed and checkpointed (the WAL shrinks back), and the reserve is re-made
        (or, while the disk stays full, re-made after a later commit once space is back).

        A full disk can last for hours with a commit every 50 ms: what happens is counted
        and logged as one line a minute (:meth:`_full_report`), never a line per commit.
        """
        with self._stats_lock:
            self._full_errors += 1
        t = self._full_tally
        t["commits"] += 1
        self._last_full_at = time.monotonic()
        if self._full_since is None:
            self._full_since = self._last_full_at
        reserve_freed = self._release_reserve()
        need = max(len(records) * 2, self._rows // 20, 1)
        evicted_before = self._evicted
        try:
            self._atomically(lambda: (self._apply_acks(acks),
                                      self._evict(need_rows=need, need_bytes=0,
                                                  reason="storage full")))
            acks = []
            self._checkpoint()
        except sqlite3.Error as exc:
            t["refused"] += len(records)
            t["last_error"] = f"eviction failed too: {exc}"
            self._full_report()
            return None
        finally:
            if reserve_freed:
                self._make_reserve(quiet=True)
        t["evicted"] += self._evicted - evicted_before
        try:
            seqs = self._transaction(records, cursors, acks)
        except sqlite3.Error as exc:
            t["refused"] += len(records)
            t["last_error"] = str(exc)
            self._full_report()
            return None
        self._full_report()
        return seqs

    def _full_report(self) -> None:
        """At most one line a minute while the disk is full, with the counts since the last."""
        t = self._full_tally
        now = time.monotonic()
        if now - self._full_logged_at < FULL_LOG_INTERVAL_S:
            return
        span = now - (self._full_since or now) if self._full_logged_at < 0 \
            else now - self._full_logged_at
        self._full_logged_at = now
        log.error("store: storage full: %d commits hit it in %.0f s; %d old unsent records "
                  "evicted (gap records go up), %d new records refused; reserve file %s%s",
                  t["commits"], span, t["evicted"], t["refused"],
                  "in place" if self._reserve_ok else "missing (re-made when space is back)",
                  f"; last error: {t['last_error']}" if t["last_error"] else "")
        self._full_tally = _new_tally()

    def _after_good_commit(self) -> None:
        """A commit went through: re-make a missing reserve (tried every few seconds; a
        failed try costs one fallocate), and once no commit has hit a full disk for a
        report interval, say once that the spell is over, with the last counts."""
        now = time.monotonic()
        if not self._reserve_ok and self.reserve_bytes > 0 and now >= self._reserve_retry_at:
            self._reserve_retry_at = now + self.reserve_retry_s
            if self._make_reserve(quiet=True) and self._full_since is not None:
                log.info("store: the %d-byte reserve file is in place again",
                         self.reserve_bytes)
        if self._full_since is not None and now - self._last_full_at >= FULL_LOG_INTERVAL_S:
            t = self._full_tally
            log.warning("store: no full disk for %.0f s: the full-disk spell of %.0f s is over "
                        "(since the last report: %d commits hit it, %d records evicted, %d "
                        "refused); reserve file %s", now - self._last_full_at,
                        self._last_full_at - self._full_since, t["commits"], t["evicted"],
                        t["refused"], "in place" if self._reserve_ok else "missing")
            self._full_since = None
            self._full_logged_at = -1e18
            self._full_tally = _new_tally()

    # -- the reserve: room to evict in when the filesystem itself is full
    @property
    def _reserve_path(self) -> str:
        return self.path + ".reserve"

    def _make_reserve(self, quiet: bool = False) -> bool:
        """Allocate the reserve file; False (and no partial file left) when there is no room."""
        if self.reserve_bytes <= 0:
            return True
        try:
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError as exc:
            # A partial file would hold space without being a reserve, and a release of it
            # would pass for one: none is kept.
            try:
                os.unlink(self._reserve_path)
            except OSError:
                pass
            self._reserve_ok = False
            if not quiet:
                log.warning("store: cannot keep a %d-byte reserve beside the database (%s); "
                            "it is re-made when space is back", self.reserve_bytes,
                            exc.strerror or exc)
            return False
        self._reserve_ok = True
        return True

    def _release_reserve(self) -> bool:
        self._reserve_ok = False
        try:
            os.unlink(self._reserve_path)
            return True
        except OSError:
            return False

    def _checkpoint(self) -> None:
        try:
            self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("store: WAL checkpoint failed: %s", exc)

    def _rollback(self) -> None:
        try:
            self._wconn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _atomically(self, work: Any) -> Any:
        """Run work() in one IMMEDIATE transaction; on any failure roll back the database
        AND the in-memory counters, so they never disagree with the file."""
        saved = (self._next_seq, self._rows, self._bytes, self._evicted, self._gaps, self._acked)
        self._after_commit = []
        try:
            self._wconn.execute("BEGIN IMMEDIATE")
            result = work()
            self._wconn.execute("COMMIT")
            for fn in self._after_commit:
                fn()
        except BaseException:
            self._rollback()
            with self._stats_lock:
                (self._next_seq, self._rows, self._bytes, self._evicted, self._gaps,
                 self._acked) = saved
            raise
        return result

    def _transaction(self, records: Sequence[Record], cursors: Sequence[Any],
                     acks: Sequence[_Ack]) -> list[int]:
        if not records and not cursors:
            return self._ack_transaction(acks)
        def work() -> list[int]:
            self._apply_acks(acks)
            seqs = self._insert(records)
            if cursors:
                ts = now_ms()
                self._wconn.executemany(
                    "INSERT OR REPLACE INTO cursors VALUES (?, ?, ?, ?)",
                    [(m, n, cbor2.dumps(v), ts) for (m, n), v in cursors])
            return seqs

        seqs = self._atomically(work)
        with self._stats_lock:
            self._commits += 1
            self._committed += len(records)
        return seqs

    def _ack_transaction(self, acks: Sequence[_Ack]) -> list[int]:
        """Deletes of acknowledged chunks only: committed without an fsync of their own."""
        if not acks:
            return []
        conn = self._wconn
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self._atomically(lambda: self._apply_acks(acks))
        finally:
            conn.execute("PRAGMA synchronous=FULL")
        with self._stats_lock:
            self._commits += 1
        return []

    def _write_now(self, conn: sqlite3.Connection, records: Sequence[Record]) -> list[int]:
        """Insert records synchronously (used before the writer thread runs)."""
        self._wconn = conn
        return self._transaction(records, (), ())

    def _apply_acks(self, acks: Sequence[_Ack]) -> None:
        # Two single-step statements per range (no RETURNING row per deleted record).
        conn = self._wconn
        # Adjacent or overlapping ranges are merged first (one message's range ends where the
        # next one's starts): the union is exactly the acknowledged seqs, so a chunk inside
        # it was acknowledged whole, and a group commit pays two statements per run of
        # messages instead of two per message.
        merged: list[list[int]] = []
        for a in sorted(acks, key=lambda a: a.first):
            if merged and a.first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], a.last)
            else:
                merged.append([a.first, a.last])
        for first, last in merged:
            rng = (first, last)
            chunks, n, size = conn.execute(_ACKED_SIZE, rng).fetchone()
            if not chunks:
                continue
            conn.execute(f"DELETE FROM outbox WHERE {_IN_RANGE}", rng)
            n = int(n)
            with self._stats_lock:
                self._rows -= n
                self._bytes -= int(size) + ROW_OVERHEAD * chunks
                self._acked += n

    def _insert(self, records: Sequence[Record]) -> list[int]:
        if not records:
            return []
        ts = now_ms()
        kinds = KIND_OF
        cmax = self.chunk_max_records
        # Runs of one kind, at most cmax records each; each becomes one encoded chunk. The
        # bodies do not depend on the absolute seqs (consecutive seqs need no delta), so they
        # are encoded before an eviction may take a seq for its gap record.
        runs: list[tuple[int, int, int, bytes]] = []  # kind, count, time_base, body
        for cls, group in groupby(records, type):
            kind = kinds[cls]
            while True:
                # Per chunk, not per commit: fewer live objects, cheaper GC passes.
                if cls is Reading:
                    readings = list(islice(group, cmax))
                    if not readings:
                        break
                    runs.append((kind, len(readings), *encode_reading_chunk(readings)))
                    continue
                part = [r.to_obj() for r in islice(group, cmax)]
                if not part:
                    break
                runs.append((kind, len(part), *encode_chunk(1, kind, part)))
        n = len(records)
        new_bytes = sum([len(run[3]) for run in runs]) + ROW_OVERHEAD * len(runs)
        over_bytes = self._bytes + new_bytes - self.max_bytes
        over_rows = (self._rows + n - self.max_rows) if self.max_rows else 0
        if over_bytes > 0 or over_rows > 0:
            slack_b = int(self.max_bytes * (1 - EVICT_TO))
            slack_r = int(self.max_rows * (1 - EVICT_TO)) if self.max_rows else 0
            self._evict(need_rows=max(over_rows, 0) + slack_r if over_rows > 0 else 0,
                        need_bytes=over_bytes + slack_b if over_bytes > 0 else 0,
                        reason=self._cap_reason())
        first = q = self._next_seq
        params = []
        for k, c, base, body in runs:
            last = q + c - 1
            params.append((q, last, k, c, ts, base, body, chunk_crc(q, last, k, c, base, body)))
            q += c
        self._wconn.executemany(_INSERT_SQL, params)
        self._next_seq = q
        self._wconn.execute("UPDATE meta SET value=? WHERE key='next_seq'", (str(q),))
        with self._stats_lock:
            self._rows += n
            self._bytes += new_bytes
        return list(range(first, q))

    def _cap_reason(self) -> str:
        cap = f"max_bytes={self.max_bytes}"
        if self.max_rows:
            cap += f", max_rows={self.max_rows}"
        return f"store cap reached ({cap})"

    def _evict(self, need_rows: int, need_bytes: int, reason: str) -> None:
        """Delete the oldest unsent non-gap chunks until need_rows records and need_bytes
        bytes are freed, and record a Gap for them in the same transaction.

        Gap records (chunks of their own) are never evicted: they are the proof of loss.
        """
        conn = self._wconn
        freed_rows = freed_bytes = 0
        first = last = None
        cur = conn.execute("SELECT first_seq, last_seq, count, length(body) FROM outbox "
                           "WHERE kind != ? ORDER BY first_seq", (KIND_GAP,))
        for fs, ls, count, size in cur:
            if freed_rows >= need_rows and freed_bytes >= need_bytes:
                break
            first = fs if first is None else first
            last = ls
            freed_rows += count
            freed_bytes += size + ROW_OVERHEAD
        cur.close()
        if first is None:
            return
        conn.execute("DELETE FROM outbox WHERE first_seq BETWEEN ? AND ? AND kind != ?",
                     (first, last, KIND_GAP))
        with self._stats_lock:
            self._rows -= freed_rows
            self._bytes -= freed_bytes
            self._evicted += freed_rows
            self._gaps += 1
        if reason != "storage full":  # a full disk has its own once-a-minute report
            self._after_commit.append(lambda: self._evict_log.warning(
                "store: evicted %d unsent records (seq %d..%d): %s", freed_rows, first, last,
                reason))
        gap = Gap(first, last, freed_rows, reason, now_ms())
        seq = self._next_seq
        base, body = encode_chunk(seq, KIND_GAP, [gap.to_obj()])
        conn.execute(_INSERT_SQL, (seq, seq, KIND_GAP, 1, gap.ts_ms, base, body,
                                   chunk_crc(seq, seq, KIND_GAP, 1, base, body)))
        self._next_seq = seq + 1
        conn.execute("UPDATE meta SET value=? WHERE key='next_seq'", (str(self._next_seq),))
        with self._stats_lock:
            self._rows += 1
            self._bytes += len(body) + ROW_OVERHEAD

"""The head-end's books in a database: PostgreSQL in production, SQLite embedded.

One schema for both engines (column types differ only where SQLite has no exact type:
values are ``numeric`` in PostgreSQL and decimal TEXT in SQLite, never floats). The worker
creates and migrates it (``schema_version``); concurrent workers serialise the migration
on an advisory lock.

Concurrency: every ingest transaction first locks the ``epochs`` rows of the (gateway,
epoch) pairs it writes, in sorted order, then touches counters in sorted order, so two
workers never deadlock and never both take the same seq.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


class DbError(RuntimeError):
    """The database is unreachable or refused a statement: retry the batch later."""


class DsnError(ValueError):
    """Not a DSN we support (postgresql://... or sqlite:///path)."""


@dataclass(frozen=True)
class Dsn:
    engine: str  # "postgresql" | "sqlite"
    target: str  # the libpq URI, or the SQLite file path

    @classmethod
    def parse(cls, text: str) -> "Dsn":
        if text.startswith(("postgresql://", "postgres://")):
            return cls("postgresql", text)
        if text.startswith("sqlite:///"):
            path = text[len("sqlite:///"):]
            if not path:
                raise DsnError("sqlite:///PATH needs a file path")
            # sqlite:////abs/path and sqlite:///rel/path, as SQLAlchemy spells them
            return cls("sqlite", path)
        raise DsnError(f"unsupported DSN {text!r}: use postgresql://... or sqlite:///PATH")


def _schema(pg: bool) -> list[str]:
    num = "numeric" if pg else "TEXT"
    blob = "bytea" if pg else "BLOB"
    js = "jsonb" if pg else "TEXT"
    return [
        "CREATE TABLE epochs (gateway_id text NOT NULL, epoch text NOT NULL, "
        "first_seen_ms bigint NOT NULL, PRIMARY KEY (gateway_id, epoch))",
        # accepted seqs per (gateway, epoch) as inclusive ranges, not one row per seq
        "CREATE TABLE seq_ranges (gateway_id text NOT NULL, epoch text NOT NULL, "
        "first_seq bigint NOT NULL, last_seq bigint NOT NULL, "
        "PRIMARY KEY (gateway_id, epoch, first_seq))",
        f"CREATE TABLE records (gateway_id text NOT NULL, epoch text NOT NULL, "
        f"seq bigint NOT NULL, kind smallint NOT NULL, digest {blob} NOT NULL, "
        f"received_ms bigint NOT NULL, PRIMARY KEY (gateway_id, epoch, seq))",
        f"CREATE TABLE readings (meter_id text NOT NULL, quantity text NOT NULL, "
        f"ts_ms bigint NOT NULL, value {num} NOT NULL, unit text NOT NULL, "
        f"quality text NOT NULL, bus text NOT NULL, rx_ts_ms bigint NOT NULL, "
        f"meter_ts boolean NOT NULL, gateway_id text NOT NULL, epoch text NOT NULL, "
        f"seq bigint NOT NULL)" + (" PARTITION BY RANGE (ts_ms)" if pg else ""),
        "CREATE INDEX readings_series ON readings (meter_id, quantity, ts_ms)",
        f"CREATE TABLE events (gateway_id text NOT NULL, epoch text NOT NULL, "
        f"seq bigint NOT NULL, ts_ms bigint NOT NULL, kind text NOT NULL, source text NOT NULL, "
        f"meter_id text, severity text NOT NULL, detail {js} NOT NULL, "
        f"PRIMARY KEY (gateway_id, epoch, seq))",
        f"CREATE TABLE diag (gateway_id text NOT NULL, epoch text NOT NULL, "
        f"seq bigint NOT NULL, ts_ms bigint NOT NULL, scope text NOT NULL, meter_id text, "
        f"metrics {js} NOT NULL, PRIMARY KEY (gateway_id, epoch, seq))",
        "CREATE TABLE gap_records (gateway_id text NOT NULL, epoch text NOT NULL, "
        "seq bigint NOT NULL, first_seq bigint NOT NULL, last_seq bigint NOT NULL, "
        "count bigint NOT NULL, reason text NOT NULL, ts_ms bigint NOT NULL, "
        "PRIMARY KEY (gateway_id, epoch, seq))",
        # quarantine: a re-sent seq whose content differs from what was stored
        f"CREATE TABLE conflicts (gateway_id text NOT NULL, epoch text NOT NULL, "
        f"seq bigint NOT NULL, stored_digest {blob} NOT NULL, new_digest {blob} NOT NULL, "
        f"received_ms bigint NOT NULL, record {blob} NOT NULL)",
        "CREATE INDEX conflicts_key ON conflicts (gateway_id, epoch, seq)",
        # gateway_id '' holds what could not be attributed to a known gateway
        "CREATE TABLE counters (gateway_id text NOT NULL, name text NOT NULL, "
        "value bigint NOT NULL, PRIMARY KEY (gateway_id, name))",
        "CREATE TABLE meter_groups (group_name text NOT NULL, meter_id text NOT NULL, "
        "PRIMARY KEY (group_name, meter_id))",
    ]


def month_bounds(ts_ms: int) -> tuple[int, int, str]:
    """[start, end) in ms of the UTC month holding ts_ms, and its partition suffix."""
    d = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
    start = datetime(d.year, d.month, 1, tzinfo=timezone.utc)
    end = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=timezone.utc)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000), f"y{d.year:04d}m{d.month:02d}"


def _jsonable(o: Any, depth: int = 0) -> Any:
    if o is None or type(o) in (str, int, bool):
        return o
    if type(o) is float:
        return o if math.isfinite(o) else str(o)  # jsonb has no NaN/Infinity
    if depth > 32:
        return repr(o)[:200]
    if isinstance(o, dict):
        return {k if type(k) is str else repr(k): _jsonable(v, depth + 1) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in o]
    if isinstance(o, (bytes, bytearray)):
        return bytes(o).hex()
    return repr(o)[:200]


def to_json(obj: Any) -> str:
    """Event details and diag metrics are CBOR: bytes become hex, non-text keys and other
    oddities their repr, so any CBOR a gateway signed can be stored."""
    text = json.dumps(_jsonable(obj), sort_keys=True)
    # PostgreSQL's jsonb refuses \u0000 in strings: such a character becomes U+FFFD.
    return text.replace("\\u0000", "\\ufffd")


READING_COLS = ("meter_id", "quantity", "ts_ms", "value", "unit", "quality", "bus", "rx_ts_ms",
                "meter_ts", "gateway_id", "epoch", "seq")
RECORD_COLS = ("gateway_id", "epoch", "seq", "kind", "digest", "received_ms")


class Database:
    """Common SQL; subclasses adapt placeholders, bulk writes, locking and partitions."""

    engine = ""
    ph = "?"

    def __init__(self, dsn: Dsn) -> None:
        self.dsn = dsn
        self.conn: Any = None

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
            self.conn = None

    def q(self, sql: str) -> str:
        return sql if self.ph == "?" else sql.replace("?", self.ph)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.q(sql), params)

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        sql = self.q(sql)
        if self.engine == "postgresql":
            with self.conn.cursor() as cur:
                cur.executemany(sql, rows)
        else:
            self.conn.executemany(sql, rows)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.execute(sql, params).fetchall())

    def begin(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        try:
            self.conn.rollback()
        except Exception:  # noqa: BLE001 - the connection may be gone: reconnect later
            pass

    def migrate(self) -> int:
        """Create or upgrade the schema; returns the version now in force."""
        raise NotImplementedError

    def _apply(self, current: int) -> int:
        if current > SCHEMA_VERSION:
            raise DbError(f"database schema version {current} is newer than this head-end "
                          f"({SCHEMA_VERSION}): upgrade the head-end")
        if current < 1:
            for stmt in _schema(self.engine == "postgresql"):
                self.execute(stmt)
            self._after_create()
            self.execute("INSERT INTO schema_version (version) VALUES (?)", (1,))
            current = 1
        # future migrations: `if current < 2: ...; current = 2`
        self.execute("UPDATE schema_version SET version = ?", (current,))
        return current

    def _after_create(self) -> None:
        pass

    # ------------------------------------------------------------------ ingest (in a tx)
    def lock_epochs(self, keys: Sequence[tuple[str, str]], now_ms: int) -> None:
        """Create and lock the epochs rows (keys sorted), serialising their writers."""
        for gw, ep in keys:
            self.execute("INSERT INTO epochs (gateway_id, epoch, first_seen_ms) VALUES (?, ?, ?) "
                         "ON CONFLICT (gateway_id, epoch) DO NOTHING", (gw, ep, now_ms))

    def ranges_near(self, gw: str, ep: str, lo: int, hi: int) -> list[tuple[int, int]]:
        """Stored ranges overlapping or adjacent to [lo, hi]."""
        return [(a, b) for a, b in self.all(
            "SELECT first_seq, last_seq FROM seq_ranges WHERE gateway_id = ? AND epoch = ? "
            "AND last_seq >= ? AND first_seq <= ? ORDER BY first_seq", (gw, ep, lo - 1, hi + 1))]

    def replace_ranges(self, gw: str, ep: str, old: Iterable[tuple[int, int]],
                       new: Iterable[tuple[int, int]]) -> None:
        for a, _b in old:
            self.execute("DELETE FROM seq_ranges WHERE gateway_id = ? AND epoch = ? "
                         "AND first_seq = ?", (gw, ep, a))
        for a, b in new:
            self.execute("INSERT INTO seq_ranges (gateway_id, epoch, first_seq, last_seq) "
                         "VALUES (?, ?, ?, ?)", (gw, ep, a, b))

    def digests(self, gw: str, ep: str, seqs: Sequence[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for i in range(0, len(seqs), 500):
            part = seqs[i:i + 500]
            marks = ", ".join("?" * len(part))
            for s, d in self.all(f"SELECT seq, digest FROM records WHERE gateway_id = ? AND "
                                 f"epoch = ? AND seq IN ({marks})", (gw, ep, *part)):
                out[s] = bytes(d)
        return out

    def known_gateway(self, gw: str) -> bool:
        return bool(self.all("SELECT 1 FROM epochs WHERE gateway_id = ? LIMIT 1", (gw,)))

    def write_rows(self, table: str, cols: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        if rows:
            marks = ", ".join("?" * len(cols))
            self.executemany((f"INSERT INTO {table} ({', '.join(cols)}) "
                                         f"VALUES ({marks})"), rows)

    def write_readings(self, rows: list[tuple[Any, ...]]) -> None:
        self.write_rows("readings", READING_COLS, rows)

    def write_records(self, rows: list[tuple[Any, ...]]) -> None:
        self.write_rows("records", RECORD_COLS, rows)

    def add_counters(self, counts: dict[tuple[str, str], int]) -> None:
        rows = [(gw, name, n) for (gw, name), n in sorted(counts.items()) if n]
        if rows:
            self.executemany((
                "INSERT INTO counters (gateway_id, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT (gateway_id, name) DO UPDATE SET value = counters.value + "
                "excluded.value"), rows)

    def ensure_partitions(self, ts_values: Iterable[int]) -> None:
        """Make sure the readings of these timestamps have a partition (PostgreSQL)."""

    # ------------------------------------------------------------------ reading the books
    def counters(self) -> list[tuple[str, str, int]]:
        return [(g, n, int(v)) for g, n, v in self.all(
            "SELECT gateway_id, name, value FROM counters")]

    def epoch_keys(self) -> list[tuple[str, str]]:
        return self.all("SELECT gateway_id, epoch FROM epochs ORDER BY gateway_id, first_seen_ms, epoch")

    def seq_ranges(self) -> list[tuple[str, str, int, int]]:
        return self.all("SELECT gateway_id, epoch, first_seq, last_seq FROM seq_ranges "
                        "ORDER BY gateway_id, epoch, first_seq")

    def gap_ranges(self) -> list[tuple[str, str, int, int]]:
        return self.all("SELECT gateway_id, epoch, first_seq, last_seq FROM gap_records "
                        "WHERE first_seq >= 1 AND first_seq <= last_seq "
                        "ORDER BY gateway_id, epoch, first_seq")

    def series(self, meter: str, quantity: str, lo: int, hi: int) -> list[tuple[Any, ...]]:
        """(ts_ms, value, unit, quality) of one register with lo <= ts <= hi, in time order,
        plus the last reading before lo and the first after hi (to bracket the edges)."""
        base = "SELECT ts_ms, value, unit, quality, seq FROM readings WHERE meter_id = ? AND quantity = ?"
        before = self.all(base + " AND ts_ms < ? ORDER BY ts_ms DESC LIMIT 1", (meter, quantity, lo))
        mid = self.all(base + " AND ts_ms >= ? AND ts_ms <= ? ORDER BY ts_ms, epoch, seq",
                       (meter, quantity, lo, hi))
        after = self.all(base + " AND ts_ms > ? ORDER BY ts_ms LIMIT 1", (meter, quantity, hi))
        return [(int(t), Decimal(str(v)), u, ql) for t, v, u, ql, _s in [*before, *mid, *after]]

    def group_members(self, group: str) -> list[str]:
        return [m for (m,) in self.all("SELECT meter_id FROM meter_groups WHERE group_name = ? "
                                       "ORDER BY meter_id", (group,))]

    def import_groups(self, rows: Sequence[tuple[str, str]], replace: bool) -> None:
        self.begin()
        try:
            if replace:
                for g in sorted({g for g, _ in rows}):
                    self.execute("DELETE FROM meter_groups WHERE group_name = ?", (g,))
            self.executemany((
                "INSERT INTO meter_groups (group_name, meter_id) VALUES (?, ?) "
                "ON CONFLICT (group_name, meter_id) DO NOTHING"), list(rows))
            self.commit()
        except BaseException:
            self.rollback()
            raise


class SqliteDatabase(Database):
    """The embedded default: one worker, one file, WAL, every batch one IMMEDIATE txn."""

    engine = "sqlite"

    def connect(self) -> None:
        try:
            Path(self.dsn.target).parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.dsn.target, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        except (sqlite3.Error, OSError) as e:
            raise DbError(f"cannot open {self.dsn.target}: {e}") from None

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        try:
            if self.conn is not None and self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def migrate(self) -> int:
        self.begin()
        try:
            self.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            row = self.all("SELECT version FROM schema_version")
            v = self._apply(row[0][0] if row else 0)
            self.commit()
            return v
        except BaseException:
            self.rollback()
            raise


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3: COPY for the bulk rows, row locks on epochs."""

    engine = "postgresql"
    ph = "%s"
    MIGRATION_LOCK = 0x6D677768  # pg_advisory_xact_lock key: one migrating worker at a time

    def __init__(self, dsn: Dsn) -> None:
        super().__init__(dsn)
        self._partitions: set[str] = set()
        self.timescale = False

    def connect(self) -> None:
        try:
            import psycopg
        except ImportError:
            raise DbError("PostgreSQL needs psycopg 3: pip install 'meter-gateway[headend]'") \
                from None
        try:
            self.conn = psycopg.connect(self.dsn.target, connect_timeout=5, autocommit=False)
        except psycopg.Error as e:
            raise DbError(f"cannot connect to PostgreSQL: {e}".strip()) from None

    def begin(self) -> None:
        pass  # psycopg opens a transaction with the first statement

    def migrate(self) -> int:
        try:
            self.execute("SELECT pg_advisory_xact_lock(?)", (self.MIGRATION_LOCK,))
            self.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            row = self.all("SELECT version FROM schema_version")
            v = self._apply(row[0][0] if row else 0)
            self.timescale = bool(self.all(
                "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")) and not bool(
                self.all("SELECT 1 FROM pg_partitioned_table p JOIN pg_class c "
                         "ON c.oid = p.partrelid WHERE c.relname = 'readings'"))
            self.commit()
            return v
        except BaseException:
            self.rollback()
            raise

    def _after_create(self) -> None:
        """TimescaleDB when the extension is available: readings become a hypertable
        (chunks of 30 days of ts_ms); else they stay range-partitioned by month."""
        if not self.all("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"):
            return
        import psycopg
        try:
            with self.conn.transaction():  # a savepoint: e.g. not in shared_preload_libraries
                self.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except psycopg.Error:
            return  # keep the native monthly partitions
        self.execute("DROP TABLE readings")
        cols = _schema(True)[3].split(" PARTITION BY")[0]
        self.execute(cols)
        self.execute("CREATE INDEX readings_series ON readings (meter_id, quantity, ts_ms)")
        self.execute("SELECT create_hypertable('readings', 'ts_ms', "
                     "chunk_time_interval => 2592000000::bigint)")

    def lock_epochs(self, keys: Sequence[tuple[str, str]], now_ms: int) -> None:
        super().lock_epochs(keys, now_ms)
        for gw, ep in keys:
            self.execute("SELECT 1 FROM epochs WHERE gateway_id = ? AND epoch = ? FOR UPDATE",
                         (gw, ep))

    def digests(self, gw: str, ep: str, seqs: Sequence[int]) -> dict[int, bytes]:
        return {s: bytes(d) for s, d in self.all(
            "SELECT seq, digest FROM records WHERE gateway_id = ? AND epoch = ? "
            "AND seq = ANY(?)", (gw, ep, list(seqs)))}

    def _copy(self, table: str, cols: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        with self.conn.cursor() as cur:
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)

    def write_readings(self, rows: list[tuple[Any, ...]]) -> None:
        self._copy("readings", READING_COLS, rows)

    def write_records(self, rows: list[tuple[Any, ...]]) -> None:
        self._copy("records", RECORD_COLS, rows)

    def ensure_partitions(self, ts_values: Iterable[int]) -> None:
        """Monthly partitions of readings, created on first use in their own short
        transaction (an advisory lock keeps two workers from racing). Call outside a tx."""
        if self.timescale:
            return
        months = {}
        cur_lo = cur_hi = 0  # the month of the previous value: most values share one
        for t in ts_values:
            if cur_lo <= t < cur_hi:
                continue
            cur_lo, cur_hi, suffix = month_bounds(t)
            if suffix not in self._partitions:
                months[suffix] = (cur_lo, cur_hi)
        if not months:
            return
        try:
            self.execute("SELECT pg_advisory_xact_lock(?)", (self.MIGRATION_LOCK + 1,))
            have = {n for (n,) in self.all("SELECT c.relname FROM pg_inherits i JOIN pg_class c "
                                           "ON c.oid = i.inhrelid JOIN pg_class p ON "
                                           "p.oid = i.inhparent WHERE p.relname = 'readings'")}
            for suffix, (lo, hi) in sorted(months.items()):
                name = f"readings_{suffix}"
                if name not in have:
                    self.execute(f"CREATE TABLE {name} PARTITION OF readings "
                                 f"FOR VALUES FROM ({lo}) TO ({hi})")
            self.commit()
        except BaseException:
            self.rollback()
            raise
        self._partitions.update(months)


def open_db(dsn: str) -> Database:
    d = Dsn.parse(dsn)
    return PostgresDatabase(d) if d.engine == "postgresql" else SqliteDatabase(d)


def db_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the database failed", for the retry loops."""
    errs: list[type[BaseException]] = [DbError, sqlite3.Error]
    try:
        import psycopg
        errs.append(psycopg.Error)
    except ImportError:
        pass
    return tuple(errs)


def outage_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the database is not reachable or not usable now": wait and retry
    the same batch. Anything else is about the data (see Worker._isolate)."""
    errs: list[type[BaseException]] = [DbError, sqlite3.OperationalError]
    try:
        import psycopg
        errs += [psycopg.OperationalError, psycopg.InterfaceError, psycopg.ProgrammingError]
    except ImportError:
        pass
    return tuple(errs)

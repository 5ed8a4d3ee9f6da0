"""Exactly-once ingest of a batch of uplink messages in ONE database transaction.

Sans-MQTT (the worker in :mod:`gateway.headend.worker` feeds it): verify every envelope
first (CPU, outside the transaction), then in the transaction lock the (gateway, epoch)
books it touches, judge each record against what the database already holds -- new,
duplicate (same digest) or conflict (other digest, quarantined with both) -- and judge
replays against the database too, so a restarted worker, or another one, still refuses an
old envelope. Nothing of a batch is visible before its commit, and the caller acknowledges
the messages to the broker only after it: a crash at any instant loses nothing (the broker
redelivers) and duplicates nothing (the books refuse what they hold).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from hashlib import blake2b
from typing import Any, TextIO

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.headend.db import Database, to_json
from gateway.headend.verifier import SeqRanges
from gateway.model import Diag, Event, Gap, Reading
from gateway.wire.envelope import (
    WILDCARD,
    Envelope,
    EnvelopeError,
    decode_envelope,
    peek_gateway_id,
)
from gateway.wire.errors import MalformedEnvelope, UnknownSigner

MAX_MESSAGE_BYTES = 4 * 2**20  # the gateway's largest envelope is far below this
LOG_EVERY_S = 60.0
KIND = {Reading: 0, Event: 1, Gap: 2, Diag: 3}


INT64 = 2**63
MAX_EXPONENT = 64  # |decimal exponent| of a reading; real registers use -9..+9
MAX_MANTISSA = 10**40
MAX_TS = 253_402_300_800_000  # year 10000: readings are placed in monthly partitions



def record_row(kind: int, rec: Any, gw: str, ep: str, seq: int, pg: bool) -> tuple[Any, ...]:
    """The table row of one accepted record: kind 0 reading, 1 event, 2 gap, 3 diag."""
    if kind == 0:
        return reading_row(rec, gw, ep, seq, pg)
    if kind == 1:
        return (gw, ep, seq, rec.ts_ms, rec.kind, rec.source, rec.meter_id, rec.severity,
                to_json(rec.detail))
    if kind == 2:
        return (gw, ep, seq, rec.first_seq, rec.last_seq, rec.count, rec.reason, rec.ts_ms)
    return (gw, ep, seq, rec.ts_ms, rec.scope, rec.meter_id, to_json(rec.metrics))


class Unstorable(ValueError):
    """A verified record the database could not hold (NUL in a text, integer out of
    range): the whole message counts as malformed instead of wedging the batch."""


def record_digest(kind: int, obj: list[Any], rec: Any = None) -> bytes:
    """Content digest stored with each record: stable across processes and machines.
    Readings (the bulk) hash a fixed text layout of their fields, other kinds their CBOR."""
    if kind == 0:
        r = rec if rec is not None else Reading.from_obj(obj)
        ql = "\x1e".join(r.quality)
        text = (f"R\x1f{r.meter_id}\x1f{r.quantity}\x1f{r.mantissa}\x1f{r.exponent}\x1f{r.unit}"
                f"\x1f{r.meter_ts_ms}\x1f{r.rx_ts_ms}\x1f{ql}\x1f{r.bus}")
        return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return blake2b(cbor2.dumps([kind, obj]), digest_size=16).digest()


def _text(*xs: Any) -> None:
    for x in xs:
        if x is not None and (type(x) is not str or "\x00" in x):
            raise Unstorable(f"text field {x!r:.60} (NUL or not a string)")


def _int64(*xs: Any) -> None:
    for x in xs:
        if x is not None and not -INT64 <= x < INT64:
            raise Unstorable(f"integer {x} out of the 64-bit range")


def validate(gw: str, ep: str, seq: int, rec: Any) -> None:
    """What every engine can store, checked before the transaction (see Unstorable)."""
    t = type(rec)
    if t is Reading:  # the hot path: the decoder already guarantees the types
        mt, rx = rec.meter_ts_ms, rec.rx_ts_ms
        if not (seq < INT64 and 0 <= rx < MAX_TS and (mt is None or 0 <= mt < MAX_TS)
                and -MAX_EXPONENT <= rec.exponent <= MAX_EXPONENT
                and -MAX_MANTISSA < rec.mantissa < MAX_MANTISSA):
            raise Unstorable(f"reading seq {seq}: value or time out of range")
        if "\x00" in f"{rec.meter_id}{rec.quantity}{rec.unit}{rec.bus}{''.join(rec.quality)}":
            raise Unstorable(f"reading seq {seq}: NUL in a text field")
        return
    _int64(seq)
    if t is Event:
        _text(rec.kind, rec.source, rec.meter_id, rec.severity)
        _int64(rec.ts_ms)
    elif t is Gap:
        _text(rec.reason)
        _int64(rec.first_seq, rec.last_seq, rec.count, rec.ts_ms)
    else:
        _text(rec.scope, rec.meter_id)
        _int64(rec.ts_ms)


@dataclass
class Message:
    topic: str
    payload: bytes


@dataclass
class Outcome:
    """What one message did (for the worker's log line)."""

    topic: str
    gateway_id: str | None = None
    verdict: str = "ok"  # ok | replay | bad_signature | malformed | oversized | unknown_gateway | topic_mismatch
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    error: str | None = None


@dataclass
class _Checked:
    msg: Message
    out: Outcome
    env: Envelope | None = None
    rows: list[tuple[int, int, Any, list[Any] | None, bytes]] = field(default_factory=list)
    readings_only: bool = True


def topic_gateway(topic: str) -> str | None:
    """The gateway id a topic names: the level before ``up`` (``meters/gw-1/up/data``)."""
    parts = topic.split("/")
    try:
        i = parts.index("up")
    except ValueError:
        return None
    return parts[i - 1] if i >= 1 else None


class RateLog:
    """One line per sender per minute; later lines of that minute are counted and the
    count is said with the next line that gets through."""

    def __init__(self, out: TextIO | None = None, every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out or sys.stderr
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, sender: str, line: str) -> bool:
        now = self.clock()
        last = self._last.get(sender)
        if last is not None and now - last < self.every_s:
            self._held[sender] = self._held.get(sender, 0) + 1
            return False
        if len(self._last) > 10_000:  # bounded: a flood of invented senders
            self._last.clear()
        self._last[sender] = now
        held = self._held.pop(sender, 0)
        print(line + (f" (+{held} more from {sender} in the last minute)" if held else ""),
              file=self.out, flush=True)
        return True


class Ingestor:
    """Verifies messages and writes them exactly once; see the module docstring."""

    def __init__(self, db: Database, trusted: Mapping[str, Ed25519PublicKey], *,
                 replay_window_s: float = 300.0, max_bytes: int = MAX_MESSAGE_BYTES,
                 log: RateLog | None = None) -> None:
        self.db = db
        self.trusted = dict(trusted)
        self.window_ms = int(replay_window_s * 1000)
        self.max_bytes = max_bytes
        self.log = log or RateLog()

    # ------------------------------------------------------------------ checking
    def check(self, msg: Message) -> _Checked:
        out = Outcome(msg.topic)
        c = _Checked(msg, out)
        data = msg.payload
        if len(data) > self.max_bytes:
            out.verdict, out.error = "oversized", f"{len(data)} bytes > {self.max_bytes}"
            out.gateway_id = peek_gateway_id(data[:4096])
            return c
        try:
            env = decode_envelope(data, self.trusted)
        except EnvelopeError as e:
            out.gateway_id = peek_gateway_id(data)
            out.error = f"{type(e).__name__}: {e}"
            out.verdict = ("malformed" if isinstance(e, MalformedEnvelope) else
                           "unknown_gateway" if isinstance(e, UnknownSigner) else "bad_signature")
            return c
        out.gateway_id, out.first_seq, out.last_seq = env.gateway_id, env.first_seq, env.last_seq
        tg = topic_gateway(msg.topic)
        if tg != env.gateway_id:
            out.verdict = "topic_mismatch"
            out.error = f"signed by {env.gateway_id!r}, published on {msg.topic!r}"
            return c
        rows = c.rows
        try:
            _text(env.gateway_id, env.epoch)
            for sr in env.records:
                rec = sr.record
                kind = KIND[type(rec)]
                validate(env.gateway_id, env.epoch, sr.seq, rec)
                obj = None
                if kind:
                    obj = rec.to_obj()
                    c.readings_only = False
                rows.append((sr.seq, kind, rec, obj, record_digest(kind, obj, rec)))
        except Unstorable as e:
            rows.clear()
            out.verdict, out.error = "malformed", f"verified but unstorable: {e}"
            return c
        c.env = env
        return c

    # ------------------------------------------------------------------ one batch
    def ingest(self, msgs: Sequence[Message], now_ms: int) -> list[Outcome]:
        """Check and write a batch in one transaction; raises a database error (see
        :func:`gateway.headend.db.db_errors`) with nothing written when the DB fails."""
        checked = [self.check(m) for m in msgs]
        good = [c for c in checked if c.env is not None]
        db = self.db
        ts = [_reading_ts(r[2]) for c in good for r in c.rows if r[1] == 0]
        db.ensure_partitions(ts)
        counts: dict[tuple[str, str], int] = {}

        def count(gw: str, name: str, n: int = 1) -> None:
            if n:
                counts[(gw, name)] = counts.get((gw, name), 0) + n

        db.begin()
        try:
            keys = sorted({(c.env.gateway_id, c.env.epoch) for c in good})  # type: ignore[union-attr]
            db.lock_epochs(keys, now_ms)
            for c in checked:
                if c.env is None:
                    self._count_bad(c.out, count)
            records: list[tuple[Any, ...]] = []
            readings: list[tuple[Any, ...]] = []
            events: list[tuple[Any, ...]] = []
            diags: list[tuple[Any, ...]] = []
            gaps: list[tuple[Any, ...]] = []
            conflicts: list[tuple[Any, ...]] = []
            for gw, ep in keys:
                group = [c for c in good if (c.env.gateway_id, c.env.epoch) == (gw, ep)]  # type: ignore[union-attr]
                self._judge(gw, ep, group, now_ms, count, records, readings, events, diags,
                            gaps, conflicts)
            db.write_records(records)
            db.write_readings(readings)
            db.write_rows("events", ("gateway_id", "epoch", "seq", "ts_ms", "kind", "source",
                                     "meter_id", "severity", "detail"), events)
            db.write_rows("diag", ("gateway_id", "epoch", "seq", "ts_ms", "scope", "meter_id",
                                   "metrics"), diags)
            db.write_rows("gap_records", ("gateway_id", "epoch", "seq", "first_seq", "last_seq",
                                          "count", "reason", "ts_ms"), gaps)
            db.write_rows("conflicts", ("gateway_id", "epoch", "seq", "stored_digest",
                                        "new_digest", "received_ms", "record"), conflicts)
            db.add_counters(counts)
            db.commit()
        except BaseException:
            db.rollback()
            raise
        for c in checked:
            self._log(c.out)
        return [c.out for c in checked]

    def reject(self, msg: Message, reason: str, now_ms: int) -> Outcome:
        """Count a message the database refused (after isolation) as malformed."""
        out = Outcome(msg.topic, gateway_id=peek_gateway_id(msg.payload),
                      verdict="malformed", error=f"refused by the database: {reason}")
        counts: dict[tuple[str, str], int] = {}

        def count(gw: str, name: str, n: int = 1) -> None:
            counts[(gw, name)] = counts.get((gw, name), 0) + n

        self.db.begin()
        try:
            self._count_bad(out, count)
            self.db.add_counters(counts)
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise
        self._log(out)
        return out

    def _count_bad(self, out: Outcome, count: Callable[..., None]) -> None:
        kid = out.gateway_id
        # Only a gateway we know gets the count, so forgers cannot invent gateway entries.
        known = kid is not None and kid != WILDCARD and (
            kid in self.trusted or (out.verdict != "oversized" and self.db.known_gateway(kid)))
        if out.verdict == "topic_mismatch":
            known = True  # the signature verified: that gateway did sign it
        gw = kid if known and kid is not None else ""
        count(gw, "messages")
        v = out.verdict
        if v == "oversized":
            count(gw, "malformed")
            count(gw, "oversized")
        elif v == "unknown_gateway":
            count(gw, "bad_signatures")
            count(gw, "unknown_gateways")
        elif v == "bad_signature":
            count(gw, "bad_signatures")
        elif v == "malformed":
            count(gw, "malformed")
        elif v == "topic_mismatch":
            count(gw, "topic_mismatches")

    def _judge(self, gw: str, ep: str, group: list[_Checked], now_ms: int,
               count: Callable[..., None], records: list[tuple[Any, ...]],
               readings: list[tuple[Any, ...]], events: list[tuple[Any, ...]],
               diags: list[tuple[Any, ...]], gaps: list[tuple[Any, ...]],
               conflicts: list[tuple[Any, ...]]) -> None:
        db = self.db
        pg = db.engine == "postgresql"
        lo = min(c.env.first_seq for c in group)  # type: ignore[union-attr]
        hi = max(c.env.last_seq for c in group)  # type: ignore[union-attr]
        lo = min(lo, min(r[0] for c in group for r in c.rows))
        hi = max(hi, max(r[0] for c in group for r in c.rows))
        near = db.ranges_near(gw, ep, lo, hi)
        held = SeqRanges()
        for a, b in near:
            held.add(a, b)
        old = sorted({r[0] for c in group for r in c.rows if r[0] in held})
        stored = db.digests(gw, ep, old) if old else {}
        fresh: dict[int, bytes] = {}  # seq -> digest, accepted earlier in this batch
        merged = SeqRanges()
        for a, b in near:
            merged.add(a, b)
        for c in group:
            env, out = c.env, c.out
            assert env is not None
            count(gw, "messages")
            if abs(env.sent_ms - now_ms) > self.window_ms and all(
                    r[0] in held or r[0] in fresh for r in c.rows):
                out.verdict = "replay"
                count(gw, "replays")
                continue
            rows = c.rows
            first, last = rows[0][0], rows[-1][0]  # seqs rise strictly within a message
            if c.readings_only and not held.overlaps(first, last) \
                    and not merged.overlaps(first, last):
                # The common case, all new: no per-record lookups.
                fresh.update((r[0], r[4]) for r in rows)
                if last - first + 1 == len(rows):
                    merged.add(first, last)
                else:
                    for r in rows:
                        merged.add(r[0])
                records.extend((gw, ep, r[0], 0, r[4], now_ms) for r in rows)
                readings.extend(reading_row(r[2], gw, ep, r[0], pg) for r in rows)
                n = len(rows)
                out.accepted = n
                count(gw, "accepted", n)
                count(gw, "readings", n)
                continue
            acc = dup = conf = 0
            kinds = [0, 0, 0, 0]
            for seq, kind, rec, obj, dg in rows:
                prev = fresh.get(seq)
                if prev is None and seq in held:
                    prev = stored.get(seq)
                    if prev is None:  # a range says held but the record row is missing
                        prev = dg
                if prev is not None:
                    if prev == dg:
                        dup += 1
                    else:
                        conf += 1
                        conflicts.append((gw, ep, seq, prev, dg, now_ms,
                                          cbor2.dumps([kind, rec.to_obj() if obj is None else obj])))
                    continue
                fresh[seq] = dg
                merged.add(seq)
                acc += 1
                kinds[kind] += 1
                records.append((gw, ep, seq, kind, dg, now_ms))
                (readings, events, gaps, diags)[kind].append(
                    record_row(kind, rec, gw, ep, seq, pg))
            for name, n in zip(("readings", "events", "gap_records", "diag"), kinds):
                count(gw, name, n)
            out.accepted, out.duplicates, out.conflicts = acc, dup, conf
            count(gw, "accepted", acc)
            count(gw, "duplicates", dup)
            count(gw, "conflicts", conf)
        if fresh:
            db.replace_ranges(gw, ep, near, list(merged))

    def _log(self, o: Outcome) -> None:
        if o.verdict == "ok":
            if o.conflicts:
                self.log(f"conflict:{o.gateway_id}",
                         f"headend: {o.gateway_id} seq {o.first_seq}-{o.last_seq}: "
                         f"{o.conflicts} CONFLICTING records quarantined")
            return
        sender = o.gateway_id or topic_gateway(o.topic) or o.topic
        what = o.verdict.upper().replace("_", " ")
        self.log(sender,
                 f"headend: {o.topic}: {what} (kid {o.gateway_id!r})"
                 + (f": {o.error}" if o.error else ""))


def _reading_ts(r: Reading) -> int:
    return r.meter_ts_ms if r.meter_ts_ms is not None else r.rx_ts_ms


def reading_row(r: Reading, gw: str, ep: str, seq: int, pg: bool) -> tuple[Any, ...]:
    mt = r.meter_ts_ms
    # PostgreSQL reads "1234e-3" as the exact numeric 1.234; SQLite keeps decimal TEXT.
    v = f"{r.mantissa}e{r.exponent}" if pg else \
        format(Decimal(r.mantissa).scaleb(r.exponent), "f")
    return (r.meter_id, r.quantity, mt if mt is not None else r.rx_ts_ms, v, r.unit,
            ",".join(r.quality), r.bus, r.rx_ts_ms, mt is not None, gw, ep, seq)

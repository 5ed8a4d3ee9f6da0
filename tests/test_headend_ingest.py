"""Exactly-once ingest into SQLite and a real PostgreSQL, without a broker."""

from __future__ import annotations

import os
from decimal import Decimal

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.headend.db import open_db
from gateway.headend.ingest import Ingestor, Message, RateLog
from gateway.headend.report import report
from gateway.model import Event, Gap, Reading, StoredRecord
from gateway.wire.cbor import bstr_head
from gateway.wire.cose import COSE_PROTECTED, SIG1_PREFIX
from gateway.wire.envelope import encode_envelope
from tests.headend_db import dsn, fresh_pg_db, pg_cluster  # noqa: F401 (fixtures)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
GW = "gw-0001"
NOW = 1_764_547_200_000  # 2025-12-01T00:00Z
TOPIC = f"meters/{GW}/up/data"


def reading(seq: int, value: int = 0, meter: str | None = None) -> StoredRecord:
    return StoredRecord(seq, Reading(meter or f"m{seq % 7}", "1-0:1.8.0", 1000 + seq + value, -3,
                                     "kWh", NOW - 900_000 + seq, NOW - 899_700 + seq,
                                     ("ok",), "bus0"))


def msg(seqs, *, gw: str = GW, epoch: str = "e1", sent: int = NOW, key=KEY, value: int = 0,
        extra: list[StoredRecord] | None = None, topic: str | None = None) -> Message:
    recs = [reading(s, value) for s in seqs] + (extra or [])
    recs.sort(key=lambda r: r.seq)
    return Message(topic or f"meters/{gw}/up/data", encode_envelope(gw, epoch, recs, sent, key))


class Quiet(RateLog):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def __call__(self, sender: str, line: str) -> bool:
        self.lines.append(line)
        return True


def ingestor(dsn: str, **kw) -> Ingestor:
    db = open_db(dsn)
    db.connect()
    db.migrate()
    return Ingestor(db, {GW: KEY.public_key()}, log=Quiet(), **kw)


def test_new_duplicate_conflict_and_replay_judged_against_the_database(dsn: str) -> None:
    ing = ingestor(dsn)
    first = msg(range(1, 11))
    [o] = ing.ingest([first], NOW + 50)
    assert (o.verdict, o.accepted) == ("ok", 10)
    [o] = ing.ingest([first], NOW + 2_000)  # QoS 1 redelivery
    assert (o.verdict, o.accepted, o.duplicates) == ("ok", 0, 10)
    [o] = ing.ingest([msg([9, 10, 11], value=5)], NOW + 2_000)  # 9, 10 differ: conflicts
    assert (o.accepted, o.conflicts) == (1, 2)
    ing.db.close()
    # A restarted worker (fresh process state) still refuses the old envelope an hour later.
    ing2 = ingestor(dsn)
    [o] = ing2.ingest([first], NOW + 3_600_000)
    assert o.verdict == "replay"
    # ... but an old message with new seqs (queued while the head-end was away) is taken.
    [o] = ing2.ingest([msg(range(11, 14), sent=NOW + 1, value=5)], NOW + 10 * 3_600_000)
    assert (o.verdict, o.accepted, o.duplicates) == ("ok", 2, 1)
    s = report(ing2.db)
    assert {k: s[k] for k in ("accepted", "duplicates", "conflicts", "replays", "gaps",
                              "readings", "messages")} == dict(
        accepted=13, duplicates=11, conflicts=2, replays=1, gaps=0, readings=13, messages=5)
    rows = ing2.db.all("SELECT seq, stored_digest, new_digest FROM conflicts ORDER BY seq")
    assert [r[0] for r in rows] == [9, 10] and all(bytes(a) != bytes(b) for _, a, b in rows)
    assert ing2.db.all("SELECT count(*) FROM readings")[0][0] == 13
    assert ing2.db.all("SELECT count(*) FROM seq_ranges")[0][0] == 1  # ranges, not seqs
    v = ing2.db.all("SELECT value FROM readings WHERE seq = 3")[0][0]
    assert Decimal(str(v)) == Decimal("1.003")  # exact, never a float


def test_one_batch_one_transaction_with_duplicates_inside_it(dsn: str) -> None:
    ing = ingestor(dsn)
    a, b = msg(range(1, 6)), msg(range(4, 9))
    outs = ing.ingest([a, b, a], NOW)
    assert [(o.accepted, o.duplicates) for o in outs] == [(5, 0), (3, 2), (0, 5)]
    assert report(ing.db)["accepted"] == 8


def test_gaps_and_gap_records(dsn: str) -> None:
    ing = ingestor(dsn)
    ing.ingest([msg(range(1, 11)), msg(range(21, 31))], NOW)
    s = report(ing.db)
    ep = s["gateways"][GW]["epochs"]["e1"]
    assert (ep["first_seq"], ep["last_seq"], ep["gaps"], ep["missing_ranges"]) == \
        (1, 30, 10, [[11, 20]])
    gap = StoredRecord(31, Gap(11, 18, 8, "store.full", NOW))
    ev = StoredRecord(32, Event("meter.crc_error", NOW, "bus0", "m1", "warning",
                                {"n": 1, "raw": b"\x01\x02"}))
    ing.ingest([msg([], extra=[gap, ev])], NOW)
    s = report(ing.db)
    assert (s["gaps"], s["gap_records"], s["events"], s["accepted"]) == (2, 1, 1, 22)
    assert s["gateways"][GW]["epochs"]["e1"]["missing_ranges"] == [[19, 20]]
    ing.ingest([msg([19, 20])], NOW)
    assert report(ing.db)["gaps"] == 0
    assert report(ing.db, GW)["accepted"] == 24
    assert report(ing.db, "gw-nope")["accepted"] == 0


def signed(payload: bytes, key=KEY, gw: str = GW) -> bytes:
    sig = key.sign(SIG1_PREFIX + bstr_head(len(payload)) + payload)
    return cbor2.dumps(cbor2.CBORTag(18, [COSE_PROTECTED, {4: gw.encode()}, payload, sig]))


def test_every_bad_input_class_is_counted_and_never_stored(dsn: str) -> None:
    ing = ingestor(dsn, max_bytes=64 * 1024)
    ing.ingest([msg([1])], NOW)
    bad = [
        Message(TOPIC, os.urandom(300)),                                    # garbage
        Message(TOPIC, b""),                                                # empty
        msg([2], key=OTHER),                                                # forged
        Message(TOPIC, b"\x00" * (64 * 1024 + 1)),                          # oversized
        msg([1], gw="gw-evil", topic="meters/gw-evil/up/data"),             # unknown gateway
        Message(TOPIC, signed(b"\xff\x00 corrupt body")),                   # signed, corrupt
        msg([3], topic="meters/gw-0002/up/data"),                           # foreign topic
    ]
    outs = ing.ingest(bad, NOW)
    assert [o.verdict for o in outs] == ["malformed", "malformed", "bad_signature", "oversized",
                                         "unknown_gateway", "malformed", "topic_mismatch"]
    s = report(ing.db)
    assert (s["malformed"], s["bad_signatures"], s["oversized"], s["unknown_gateways"],
            s["topic_mismatches"], s["accepted"], s["messages"]) == (4, 2, 1, 1, 1, 1, 8)
    assert list(s["gateways"]) == [GW]  # a forger cannot create gateway entries
    g = s["gateways"][GW]
    assert (g["bad_signatures"], g["malformed"], g["topic_mismatches"]) == (1, 1, 1)
    assert ing.db.all("SELECT count(*) FROM readings")[0][0] == 1
    # rate-limited log: one line per sender and verdict per minute
    ing.log = RateLog(out=open(os.devnull, "w"))
    assert ing.log("x", "a") and not ing.log("x", "b")


def test_sqlite_and_postgresql_give_the_same_report(tmp_path, pg_cluster) -> None:  # noqa: F811
    traffic = [
        [msg(range(1, 40))], [msg(range(30, 60)), msg(range(70, 80), epoch="e2")],
        [msg(range(55, 65), value=1)], [msg(range(1, 40))],
        [Message(TOPIC, b"junk"), msg([100], key=OTHER)],
        [msg([], extra=[StoredRecord(66, Gap(61, 64, 4, "store.full", NOW))])],
        [msg(range(1, 5), sent=NOW - 3_600_000)],
    ]
    reports = []
    for dsn_ in (f"sqlite:///{tmp_path / 'a.db'}", fresh_pg_db(pg_cluster)):
        ing = ingestor(dsn_)
        for batch in traffic:
            ing.ingest(batch, NOW)
        reports.append(report(ing.db))
        ing.db.close()
    assert reports[0] == reports[1]
    assert reports[0]["replays"] == 1 and reports[0]["conflicts"] == 5


def test_schema_is_versioned_and_migration_idempotent(dsn: str) -> None:
    db = open_db(dsn)
    db.connect()
    assert db.migrate() == 1
    assert db.migrate() == 1
    assert db.all("SELECT version FROM schema_version") == [(1,)]


def test_postgresql_readings_are_partitioned_by_month(pg_cluster) -> None:  # noqa: F811
    ing = ingestor(fresh_pg_db(pg_cluster))
    later = StoredRecord(5, Reading("m1", "1-0:1.8.0", 1, 0, "kWh", NOW + 40 * 86_400_000,
                                    NOW + 40 * 86_400_000))
    ing.ingest([msg([1, 2], extra=[later])], NOW)
    parts = ing.db.all("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                       "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'readings' "
                       "ORDER BY 1")
    assert [p for (p,) in parts] == ["readings_y2025m11", "readings_y2026m01"]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_messages_never_raise_and_never_store(tmp_path, data) -> None:
    ing = ingestor(f"sqlite:///{tmp_path / 'fuzz.db'}")
    good = msg([1, 2, 3]).payload
    kind = data.draw(st.sampled_from(["random", "truncate", "flip", "resign"]))
    if kind == "random":
        payload = data.draw(st.binary(max_size=400))
    elif kind == "truncate":
        payload = good[:data.draw(st.integers(0, len(good) - 1))]
    else:
        b = bytearray(cbor2.loads(good).value[2] if kind == "resign" else good)
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] ^= 1 << data.draw(st.integers(0, 7))
        payload = signed(bytes(b)) if kind == "resign" else bytes(b)
    before = ing.db.all("SELECT count(*) FROM readings")[0][0]
    [o] = ing.ingest([Message(TOPIC, payload)], NOW)
    after = ing.db.all("SELECT count(*) FROM readings")[0][0]
    assert o.verdict in ("ok", "replay", "malformed", "bad_signature", "unknown_gateway")
    if o.verdict != "ok":
        assert after == before
    ing.db.close()


def test_a_message_the_database_refuses_is_isolated_not_wedging_the_worker(tmp_path) -> None:
    """One message the database refuses (here an operator's trigger) is counted malformed;
    the rest of its batch is written, and the worker goes on."""
    import paho.mqtt.client as mqtt

    from gateway.headend.worker import IngestOptions, Worker

    dsn_ = f"sqlite:///{tmp_path / 'poison.db'}"
    ing = ingestor(dsn_)
    ing.db.execute("CREATE TRIGGER no_poison BEFORE INSERT ON readings "
                   "WHEN NEW.meter_id = 'poison' BEGIN SELECT RAISE(ABORT, 'refused'); END")
    ing.db.close()
    w = Worker(IngestOptions(db=dsn_, host="", port=0, ca="", cert="", key="",
                             trusted={GW: KEY.public_key()}, quiet=True))
    poison = StoredRecord(20, Reading("poison", "1-0:1.8.0", 1, 0, "kWh", NOW, NOW))

    def mq(m: Message) -> mqtt.MQTTMessage:
        x = mqtt.MQTTMessage(topic=m.topic.encode())
        x.payload = m.payload
        return x

    batch = [mq(msg(range(1, 11))), mq(msg([], extra=[poison])), mq(msg(range(11, 20)))]
    assert w._write([(0, x) for x in batch])
    s = report(ingestor(dsn_).db)
    assert (s["accepted"], s["malformed"], s["readings"]) == (19, 1, 19)


def test_verified_but_unstorable_records_are_malformed_not_a_wedged_batch(dsn: str) -> None:
    ing = ingestor(dsn)
    odd = [
        Reading("m\x00x", "1-0:1.8.0", 1, 0, "kWh", NOW, NOW),            # NUL in text
        Reading("m1", "1-0:1.8.0", 10**50, 0, "kWh", NOW, NOW),          # absurd mantissa
        Reading("m1", "1-0:1.8.0", 1, 10**6, "kWh", NOW, NOW),           # absurd exponent
        Reading("m1", "1-0:1.8.0", 1, 0, "kWh", 10**17, NOW),            # beyond year 9999
    ]
    bad = [Message(TOPIC, encode_envelope(GW, "e1", [StoredRecord(1, r)], NOW, KEY)) for r in odd]
    bad.append(Message(TOPIC, encode_envelope(GW, "e1", [StoredRecord(2**64, odd[0])], NOW, KEY)))
    ev = StoredRecord(3, Event("x", NOW, "s", None, "info", {1: b"\x00", "nan": float("nan"),
                                                             "z": "a\x00b"}))
    outs = ing.ingest([*bad, msg([1, 2], extra=[ev])], NOW)
    assert [o.verdict for o in outs] == ["malformed"] * 5 + ["ok"]
    s = report(ing.db)
    assert (s["malformed"], s["accepted"], s["events"]) == (5, 3, 1)

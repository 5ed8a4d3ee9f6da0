"""The outbox against a real SQLite file: seq uniqueness, eviction with gap records,
cursor atomicity, a full disk, a corrupt file."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest

from gateway.model import Event, Gap, Reading
from gateway.store import Store, StoreClosed, StoreError, StoreFull


def reading(i: int, meter: str = "m1") -> Reading:
    return Reading(meter, "1-0:1.8.0", 1000 + i, -3, "kWh", 1_700_000_000_000 + i, 1_700_000_000_100 + i,
                   (), "test")


def pad(n: int, seed: int) -> str:
    """Incompressible filler: chunk bodies are DEFLATEd, so a run of one letter would take
    almost no room and never fill a store."""
    return random.Random(seed).randbytes(n // 2).hex()


def test_seq_strictly_increasing_and_survives_reopen(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as s:
        epoch = s.epoch
        assert s.append([reading(i) for i in range(5)]) == [1, 2, 3, 4, 5]
        s.ack(1, 5)
        s.flush()
        assert s.stats().depth == 0
    with Store(path) as s:
        assert s.epoch == epoch
        # All earlier rows are gone (acked), yet numbering goes on: never reused.
        assert s.append([reading(9)]) == [6]
        assert "integrity ok" in s.open_report[0]


def test_new_database_gets_new_random_epoch(tmp_path):
    with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        assert a.epoch != b.epoch and len(a.epoch) == 16


def test_records_round_trip_and_fetch_limits(tmp_path):
    with Store(tmp_path / "s.db") as s:
        recs = [reading(1), Event("meter.crc_error", 5, "bus1", "m1", "warning", {"n": 3}), reading(2)]
        s.append(recs)
        got = s.read_records()
        assert [g.record for g in got] == recs
        assert [g.seq for g in got] == [1, 2, 3]
        assert [sr.seq for sr in s.read_records(1, 10)] == [2, 3]
        assert [sr.seq for sr in s.read_records(0, 2)] == [1, 2]
        # One chunk per run of one kind: reading / event / reading.
        assert [c[:4] for c in s.fetch_chunks(0, 10)] == [(1, 1, 0, 1), (2, 2, 1, 1), (3, 3, 0, 1)]
        assert [c[0] for c in s.fetch_chunks(1, 10)] == [2, 3]
        assert len(s.fetch_chunks(0, 10, max_bytes=1)) == 1  # at least one chunk even if larger
        assert len(s.fetch_chunks(0, 2)) == 2


def test_cursor_commits_with_readings(tmp_path):
    with Store(tmp_path / "s.db") as s:
        s.append([reading(1)], cursors={("m1", "profile"): 1_700_000_000})
        assert s.get_cursor("m1", "profile") == 1_700_000_000
        assert s.get_cursor("m2", "profile", "none") == "none"


def test_cursor_rolls_back_with_readings_when_refused(tmp_path):
    path = tmp_path / "s.db"
    with Store(path, max_page_count=20) as s:
        big = [Event("blob", 0, "t", detail={"x": pad(3000, i)}) for i in range(200)]
        with pytest.raises(StoreFull):
            s.append(big, cursors={("m1", "profile"): 42})
        assert s.get_cursor("m1", "profile") is None
        assert s.stats().full_errors >= 1


def test_cap_evicts_oldest_with_gap_record(tmp_path):
    # 2,000 such readings take ~14 KB in chunks (they took ~160 KB as one row each).
    with Store(tmp_path / "s.db", max_bytes=8 * 1024) as s:
        for i in range(100):
            s.append([reading(j) for j in range(i * 20, i * 20 + 20)])
        st = s.stats()
        assert st.bytes <= 8 * 1024
        assert st.evicted_records > 0 and st.gap_records > 0
        recs = s.read_records(limit=100000)
        gaps = [r.record for r in recs if isinstance(r.record, Gap)]
        assert gaps and all("cap" in g.reason for g in gaps)
        # Every seq up to last is either present or covered by a gap record.
        present = {r.seq for r in recs}
        covered = {q for g in gaps for q in range(g.first_seq, g.last_seq + 1)}
        assert set(range(1, st.last_seq + 1)) <= present | covered
        assert sum(g.count for g in gaps) == st.evicted_records


def test_max_rows_cap(tmp_path):
    with Store(tmp_path / "s.db", max_rows=100) as s:
        for i in range(30):
            s.append([reading(j) for j in range(10)])
        assert s.stats().depth <= 100


def test_disk_full_evicts_then_keeps_accepting(tmp_path):
    """SQLite's max_page_count stands in for a full filesystem: old unsent rows are evicted
    (with a gap record), committed data is never corrupted, and the store keeps working."""
    path = tmp_path / "s.db"
    with Store(path, max_page_count=64) as s:
        ok = refused = 0
        for i in range(200):
            try:
                s.append([Event("e", i, "t", detail={"pad": pad(400, i * 5 + j)})
                          for j in range(5)])
                ok += 1
            except StoreFull:
                refused += 1
        st = s.stats()
        assert st.full_errors >= 1
        assert st.gap_records >= 1
        assert ok > 100  # eviction made room again and again
        last = st.last_seq
    with Store(path) as s:  # reopens cleanly, integrity ok, numbering continues
        assert "integrity ok" in s.open_report[0]
        assert s.append([reading(0)]) == [last + 1]


def test_closed_store_refuses(tmp_path):
    s = Store(tmp_path / "s.db")
    s.close()
    with pytest.raises(StoreClosed):
        s.append([reading(0)])


def test_corrupt_file_is_moved_aside_and_reported(tmp_path):
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    with Store(path) as s:
        recs = s.read_records()
        assert recs and isinstance(recs[0].record, Event) and recs[0].record.kind == "store.recreated"
    assert any(p.name.startswith("s.db.corrupt-") for p in tmp_path.iterdir())


def _committed_until_killed(script: str, lines: int = 300) -> dict[int, int]:
    """Run a writer script printing "seq i" per committed record; SIGKILL it after `lines`
    lines; return {seq: i} of what it reported committed."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd())
    committed = {}
    try:
        for _ in range(lines):
            seq, i = map(int, proc.stdout.readline().split())
            committed[seq] = i
    finally:
        proc.kill()
        proc.wait(10)
    return committed


def test_sigkill_never_reuses_a_committed_seq(tmp_path):
    """A writer killed with SIGKILL mid-stream: every seq that was reported committed is in
    the file with its content, and the next seq is beyond all of them."""
    path = tmp_path / "s.db"
    script = textwrap.dedent(f"""
        import sys
        from gateway.store import Store
        from gateway.model import Event
        s = Store({str(path)!r})
        i = 0
        while True:
            seqs = s.append([Event("e", i, "t", detail={{"i": i}})])
            print(seqs[0], i, flush=True)
            i += 1
    """)
    committed = _committed_until_killed(script)
    with Store(path) as s:
        rows = {r.seq: r.record.detail["i"] for r in s.read_records(limit=10**6)}
        for seq, i in committed.items():
            assert rows[seq] == i
        assert s.append([reading(0)])[0] > max(committed)


def test_records_are_chunked_by_kind_and_size(tmp_path):
    with Store(tmp_path / "s.db", chunk_max_records=4) as s:
        ev = Event("meter.crc_error", 5, "bus1", "m1", "warning", {"n": 1})
        recs = [reading(i) for i in range(10)] + [ev, ev] + [reading(20)]
        assert s.append(recs) == list(range(1, 14))
        got = [(f, la, k, n) for f, la, k, n, _, _ in s.fetch_chunks(0, 100)]
        assert got == [(1, 4, 0, 4), (5, 8, 0, 4), (9, 10, 0, 2), (11, 12, 1, 2), (13, 13, 0, 1)]
        assert [r.record for r in s.read_records(limit=100)] == recs
        assert [r.seq for r in s.read_records(6, 3)] == [7, 8, 9]  # from inside a chunk
        assert [c[0] for c in s.fetch_chunks(0, 9)] == [1, 5]  # whole chunks within the limit
        assert s.stats().depth == 13


def test_ack_deletes_only_whole_chunks_inside_the_range(tmp_path):
    with Store(tmp_path / "s.db", chunk_max_records=4) as s:
        s.append([reading(i) for i in range(8)])  # chunks 1..4, 5..8
        s.ack(1, 6)  # cuts the second chunk: it stays (re-sent; the head-end dedups)
        s.flush()
        assert [r.seq for r in s.read_records()] == [5, 6, 7, 8]
        assert s.stats().depth == 4 and s.stats().acked_records == 4
        s.ack(5, 8)
        s.flush()
        assert s.stats().depth == 0 and s.stats().bytes == 0


def test_eviction_never_takes_gap_chunks(tmp_path):
    with Store(tmp_path / "s.db", max_rows=50, chunk_max_records=8) as s:
        for i in range(40):
            s.append([reading(j) for j in range(10)])
        recs = s.read_records(limit=10**6)
        gaps = [r.record for r in recs if isinstance(r.record, Gap)]
        st = s.stats()
        assert st.gap_records == len(gaps) >= 2  # every gap ever written is still there
        assert sum(g.count for g in gaps) == st.evicted_records
        present = {r.seq for r in recs}
        covered = {q for g in gaps for q in range(g.first_seq, g.last_seq + 1)}
        assert set(range(1, st.last_seq + 1)) <= present | covered
        assert st.depth == len(recs)


def test_unencodable_record_is_refused_with_its_cursors_only(tmp_path):
    with Store(tmp_path / "s.db") as s:
        bad = Reading("m1", "1-0:1.8.0", 1.5, -3, "kWh", 1, 2)  # a float mantissa
        f_bad = s.submit([bad], {("m1", "c"): 1})
        f_ok = s.submit([reading(1)], {("m2", "c"): 2})
        with pytest.raises(StoreError):
            f_bad.result(10)
        assert f_ok.result(10) == [1]
        assert s.get_cursor("m1", "c") is None and s.get_cursor("m2", "c") == 2
        assert [r.record for r in s.read_records()] == [reading(1)]


def test_schema_1_database_is_migrated_in_place(tmp_path):
    """A store written by the previous firmware (one row per record) opens with the same
    epoch, the same seqs and contents, its cursors, and numbering that goes on."""
    import sqlite3

    import cbor2

    path = tmp_path / "s.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL, "
                 "ts_ms INTEGER NOT NULL, payload BLOB NOT NULL)")
    conn.execute("CREATE TABLE cursors (meter_id TEXT NOT NULL, name TEXT NOT NULL, "
                 "value BLOB NOT NULL, updated_ms INTEGER NOT NULL, PRIMARY KEY (meter_id, name))")
    conn.executemany("INSERT INTO meta VALUES (?, ?)",
                     [("epoch", "00112233445566aa"), ("next_seq", "40"), ("created_ms", "1")])
    ev = Event("meter.crc_error", 5, "bus1", "m1", "warning", {"n": 3})
    old = {**{q: reading(q) for q in range(3, 20)}, 20: ev, 21: Gap(1, 2, 2, "cap", 9),
           **{q: reading(q) for q in range(25, 30)}}
    kinds = {Reading: 0, Event: 1, Gap: 2}
    conn.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?)",
                     [(q, kinds[type(r)], 7, cbor2.dumps(r.to_obj())) for q, r in old.items()])
    conn.execute("INSERT INTO cursors VALUES ('m1', 'profile', ?, 1)", (cbor2.dumps(42),))
    conn.execute("PRAGMA user_version=1")
    conn.close()
    with Store(path, chunk_max_records=8) as s:
        assert s.epoch == "00112233445566aa"
        assert any("migrated 24 records" in line for line in s.open_report)
        assert {r.seq: r.record for r in s.read_records(limit=1000)} == old
        assert s.stats().depth == len(old) and s.stats().oldest_seq == 3
        assert s.get_cursor("m1", "profile") == 42
        assert s.append([reading(0)]) == [40]
    with Store(path) as s:
        assert "integrity ok" in s.open_report[0] and s.stats().depth == len(old) + 1


def test_int_and_str_subclasses_are_stored_as_plain_values(tmp_path):
    """Codecs may hand over int subclasses (IntEnum, their own integer types): stored as
    the plain values, as CBOR always did."""
    import enum

    class Code(enum.IntEnum):
        X = 1234

    class Name(str):
        pass

    with Store(tmp_path / "s.db") as s:
        r = Reading(Name("m1"), "1-0:1.8.0", Code.X, -3, "kWh", Code.X, Code.X + 1, (), "b")
        assert s.append([r]) == [1]
        got = s.read_records()[0].record
        assert got == Reading("m1", "1-0:1.8.0", 1234, -3, "kWh", 1234, 1235, (), "b")
        assert type(got.mantissa) is int and type(got.meter_id) is str


def test_acks_merged_in_a_group_commit_never_cover_an_unacked_chunk(tmp_path):
    with Store(tmp_path / "s.db", chunk_max_records=4) as s:
        s.append([reading(i) for i in range(4)])                         # chunk 1..4
        s.append([Event("e", 1, "t")])                                   # chunk 5 (events)
        s.append([reading(i) for i in range(12)])                        # 6..9, 10..13, 14..17
        for first, last in ((1, 4), (10, 13), (6, 9), (14, 15)):        # 5 is never acked
            s.ack(first, last)
        s.flush()
        assert [r.seq for r in s.read_records()] == [5, 14, 15, 16, 17]
        assert s.stats().acked_records == 12


def test_ack_only_commits_restore_full_sync_and_never_lose_unacked_records(tmp_path):
    """Ack-only commits skip their own fsync; records stored around them stay durable (a
    SIGKILL between acks and appends loses no committed, unacknowledged record)."""
    with Store(tmp_path / "a.db", chunk_max_records=1) as s:
        s.append([reading(i) for i in range(4)])
        s.ack(1, 2)
        s.flush()
        assert s._wconn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
        assert [r.seq for r in s.read_records()] == [3, 4]
    path = tmp_path / "s.db"
    script = textwrap.dedent(f"""
        from gateway.store import Store
        from gateway.model import Event
        s = Store({str(path)!r}, chunk_max_records=1)
        i = 0
        while True:
            seq = s.append([Event("e", i, "t", detail={{"i": i}})])[0]
            if i % 2:
                s.ack(seq - 1, seq - 1)  # the previous one was "delivered"
            print(seq, i, flush=True)
            i += 1
    """)
    committed = _committed_until_killed(script)
    with Store(path) as s:
        rows = {r.seq: r.record.detail["i"] for r in s.read_records(limit=10**6)}
        for seq, i in committed.items():
            if i % 2 == 1 or seq == max(committed):  # never acked
                assert rows[seq] == i
            elif seq in rows:  # acked: gone, or kept if the kill beat the delete
                assert rows[seq] == i
        assert s.append([reading(0)])[0] > max(committed)

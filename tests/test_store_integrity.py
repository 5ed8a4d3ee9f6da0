"""Stored bodies carry checksums: bits flipped in the SQLite file itself are never signed and
sent as readings; their seq range goes up as a store_corruption gap. `gateway store verify`
names the bad ranges; a store moved aside at start says what it lost."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.model import Event, Gap, Reading, StoredRecord
from gateway.runtime import load_signing_key
from gateway.store import GAP_REASON_CORRUPT, Store
from gateway.storecheck import verify_store
from gateway.wire.envelope import decode_envelope, seal
from gateway.uplink.mqtt import Uplink
from tests.waiting import wait_for
from tools.bench.common import UplinkCfg
from tools.devpki import make_signing_key

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_704_067_200_000
N = 96  # 12 chunks of 8


def readings(n: int = N) -> list[Reading]:
    return [Reading(f"elec-{i % 7}", "1-0:1.8.0", 1_000_000 + i * 7919, -3, "kWh",
                    T0 + i * 900_000, T0 + i * 900_000 + 250, (), "test") for i in range(n)]


def make_store(path: Path, n: int = N) -> dict[int, Reading]:
    with Store(path, chunk_max_records=8) as s:
        seqs = s.append(readings(n), cursors={("elec-1", "profile"): 7})
    return dict(zip(seqs, readings(n)))


def chunk_rows(path: Path) -> list[tuple[int, int, bytes]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT first_seq, last_seq, body FROM outbox ORDER BY first_seq"
                            ).fetchall()
    finally:
        conn.close()


def flip_in_body(path: Path, chunk: int, byte: int, bit: int = 0) -> tuple[int, int]:
    """Flip one bit inside the stored bytes of the chunk-th body, in the file itself
    (no SQL): what an SD card does. Returns that chunk's seq range."""
    first, last, body = chunk_rows(path)[chunk]
    data = bytearray(path.read_bytes())
    at = data.find(body)
    assert at > 0 and data.find(body, at + 1) < 0
    data[at + byte % len(body)] ^= 1 << bit
    path.write_bytes(bytes(data))
    return first, last


def drain(store: Store, key, rounds: int = 200) -> list[StoredRecord]:
    """What the uplink does (fetch after the high-water mark, seal, ack), decoded again as
    the head-end would: every record that would have been signed and sent."""
    pub = key.public_key()
    out: list[StoredRecord] = []
    hwm = 0
    for _ in range(rounds):
        store.flush()
        chunks = store.fetch_chunks(hwm, 64)
        if not chunks:
            store.flush()  # a corrupt chunk found by the fetch is replaced by the writer
            if not store.fetch_chunks(hwm, 64):
                break
            continue
        env = decode_envelope(seal("gw-0001", store.epoch, T0, [
            (f, la, n, base, body) for f, la, _, n, base, body in chunks], key), {"*": pub})
        out += env.records
        hwm = chunks[-1][1]
        store.ack(chunks[0][0], hwm)
    return out


@pytest.fixture(scope="module")
def sign_key(tmp_path_factory):
    d = tmp_path_factory.mktemp("sign")
    make_signing_key(d / "s.key", d / "s.pub")
    return load_signing_key(str(d / "s.key"))


def test_a_flipped_body_is_never_sent_its_range_goes_up_as_a_gap(tmp_path, sign_key):
    path = tmp_path / "s.db"
    original = make_store(path)
    first, last = flip_in_body(path, chunk=3, byte=40)
    with Store(path, chunk_max_records=8) as s:
        assert "integrity ok" in s.open_report[0]  # SQLite itself sees nothing wrong
        sent = drain(s, sign_key)
        assert s.stats().corrupt_chunks == 1
    got = {sr.seq: sr.record for sr in sent}
    bad = set(range(first, last + 1))
    assert {q: r for q, r in got.items() if isinstance(r, Reading)} == \
        {q: r for q, r in original.items() if q not in bad}
    gaps = [r for r in got.values() if isinstance(r, Gap)]
    assert [(g.first_seq, g.last_seq, g.count, g.reason) for g in gaps] == \
        [(first, last, 8, GAP_REASON_CORRUPT)]
    ev = [r for r in got.values() if isinstance(r, Event) and r.kind == "store.corrupt"]
    assert len(ev) == 1 and ev[0].detail["first_seq"] == first and ev[0].detail["records"] == 8
    assert max(got) == N + 2  # the gap and the event took fresh seqs


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(100, 6 * 4096 - 1), bit=st.integers(0, 7))
def test_random_bit_flips_anywhere_in_the_file_never_become_a_signed_wrong_record(
        tmp_path_factory, sign_key, offset, bit):
    """The attack of the issue: one bit flipped anywhere in the file (past the 100-byte
    SQLite header). Whatever it hits, nothing that is sent differs from what was stored:
    a record is sent as it was, or its range is a store_corruption gap, or the file fails
    SQLite's check at start and is moved aside."""
    base = tmp_path_factory.getbasetemp() / "pristine.db"
    if not base.exists():
        make_store(base)
    original = {q: r for q, r in zip(range(1, N + 1), readings())}
    d = Path(tmp_path_factory.mktemp("flip"))
    path = d / "s.db"
    shutil.copy(base, path)
    data = bytearray(path.read_bytes())
    if offset >= len(data):
        return
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))
    report = verify_store(str(path))  # offline first: it never raises, it reports
    try:
        s = Store(path, chunk_max_records=8)
    except sqlite3.DatabaseError:
        return  # refused to open at all: nothing is sent (the runtime's start fails loudly)
    try:
        try:
            sent = drain(s, sign_key)
        except sqlite3.DatabaseError:
            return  # SQLite noticed on reading: nothing was sent from the damaged page
    finally:
        s.close()
    for sr in sent:
        if isinstance(sr.record, Reading):
            assert original.get(sr.seq) == sr.record, (offset, bit, sr)
    gapped = {q for sr in sent if isinstance(sr.record, Gap)
              for q in range(sr.record.first_seq, sr.record.last_seq + 1)}
    delivered = {sr.seq for sr in sent if isinstance(sr.record, Reading)}
    moved = any(p.name.startswith("s.db.corrupt-") for p in d.iterdir())
    assert moved or delivered | gapped >= set(original), (offset, bit)
    if gapped or moved:
        assert not report.sound, (offset, bit, report)  # verify saw what the gateway saw


def test_schema_2_store_gets_checksums_and_an_unreadable_body_becomes_a_gap(tmp_path,
                                                                            sign_key):
    path = tmp_path / "s.db"
    original = make_store(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("ALTER TABLE outbox DROP COLUMN crc")
    conn.execute("UPDATE outbox SET body=x'ff00' WHERE first_seq=9")  # seq 9..16 damaged
    conn.execute("PRAGMA user_version=2")
    conn.close()
    rep = verify_store(str(path))
    assert rep.schema == 2 and rep.bad_ranges() == [(9, 16, 8)] and rep.notes
    with Store(path, chunk_max_records=8) as s:
        assert any("checksums added to 12 chunks, 1 unreadable" in x for x in s.open_report)
        sent = drain(s, sign_key)
    got = {sr.seq: sr.record for sr in sent}
    assert all(got[q] == r for q, r in original.items() if not 9 <= q <= 16)
    assert [(r.first_seq, r.last_seq, r.reason) for r in got.values() if isinstance(r, Gap)] \
        == [(9, 16, GAP_REASON_CORRUPT)]
    assert verify_store(str(path)).sound


def test_real_uplink_never_signs_a_flipped_body(tmp_path, pki, broker, mqtt_client_factory):
    """The same through the real uplink and broker: what the head-end receives."""
    path = tmp_path / "s.db"
    original = make_store(path)
    first, last = flip_in_body(path, chunk=5, byte=17, bit=3)
    got: list[bytes] = []
    lock = threading.Lock()

    def on_message(_c, _u, msg) -> None:
        with lock:
            got.append(msg.payload)

    sub = mqtt_client_factory("headend", on_message=on_message)
    sub.subscribe([("meters/gw-0001/up/readings", 1), ("meters/gw-0001/up/events", 1)])
    key = load_signing_key(str(pki / "gateway-sign.key"))
    pub = serialization.load_pem_public_key((pki / "gateway-sign.pub").read_bytes())
    cfg = UplinkCfg(host=broker.host, port=broker.port, ca=str(pki / "ca.pem"),
                    cert=str(pki / "gateway.pem"), key=str(pki / "gateway.key"),
                    topic_prefix="meters", client_id="gw-0001")
    store = Store(path, chunk_max_records=8)
    up = Uplink(cfg, "gw-0001", store, key)
    try:
        up.start()
        assert wait_for(lambda: store.stats().depth == 0, 20), store.stats()
    finally:
        up.stop(drain_timeout=1.0)
        store.close()
    with lock:
        recs = {sr.seq: sr.record for p in got for sr in decode_envelope(p, {"*": pub}).records}
    assert {q: r for q, r in recs.items() if isinstance(r, Reading)} == \
        {q: r for q, r in original.items() if not first <= q <= last}
    assert any(isinstance(r, Gap) and r.reason == GAP_REASON_CORRUPT
               and (r.first_seq, r.last_seq) == (first, last) for r in recs.values())


# ------------------------------------------------------------------- gateway store verify

def _config(tmp_path: Path, store_path: Path, pki: Path) -> Path:
    cfg = {"gateway": {"id": "gw-0001"}, "store": {"path": str(store_path)},
           "uplink": {"host": "localhost", "ca": str(pki / "ca.pem"),
                      "cert": str(pki / "gateway.pem"), "key": str(pki / "gateway.key"),
                      "signing_key": str(pki / "gateway-sign.key")},
           "drivers": [{"type": "simulated", "name": "sim"}]}
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "store", "verify", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_store_verify_exit_codes_and_bad_ranges(tmp_path, pki):
    path = tmp_path / "s.db"
    make_store(path)
    cfg = _config(tmp_path, path, pki)
    # Sound, and beside a running gateway's open store (WAL: a read-only snapshot).
    with Store(path, chunk_max_records=8) as running:
        running.append(readings(5))
        r = _verify("-c", str(cfg))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "sound" in r.stdout and "NOT" not in r.stdout
        running.append(readings(3))  # the gateway goes on writing after the check
    flip_in_body(path, chunk=2, byte=9)
    flip_in_body(path, chunk=3, byte=30)
    flip_in_body(path, chunk=7, byte=3)
    r = _verify("-c", str(cfg))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "seq 17..32 (16 records)" in r.stdout and "seq 57..64 (8 records)" in r.stdout
    j = _verify("-c", str(cfg), "--json")
    doc = json.loads(j.stdout)
    assert j.returncode == 1 and not doc["sound"]
    assert [(b["first_seq"], b["last_seq"]) for b in doc["bad_ranges"]] == [(17, 32), (57, 64)]
    assert _verify().returncode == 2  # -c is required
    assert _verify("-c", str(tmp_path / "missing.yaml")).returncode == 2
    assert _verify("-c", str(_config(tmp_path, tmp_path / "none.db", pki))).returncode == 2
    assert not (tmp_path / "none.db").exists()  # read-only: verify never creates a store


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=3000))
def test_verify_reports_and_never_raises_on_random_files(tmp_path_factory, data):
    p = Path(tmp_path_factory.mktemp("rnd")) / "s.db"
    p.write_bytes(b"SQLite format 3\x00" + data if data[:1] == b"\x00" else data)
    rep = verify_store(str(p))
    assert rep.sound is False or rep.chunks == 0


def test_recreated_store_says_what_it_lost(tmp_path):
    """A file that fails SQLite's check at start is moved aside; the store.recreated event
    says how many unsent records, of which seq range and epoch, were in it."""
    path = tmp_path / "s.db"
    make_store(path)
    conn = sqlite3.connect(path)
    epoch = conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master "
                        "WHERE name='sqlite_autoindex_cursors_1'").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * 4096:(root - 1) * 4096 + 8] = b"\xff" * 8  # a damaged index page
    path.write_bytes(bytes(data))
    with Store(path) as s:
        assert s.epoch != epoch
        ev = s.read_records()[0].record
    assert ev.kind == "store.recreated"
    assert (ev.detail["lost_records"], ev.detail["lost_first_seq"], ev.detail["lost_last_seq"],
            ev.detail["lost_epoch"]) == (N, 1, N, epoch)
    assert ev.detail["moved_to"].startswith(str(path) + ".corrupt-")


def test_gateway_and_headend_account_for_a_flipped_chunk(tmp_path, pki, broker):
    """The real runtime on a store with a flipped bit, the real head-end: nothing malformed
    or forged arrives, and the lost range is a store_corruption gap record, not a hole."""
    from tests.gwproc import headend_summary, start_gateway, start_headend, write_config
    path = tmp_path / "store.db"
    make_store(path)
    flip_in_body(path, chunk=4, byte=22, bit=5)
    head = start_headend(pki, broker.port, tmp_path / "headend.log", "--until-idle", "3")
    assert head.wait_for_log("subscribed", 15), head.text()
    gw = start_gateway(write_config(tmp_path, pki, broker.port), tmp_path / "gw.log")
    assert gw.wait_for_log("uplink: connected", 15), gw.text()
    assert gw.wait_for_log("fails its checksum", 15), gw.text()
    assert gw.terminate() == 0, gw.text()
    summary = headend_summary(head)
    assert summary["gaps"] == 0 and summary["gap_records"] == 1, summary
    assert summary["bad_signatures"] == 0 and summary["conflicts"] == 0, summary
    assert summary.get("malformed", 0) == 0, summary
    assert summary["readings"] >= N - 8

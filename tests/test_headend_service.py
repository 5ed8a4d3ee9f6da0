"""`gateway-headend ingest` for real: the gateway, a TLS Mosquitto, N workers, PostgreSQL.

Everything runs as separate processes; the tests only start, kill and stop them, and check
the database against the gateway's own store (its last seq).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.headend.db import open_db
from gateway.headend.report import report
from gateway.store import Store
from tests.gwproc import Proc, start_gateway, write_config
from tests.headend_db import fresh_pg_db, needs_pg, pg_cluster  # noqa: F401 (fixture)
from tests.waiting import wait_for
from tools.pg import PgCluster

LOAD = [{"type": "simulated", "name": "sim", "meters": 200, "interval_s": 0.05}]


def start_worker(pki: Path, port: int, dsn: str, log: Path, *extra: str) -> Proc:
    return Proc([sys.executable, "-m", "gateway.headend", "ingest", "--db", dsn, "--host",
                 "localhost", "--port", str(port), "--pki", str(pki), *extra], log)


def last_seq(store: Path) -> int:
    with Store(store) as s:
        return s.stats().last_seq


def books(dsn: str) -> dict:
    db = open_db(dsn)
    try:
        db.connect()
        db.migrate()
        return report(db)
    except Exception:  # noqa: BLE001 - the database may be down in the outage test
        return {}
    finally:
        db.close()


def complete(dsn: str, n: int):
    """The report once it holds seqs 1..n of gw-0001, else None."""
    s = books(dsn)
    ep = next(iter(s.get("gateways", {}).get("gw-0001", {}).get("epochs", {}).values()), None)
    return s if ep and ep["last_seq"] == n and s["gaps"] == 0 and s["accepted"] >= n else None


def exactly_once(dsn: str, n: int) -> None:
    db = open_db(dsn)
    db.connect()
    try:
        (count, lo, hi), = db.all("SELECT count(*), min(seq), max(seq) FROM records")
        assert (count, lo, hi) == (n, 1, n)
        assert db.all("SELECT first_seq, last_seq FROM seq_ranges") == [(1, n)]
        (readings,), = db.all("SELECT count(*) FROM readings")
        (distinct,), = db.all("SELECT count(*) FROM (SELECT DISTINCT epoch, seq FROM readings) x")
        assert readings == distinct
        assert db.all("SELECT count(*) FROM conflicts") == [(0,)]
    finally:
        db.close()


@needs_pg
def test_two_workers_one_killed_and_restarted_every_record_exactly_once(
        tmp_path, pki, broker, pg_cluster):  # noqa: F811
    dsn = fresh_pg_db(pg_cluster)
    share = ("--share", "ingest")
    a = start_worker(pki, broker.port, dsn, tmp_path / "a1.log", "--client-id", "ingest-a", *share)
    b = start_worker(pki, broker.port, dsn, tmp_path / "b.log", "--client-id", "ingest-b", *share)
    assert a.wait_for_log("subscribed $share/ingest/meters/+/up/#"), a.text()
    assert b.wait_for_log("subscribed $share/ingest/"), b.text()
    gw = start_gateway(write_config(tmp_path, pki, broker.port, drivers=LOAD), tmp_path / "gw.log")
    try:
        assert gw.wait_for_log("uplink: connected", 15), gw.text()
        time.sleep(2.5)
        # Hold the workers mid-transaction (records written, counters not yet), then kill a
        # mid-stream: its transaction rolls back, its unacknowledged messages wait for it.
        import psycopg
        with psycopg.connect(dsn) as hold:
            hold.execute("LOCK TABLE counters IN EXCLUSIVE MODE")
            assert wait_for(lambda: hold.execute(
                "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted").fetchone()[0] >= 2,
                timeout=10), "both workers are held inside a transaction"
            time.sleep(0.3)
            a.p.send_signal(signal.SIGKILL)
            a.p.wait(10)
            time.sleep(0.5)
        time.sleep(1.0)
        # the supervisor brings it back with the same client id: its session is redelivered
        a = start_worker(pki, broker.port, dsn, tmp_path / "a2.log", "--client-id", "ingest-a",
                         *share)
        assert a.wait_for_log("session present: True"), a.text()
        time.sleep(1.5)
    finally:
        assert gw.terminate() == 0, gw.text()
    n = last_seq(tmp_path / "store.db")
    s = wait_for(lambda: complete(dsn, n), timeout=60, step=0.5)
    assert s, (books(dsn), a.text()[-2000:], b.text()[-2000:])
    assert (s["gaps"], s["conflicts"], s["bad_signatures"], s["malformed"]) == (0, 0, 0, 0), s
    assert s["accepted"] == n
    exactly_once(dsn, n)
    for w in (a, b):
        assert w.terminate() == 0, w.text()
    # both took part: the broker shared the stream between the members of the group
    assert "committed" in (tmp_path / "a1.log").read_text() and "committed" in b.text()
    print("duplicates after the kill:", s["duplicates"])


def test_embedded_sqlite_replay_after_restart_bad_input_and_report_cli(
        tmp_path, pki, broker, mqtt_client_factory):
    dsn = f"sqlite:///{tmp_path / 'headend.db'}"
    captured: list[tuple[str, bytes]] = []
    spy = mqtt_client_factory("headend", client_id="spy",
                              on_message=lambda _c, _u, m: captured.append((m.topic, m.payload)))
    spy.subscribe("meters/+/up/#", qos=1)
    w = start_worker(pki, broker.port, dsn, tmp_path / "w1.log", "--client-id", "solo",
                     "--replay-window", "1")
    assert w.wait_for_log("subscribed meters/+/up/#"), w.text()
    gw = start_gateway(write_config(tmp_path, pki, broker.port), tmp_path / "gw.log")
    assert gw.wait_for_log("uplink: connected", 15), gw.text()
    time.sleep(1.5)
    assert gw.terminate() == 0, gw.text()
    n = last_seq(tmp_path / "store.db")
    assert wait_for(lambda: complete(dsn, n), timeout=30, step=0.3), books(dsn)
    assert w.terminate() == 0, w.text()
    assert captured
    # a new worker process (nothing in memory) on the same books
    w = start_worker(pki, broker.port, dsn, tmp_path / "w2.log", "--client-id", "solo",
                     "--replay-window", "1")
    assert w.wait_for_log("subscribed"), w.text()
    time.sleep(1.2)  # the captured envelope is now older than the 1 s replay window
    attacker = mqtt_client_factory("gateway", client_id="attacker")
    topic, payload = captured[0]
    attacker.publish(topic, payload, qos=1).wait_for_publish(5)  # replay
    attacker.publish(topic, b"\x00garbage", qos=1).wait_for_publish(5)  # malformed
    tampered = bytearray(payload)
    tampered[-10] ^= 1  # inside the signature: forged
    attacker.publish(topic, bytes(tampered), qos=1).wait_for_publish(5)
    attacker.publish(topic, b"\xff" * (5 * 2**20), qos=1).wait_for_publish(10)  # oversized
    s = wait_for(lambda: (lambda r: r if r.get("replays") == 1 and r.get("malformed") == 2
                          and r.get("bad_signatures") == 1 else None)(books(dsn)),
                 timeout=20, step=0.3, context=lambda: (books(dsn), w.text()[-2000:]))
    assert (s["accepted"], s["gaps"], s["oversized"]) == (n, 0, 1)
    # all four came from one sender within a minute: logged once, the rest counted
    assert w.wait_for_log("REPLAY"), w.text()
    assert w.text().count("headend: meters/gw-0001/") == 1, w.text()
    assert w.terminate() == 0, w.text()
    r = subprocess.run([sys.executable, "-m", "gateway.headend", "report", "--db", dsn, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["accepted"] == n and out["replays"] == 1
    assert out["gateways"]["gw-0001"]["epochs"]
    r = subprocess.run([sys.executable, "-m", "gateway.headend", "report", "--db", dsn,
                        "--gateway", "gw-0001"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "gw-0001" in r.stdout, r.stderr


@needs_pg
def test_database_stopped_20s_and_restarted_nothing_lost(tmp_path, pki, broker):
    cluster = PgCluster().start()
    try:
        dsn = cluster.dsn
        w = start_worker(pki, broker.port, dsn, tmp_path / "w.log", "--client-id", "outage",
                         "-q")
        assert w.wait_for_log("subscribed"), w.text()
        gw = start_gateway(write_config(tmp_path, pki, broker.port), tmp_path / "gw.log")
        assert gw.wait_for_log("uplink: connected", 15), gw.text()
        time.sleep(1.5)
        cluster.stop()
        assert w.wait_for_log("database error", 15), w.text()
        time.sleep(20)
        cluster.start()
        time.sleep(1.5)
        assert gw.terminate() == 0, gw.text()
        n = last_seq(tmp_path / "store.db")
        s = wait_for(lambda: complete(dsn, n), timeout=60, step=0.5)
        assert s, (books(dsn), w.text()[-3000:])
        assert (s["gaps"], s["conflicts"], s["accepted"]) == (0, 0, n)
        exactly_once(dsn, n)
        assert w.p.poll() is None, "the worker survived the outage"
        assert w.terminate() == 0, w.text()
    finally:
        cluster.close()


@needs_pg
def test_messages_held_for_a_worker_that_does_not_return_until_it_retires(
        tmp_path, pki, broker, pg_cluster):  # noqa: F811
    """Mosquitto keeps giving an offline member of a share group its share, held in its
    session: the books show them missing until that id comes back (here with --retire,
    which drains the session and leaves the group, so later traffic all goes to the other)."""
    dsn = fresh_pg_db(pg_cluster)
    share = ("--share", "g2", "-q")
    a = start_worker(pki, broker.port, dsn, tmp_path / "a.log", "--client-id", "g2-a", *share)
    b = start_worker(pki, broker.port, dsn, tmp_path / "b.log", "--client-id", "g2-b", *share)
    assert a.wait_for_log("subscribed") and b.wait_for_log("subscribed"), a.text() + b.text()
    assert a.terminate() == 0  # a clean stop: the session (and its subscription) stays
    cfg = write_config(tmp_path, pki, broker.port)
    gw = start_gateway(cfg, tmp_path / "gw1.log")
    assert gw.wait_for_log("uplink: connected", 15), gw.text()
    time.sleep(2)
    assert gw.terminate() == 0, gw.text()
    n = last_seq(tmp_path / "store.db")
    time.sleep(2)
    held = books(dsn)
    ep = next(iter(held["gateways"]["gw-0001"]["epochs"].values()))
    assert held["accepted"] < n and ep["missing_ranges"], held  # a's share waits for a
    r = start_worker(pki, broker.port, dsn, tmp_path / "a-retire.log", "--client-id", "g2-a",
                     "--retire", *share)
    assert r.p.wait(60) == 0, r.text()
    assert "left the subscriptions" in r.text()
    assert complete(dsn, n), books(dsn)
    gw = start_gateway(cfg, tmp_path / "gw2.log")  # later traffic: all of it reaches b
    assert gw.wait_for_log("uplink: connected", 15), gw.text()
    time.sleep(1.5)
    assert gw.terminate() == 0, gw.text()
    n2 = last_seq(tmp_path / "store.db")
    assert n2 > n
    assert wait_for(lambda: complete(dsn, n2), timeout=30, step=0.3), books(dsn)
    exactly_once(dsn, n2)
    assert b.terminate() == 0, b.text()

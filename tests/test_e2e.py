"""The whole pipeline for real: simulated meters -> store -> mTLS Mosquitto -> head-end verifier.

Everything runs as separate processes, as in the field; the only thing the tests control is
when things start, stop and die.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import cbor2

from gateway.store import Store, StoreStats
from tests.gwproc import headend_summary, start_gateway, start_headend, write_config
from tests.waiting import wait_for

# The tests are paced by what they can observe (a log line, the store's sequence numbers,
# a captured message), not by fixed sleeps: a slow CI machine only makes them slower.
# The sleeps left are the subject of a test (a kill at a random moment, a replay window).
SUBSCRIBED = "subscription confirmed"


def store_stats(path: Path) -> StoreStats:
    with Store(path) as s:
        return s.stats()


def store_state(path: Path) -> tuple[int, int]:
    st = store_stats(path)
    return st.last_seq, st.depth


def wait_delivered_past(path: Path, seq: int, timeout: float = 30.0) -> None:
    """Wait until the broker has acknowledged every record up to ``seq``."""
    wait_for(lambda: (lambda st: st.oldest_seq is None or st.oldest_seq > seq)(store_stats(path)),
             timeout, 0.2, context=lambda: store_stats(path))


def wait_stored(path: Path, n: int, timeout: float = 30.0) -> None:
    """Wait until the gateway has given out ``n`` sequence numbers."""
    wait_for(lambda: store_stats(path).last_seq >= n, timeout, 0.2,
             context=lambda: store_stats(path))


def test_readings_arrive_complete_and_verified(tmp_path, pki, broker):
    head = start_headend(pki, broker.port, tmp_path / "headend.log", "--until-idle", "3")
    assert head.wait_for_log(SUBSCRIBED, 15), head.text()
    cfg = write_config(tmp_path, pki, broker.port)
    gw = start_gateway(cfg, tmp_path / "gw.log")
    assert gw.wait_for_log("uplink: connected", 15), gw.text()
    wait_stored(tmp_path / "store.db", 50 * 12)  # 10+ polls of 50 meters, and their events
    assert gw.terminate() == 0, gw.text()
    assert "stopped cleanly" in gw.text()
    summary = headend_summary(head)
    last_seq, depth = store_state(tmp_path / "store.db")
    assert depth == 0, "a clean stop drains what the broker acknowledged"
    assert summary["accepted"] == last_seq
    assert summary["readings"] >= 50 * 10
    assert summary["gaps"] == 0 and summary["bad_signatures"] == 0 and summary["conflicts"] == 0
    assert list(summary["gateways"]) == ["gw-0001"]


def test_sigkill_under_load_never_loses_or_reuses(tmp_path, pki, broker):
    head = start_headend(pki, broker.port, tmp_path / "headend.log", "--until-idle", "4")
    cfg = write_config(tmp_path, pki, broker.port,
                       drivers=[{"type": "simulated", "name": "sim", "meters": 200, "interval_s": 0.05}])
    rng = random.Random(7)
    for i in range(12):
        gw = start_gateway(cfg, tmp_path / f"gw{i}.log")
        assert gw.wait_for_log("running", 15), gw.text()
        time.sleep(rng.uniform(0.05, 0.8))  # the subject: a kill at a random moment
        gw.kill()
    backlog_top, _ = store_state(tmp_path / "store.db")
    gw = start_gateway(cfg, tmp_path / "gw-final.log")
    assert gw.wait_for_log("uplink: connected", 15)
    wait_delivered_past(tmp_path / "store.db", backlog_top)
    assert gw.terminate() == 0, gw.text()
    summary = headend_summary(head)
    last_seq, depth = store_state(tmp_path / "store.db")
    assert depth == 0
    assert summary["gaps"] == 0, summary
    assert summary["conflicts"] == 0, summary
    assert summary["accepted"] == last_seq, summary
    assert summary["bad_signatures"] == 0


def test_broker_outage_backlog_arrives_in_order(tmp_path, pki, broker, mqtt_client_factory):
    from gateway.wire.envelope import decode_envelope
    from cryptography.hazmat.primitives import serialization
    pub = serialization.load_pem_public_key((pki / "gateway-sign.pub").read_bytes())
    seen: list[tuple[str, int]] = []

    def on_message(client, userdata, msg):
        if "/up/" in msg.topic:
            env = decode_envelope(msg.payload, {"gw-0001": pub})
            seen.append((msg.topic, env.first_seq))

    mqtt_client_factory("headend", client_id="order-check", clean_session=False,
                        on_message=on_message).subscribe("meters/+/up/#", qos=1)
    head = start_headend(pki, broker.port, tmp_path / "headend.log", "--until-idle", "6")
    cfg = write_config(tmp_path, pki, broker.port)
    gw = start_gateway(cfg, tmp_path / "gw.log")
    assert gw.wait_for_log("uplink: connected", 15)
    wait_for(lambda: seen, 15)
    broker.stop()
    assert gw.wait_for_log("uplink: disconnected", 15), gw.text()
    first_top, _ = store_state(tmp_path / "store.db")
    wait_stored(tmp_path / "store.db", first_top + 200)  # readings pile up in the store
    assert store_stats(tmp_path / "store.db").depth > 0
    backlog_top, _ = store_state(tmp_path / "store.db")
    broker.restart()
    wait_delivered_past(tmp_path / "store.db", backlog_top)
    assert gw.terminate() == 0
    assert "disconnected" in gw.text()
    summary = headend_summary(head)
    last_seq, depth = store_state(tmp_path / "store.db")
    assert depth == 0
    assert summary["accepted"] == last_seq and summary["gaps"] == 0
    for topic in {t for t, _ in seen}:
        firsts = [f for t, f in seen if t == topic]
        # re-sends after the reconnect may repeat a range, but never go backwards past it
        fresh = []
        hi = 0
        for f in firsts:
            if f > hi:
                fresh.append(f)
                hi = f
        assert fresh == sorted(set(firsts)), "backlog delivered out of order"


def test_tiny_cap_gap_records_are_accounted(tmp_path, pki, broker):
    # The head-end's persistent session exists before the outage, so the broker keeps what
    # arrives for it while it reconnects.
    head = start_headend(pki, broker.port, tmp_path / "headend.log", "--until-idle", "12")
    assert head.wait_for_log(SUBSCRIBED, 15), head.text()
    broker.stop()  # nobody to deliver to: the store fills past its cap
    cfg = write_config(tmp_path, pki, broker.port, store={"max_bytes": "64KiB"},
                       drivers=[{"type": "simulated", "name": "sim", "meters": 200, "interval_s": 0.05}])
    gw = start_gateway(cfg, tmp_path / "gw.log")
    assert gw.wait_for_log("evicted", 20), gw.text()
    backlog_top, _ = store_state(tmp_path / "store.db")
    broker.restart()
    assert gw.wait_for_log("uplink: connected", 15), gw.text()
    wait_delivered_past(tmp_path / "store.db", backlog_top)
    assert gw.terminate() == 0
    summary = headend_summary(head)
    assert summary["gap_records"] >= 1, summary
    assert summary["gaps"] == 0, summary
    assert summary["bad_signatures"] == 0
    last_seq, depth = store_state(tmp_path / "store.db")
    assert depth == 0 and summary["gateways"]["gw-0001"]["epochs"]


def test_wrong_ca_fails_with_clear_error_not_a_hang(tmp_path, pki, broker):
    from tools.devpki import make_ca
    other_ca, _ = make_ca(tmp_path / "otherca")
    cfg = write_config(tmp_path, pki, broker.port, uplink={"ca": str(other_ca)})
    gw = start_gateway(cfg, tmp_path / "gw.log")
    try:
        assert gw.wait_for_log("not trusted", 10), gw.text()
        assert "check uplink.ca" in gw.text()
        assert gw.p.poll() is None, "the runtime keeps collecting readings while it cannot deliver"
    finally:
        gw.terminate()


def test_tampered_and_replayed_messages_rejected(tmp_path, pki, broker, mqtt_client_factory):
    captured: list[tuple[str, bytes]] = []
    sniffer = mqtt_client_factory("headend", client_id="sniffer")
    sniffer.on_message = lambda c, u, m: captured.append((m.topic, m.payload))
    sniffer.subscribe("meters/+/up/readings", qos=1)
    head = start_headend(pki, broker.port, tmp_path / "headend.log", "--until-idle", "3",
                         "--replay-window", "1")
    cfg = write_config(tmp_path, pki, broker.port)
    gw = start_gateway(cfg, tmp_path / "gw.log")
    assert gw.wait_for_log("uplink: connected", 15)
    wait_for(lambda: captured, 15)
    assert gw.terminate() == 0
    assert captured
    topic, payload = captured[0]
    time.sleep(1.5)  # the subject: now outside the 1 s replay window
    attacker = mqtt_client_factory("gateway", client_id="attacker")
    attacker.publish(topic, payload, qos=1).wait_for_publish(5)   # replay
    tampered = bytearray(payload)
    tampered[len(tampered) // 2] ^= 0x01
    attacker.publish(topic, bytes(tampered), qos=1).wait_for_publish(5)
    attacker.publish(topic, cbor2.dumps(["not", "an", "envelope"]), qos=1).wait_for_publish(5)
    summary = headend_summary(head)
    assert summary["replays"] == 1, summary
    assert summary["bad_signatures"] >= 1 and summary["malformed"] >= 1, summary
    assert summary["gaps"] == 0 and summary["conflicts"] == 0


def _mount_tmpfs(path: Path, size: str) -> bool:
    import subprocess
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def test_full_filesystem_keeps_runtime_running_and_accounts_loss(tmp_path, pki, broker):
    """The store on a real, tiny filesystem that fills up while the broker is away: the
    runtime evicts the oldest unsent records with gap records (or refuses new ones with a
    counted error), never crashes, and delivers everything it kept once the broker is back."""
    import subprocess
    import pytest
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        head = start_headend(pki, broker.port, tmp_path / "headend.log", "--until-idle", "12")
        assert head.wait_for_log(SUBSCRIBED, 15), head.text()
        broker.stop()
        cfg = write_config(tmp_path, pki, broker.port, store={"path": str(disk / "store.db")},
                           drivers=[{"type": "simulated", "name": "sim", "meters": 300,
                                     "interval_s": 0.05}])
        gw = start_gateway(cfg, tmp_path / "gw.log")
        assert gw.wait_for_log("storage full", 30), gw.text()[-3000:]
        time.sleep(1)  # the subject: the runtime lives on with its disk full
        assert gw.p.poll() is None, "the runtime must survive a full disk"
        backlog_top, _ = store_state(disk / "store.db")
        broker.restart()
        assert gw.wait_for_log("uplink: connected", 15)
        wait_delivered_past(disk / "store.db", backlog_top)
        assert gw.terminate() == 0, gw.text()[-3000:]
        summary = headend_summary(head)
        assert summary["gaps"] == 0, summary
        assert summary["gap_records"] >= 1
        assert summary["bad_signatures"] == 0 and summary["conflicts"] == 0
        with Store(disk / "store.db") as s:
            assert "integrity ok" in s.open_report[0]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)

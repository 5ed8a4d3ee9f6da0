"""The uplink thread runs paho's network loop itself: it must wake at once for new records
(the doorbell), keep the window full in bursts, hand acks to the store, and stop promptly."""

from __future__ import annotations

import select
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from gateway.model import Reading
from gateway.runtime import load_signing_key
from gateway.store import Store
from gateway.wire.envelope import decode_envelope
from gateway.uplink.mqtt import Doorbell, Uplink
from gateway.uplink.status import verify_status
from tools.bench.common import UplinkCfg
from tests.waiting import wait_for as _wait

T0 = 1_704_067_200_000


def _readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading(f"m{i % 50:03d}", "1-0:1.8.0", 1000 + i, 0, "Wh", T0 + (i // 50) * 900_000,
                    T0 + (i // 50) * 900_000 + 250, (), "sim") for i in range(start, start + n)]


def _readable(bell: Doorbell, timeout: float = 0.0) -> bool:
    return bool(select.select([bell], [], [], timeout)[0])


def test_doorbell_wakes_a_select_and_never_blocks_the_ringer() -> None:
    bell = Doorbell()
    try:
        assert not _readable(bell)
        for _ in range(10_000):  # more rings than the socket buffer holds: never blocks
            bell.set()
        assert _readable(bell)
        bell.clear()
        assert not _readable(bell)
        rang = threading.Timer(0.05, bell.set)
        rang.start()
        assert _readable(bell, 5.0)  # another thread's ring ends a sleeping select
        rang.join()
        bell.clear()
        # A ring racing a clear() is either drained (its commit is then read after the
        # clear) or left for the next select(); later rings always wake the select.
        racer = threading.Thread(target=lambda: [bell.set() for _ in range(2000)])
        racer.start()
        for _ in range(200):
            bell.clear()
        racer.join()
        bell.clear()
        bell.set()
        assert _readable(bell)
    finally:
        bell.close()
    bell.set()  # ringing a closed bell (the uplink has stopped) is harmless


def _settings(broker, pki: Path, prefix: str, **kw) -> UplinkCfg:
    return UplinkCfg(host=broker.host, port=broker.port, ca=str(pki / "ca.pem"),
                     cert=str(pki / "gateway.pem"), key=str(pki / "gateway.key"),
                     topic_prefix=prefix, client_id="gw-0001", **kw)


def test_uplink_sends_bursts_wakes_for_new_records_and_stops_promptly(
        broker, pki: Path, tmp_path: Path, mqtt_client_factory) -> None:
    got: list[tuple[str, bytes, bool]] = []
    lock = threading.Lock()

    def on_message(_c, _u, msg) -> None:
        with lock:
            got.append((msg.topic, msg.payload, msg.retain))

    sub = mqtt_client_factory("headend", on_message=on_message)
    sub.subscribe("t/#", qos=1)
    time.sleep(0.2)
    key = load_signing_key(str(pki / "gateway-sign.key"))
    pub = serialization.load_pem_public_key((pki / "gateway-sign.pub").read_bytes())
    store = Store(tmp_path / "store.db", chunk_max_records=10)
    # 4-message window, 10 records a message: 300 records need 30 messages, 8 windows.
    up = Uplink(_settings(broker, pki, "t", inflight=4, batch_max_records=10), "gw-0001",
                store, key)
    try:
        store.append(_readings(300))
        up.start()
        assert _wait(lambda: store.stats().depth == 0, 20), up.state
        assert up.state.messages_acked == 30 and up.state.records_acked == 300
        # The uplink now sleeps in select(); a new commit must wake it at once, not after
        # its 1 s select timeout.
        time.sleep(0.3)
        t0 = time.monotonic()
        store.append(_readings(5, 300))
        assert _wait(lambda: up.state.records_acked == 305, 5)
        assert time.monotonic() - t0 < 0.9
        t0 = time.monotonic()
    finally:
        up.stop(drain_timeout=2.0)
        stopped = time.monotonic() - t0
        store.close()
    assert stopped < 2.0  # stop() rang the doorbell: no wait for a select timeout
    assert _wait(lambda: any(b'"offline"' in p for t, p, _ in got if t.endswith("/status")), 5)
    with lock:
        envs = [decode_envelope(p, {"*": pub}) for t, p, _ in got
                if t == "t/gw-0001/up/readings"]
        status = [verify_status(p, {"gw-0001": pub}, "gw-0001") for t, p, _ in got
                  if t == "t/gw-0001/status"]  # birth and goodbye are signed
    seqs = [sr.seq for e in envs for sr in e.records]
    assert seqs == list(range(1, 306))  # every record once, in order
    assert all(len(e.records) <= 10 for e in envs)
    assert [s["state"] for s in status] == ["online", "offline"]
    assert status[1]["reason"] == "shutdown"


def test_idle_uplink_keeps_its_connection_alive_with_pings(broker, pki: Path,
                                                           tmp_path: Path) -> None:
    """paho's keepalive runs in our loop now (loop_misc): an idle uplink must still ping,
    or the broker drops it after 1.5 x keepalive and every reconnect costs a handshake."""
    key = load_signing_key(str(pki / "gateway-sign.key"))
    store = Store(tmp_path / "store.db")
    up = Uplink(_settings(broker, pki, "k", keepalive_s=1), "gw-0001", store, key)
    try:
        up.start()
        assert _wait(lambda: up.state.connected, 10)
        # Idle well past 1.5 x keepalive (mosquitto checks keepalives only every few
        # seconds: measured, an uplink that never pings is dropped after ~6 s here).
        time.sleep(7.5)
        assert up.state.connected and up.state.connect_attempts == 1, up.state
        store.append(_readings(3))
        assert _wait(lambda: up.state.records_acked == 3, 5)
        assert up.state.connect_attempts == 1
    finally:
        up.stop(drain_timeout=1.0)
        store.close()


def test_a_client_certificate_the_broker_refuses_is_named_not_a_hang(broker, pki: Path,
                                                                     tmp_path: Path) -> None:
    """TLS 1.3 finishes the client's side of the handshake before the broker judges our
    certificate: the refusal arrives as a closed connection, and the error says what to
    check instead of waiting 15 s for a CONNACK."""
    from tools.devpki import make_pki
    other = tmp_path / "other-pki"
    make_pki(other)  # a gateway certificate from a CA the broker does not trust
    key = load_signing_key(str(pki / "gateway-sign.key"))
    store = Store(tmp_path / "store.db")
    cfg = UplinkCfg(host=broker.host, port=broker.port, ca=str(pki / "ca.pem"),
                    cert=str(other / "gateway.pem"), key=str(other / "gateway.key"),
                    topic_prefix="x", client_id="gw-0001", reconnect_min_s=5.0,
                    reconnect_max_s=5.0)
    up = Uplink(cfg, "gw-0001", store, key)
    t0 = time.monotonic()
    try:
        up.start()
        assert _wait(lambda: up.state.connect_failures >= 1, 10)
        assert time.monotonic() - t0 < 5  # not the 15 s CONNACK timeout
        err = up.state.last_error or ""
        assert "certificate" in err and f"{broker.host}:{broker.port}" in err, err
        assert not up.state.connected
    finally:
        up.stop(drain_timeout=0.5)
        store.close()

"""After a broker outage the backlog must start moving within seconds of the broker's return,
even when the reconnect backoff has grown to minutes: a cheap TCP probe notices the return
while the expensive TLS connect keeps backing off. (The one slow test: a 60 s outage.)"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from gateway.model import Reading
from gateway.runtime import load_signing_key
from gateway.store import Store
from gateway.uplink.mqtt import ConnectFailed, tcp_down, tcp_probe, unreachable
from gateway.uplink.mqtt import Uplink
from tests.waiting import wait_for
from tools.bench.common import UplinkCfg
from tools.broker import free_port

T0 = 1_704_067_200_000
OUTAGE_S = 60


def _readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading(f"m{i % 20:03d}", "1-0:1.8.0", 1000 + i, 0, "Wh", T0 + i * 1000,
                    T0 + i * 1000 + 250, (), "sim") for i in range(start, start + n)]


def test_probe_tells_unreachable_from_refused_by_tls() -> None:
    assert not tcp_probe("127.0.0.1", free_port())
    assert unreachable(ConnectionRefusedError()) and unreachable(TimeoutError())
    assert tcp_down(ConnectionRefusedError()) and not tcp_down(TimeoutError())
    import ssl
    assert not unreachable(ssl.SSLError("certificate unknown"))
    assert not unreachable(ConnectionResetError())  # TCP got through: plain backoff
    assert ConnectFailed("x").reachable and not ConnectFailed("x", reachable=False).reachable


def test_a_port_that_always_answers_keeps_the_backoff(pki: Path, tmp_path: Path) -> None:
    """A broker that accepts TCP but hangs in TLS (a timeout, not a refusal) must not be
    hit with a TLS handshake every probe: only a port that was down and came back cuts
    the wait short."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        cfg = UplinkCfg(host="127.0.0.1", port=srv.getsockname()[1], ca=str(pki / "ca.pem"),
                        cert=str(pki / "gateway.pem"), key=str(pki / "gateway.key"),
                        topic_prefix="meters", client_id="gw-0001")
        store = Store(tmp_path / "store.db")
        try:
            up = Uplink(cfg, "gw-0001", store, load_signing_key(str(pki / "gateway-sign.key")))
            up._wait_probing(4.5, seen_down=False)  # probes answer all along: waits it out
            assert up.state.probe_wakeups == 0
            up._wait_probing(60.0, seen_down=True)  # down before, answers now: at once
            assert up.state.probe_wakeups == 1
        finally:
            store.close()


def test_backlog_moves_within_seconds_of_the_broker_returning_after_60_s(
        broker, pki: Path, tmp_path: Path) -> None:
    # Backoff of 100-200 s between TLS attempts: without the probe the first reconnect
    # after the broker's return would come 40 s or more after it.
    cfg = UplinkCfg(host=broker.host, port=broker.port, ca=str(pki / "ca.pem"),
                    cert=str(pki / "gateway.pem"), key=str(pki / "gateway.key"),
                    topic_prefix="meters", client_id="gw-0001",
                    reconnect_min_s=200.0, reconnect_max_s=200.0)
    key = load_signing_key(str(pki / "gateway-sign.key"))
    store = Store(tmp_path / "store.db")
    up = Uplink(cfg, "gw-0001", store, key)
    try:
        up.start()
        store.append(_readings(50))
        assert wait_for(lambda: up.state.records_acked == 50, 20), up.state
        broker.stop()
        assert wait_for(lambda: up.state.connect_failures >= 1, 20), up.state
        store.append(_readings(500, 50))  # the backlog of the outage
        time.sleep(OUTAGE_S)
        assert up.state.connect_attempts == 2, up.state  # no TLS retries while it was down
        broker.restart()
        # Bounded wait, far below the 100 s the backoff alone would take.
        assert wait_for(lambda: up.state.records_acked == 550, 15), up.state
        assert up.state.probe_wakeups == 1 and up.state.connect_attempts == 3, up.state
    finally:
        up.stop(drain_timeout=1.0)
        store.close()

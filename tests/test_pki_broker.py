"""Dev PKI + mutual-TLS broker against a real mosquitto: who gets in, who does not."""

from __future__ import annotations

import os
import queue
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tools import broker as broker_mod
from tools.broker import (Broker, client_tls_context, connect_client, free_port, probe_context,
                          tls_ready)
from tools.devpki import issue_client_cert, make_ca, make_pki

WAIT = 10.0  # upper bound for every wait in this file
REPO = Path(__file__).resolve().parents[1]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(path: Path) -> str:
    return _cert(path).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _attempt(b: Broker, ctx: ssl.SSLContext, timeout: float = WAIT) -> tuple[bool, str]:
    """Try one MQTT connect; (connected?, why) as soon as paho reports anything.

    With TLS 1.3 the server checks the client cert only after the client's
    handshake finished, so a refusal may arrive as an alert on first read
    rather than from connect() itself: both paths must end quickly.
    """
    events: queue.Queue[tuple[bool, str]] = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="intruder")
    c.tls_set_context(ctx)
    c.on_connect = lambda _c, _u, _f, rc, _p: events.put((not rc.is_failure, f"CONNACK {rc}"))
    c.on_disconnect = lambda _c, _u, _f, rc, _p: events.put((False, f"disconnect {rc}"))
    c.on_connect_fail = lambda _c, _u: events.put((False, "connect failed"))
    try:
        c.connect(b.host, b.port, keepalive=5)
    except (ssl.SSLError, OSError) as e:
        return False, repr(e)
    deadline = time.monotonic() + timeout
    try:
        while events.empty() and time.monotonic() < deadline:
            c.loop(timeout=0.05)  # driven inline: no thread to join, no reconnects
        return events.get_nowait() if not events.empty() else (False, "timeout")
    finally:
        c.disconnect()


def _assert_refused(b: Broker, ctx: ssl.SSLContext) -> str:
    t0 = time.monotonic()
    ok, why = _attempt(b, ctx)
    assert not ok, f"broker accepted an unauthenticated client: {why}"
    assert why != "timeout" and time.monotonic() - t0 < WAIT, "refusal must not hang"
    return why


# ---------------------------------------------------------------- (a) happy path

def test_gateway_qos1_round_trip(mqtt_client_factory: Any) -> None:
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    headend = mqtt_client_factory("headend", on_message=lambda _c, _u, m: got.put(m))
    gateway = mqtt_client_factory("gateway", on_message=lambda _c, _u, m: got.put(m))
    assert gateway.socket().version() == "TLSv1.3"

    headend.subscribe("meters/+/up/readings", qos=1)
    gateway.subscribe("meters/gw-0001/down/cmd", qos=1)
    _wait_subscribed(headend, gateway)

    info = gateway.publish("meters/gw-0001/up/readings", b"1.8.0=42", qos=1)
    info.wait_for_publish(WAIT)
    assert info.is_published()
    up = got.get(timeout=WAIT)
    assert (up.topic, up.payload, up.qos) == ("meters/gw-0001/up/readings", b"1.8.0=42", 1)

    headend.publish("meters/gw-0001/down/cmd", b"read-now", qos=1).wait_for_publish(WAIT)
    down = got.get(timeout=WAIT)
    assert (down.topic, down.payload, down.qos) == ("meters/gw-0001/down/cmd", b"read-now", 1)


def _wait_subscribed(*clients: mqtt.Client) -> None:
    """Round-trip a QoS 1 ping per client so its earlier SUBSCRIBE is known processed (the
    topic is outside the ACL: mosquitto acknowledges the PUBLISH and drops it)."""
    for c in clients:
        c.publish("test/sync", b"", qos=1).wait_for_publish(WAIT)


# ------------------------------------------------------------------------ ACL

def _suback(client: mqtt.Client, topic: str) -> list[int]:
    """Subscribe and return the broker's granted QoS / failure codes."""
    got: queue.Queue[list[int]] = queue.Queue()
    client.on_subscribe = lambda _c, _u, _mid, codes, _p: got.put([c.value for c in codes])
    client.subscribe(topic, qos=1)
    return got.get(timeout=WAIT)


def test_acl_a_gateway_cannot_publish_or_listen_as_another(pki: Path,
                                                           mqtt_client_factory: Any) -> None:
    """gw-0001's certificate cannot publish readings or status as gw-0002, nor read
    gw-0002's commands; gw-0002's own certificate can; the head-end cannot forge readings."""
    issue_client_cert(pki, "gw-0002")
    seen: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    headend = mqtt_client_factory("headend", on_message=lambda _c, _u, m: seen.put(m))
    assert _suback(headend, "meters/+/up/#") == [1]
    assert _suback(headend, "+/+/status") == [1]
    # Mosquitto grants any filter and checks each message against the ACL on delivery: the
    # head-end's "#" gets what it may read (up/, status), not the down/ commands below.
    assert _suback(headend, "#") == [1]
    gw1_got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    gw1 = mqtt_client_factory("gateway", on_message=lambda _c, _u, m: gw1_got.put(m))
    gw2 = mqtt_client_factory("gw-0002")

    for topic in ("meters/gw-0002/up/readings", "meters/gw-0002/status",
                  "meters/gw-0002/up/events"):
        gw1.publish(topic, b"forged", qos=1).wait_for_publish(WAIT)
    headend.publish("meters/gw-0001/up/readings", b"forged by the head-end",
                    qos=1).wait_for_publish(WAIT)
    gw1.publish("meters/gw-0001/up/readings", b"own", qos=1).wait_for_publish(WAIT)
    gw2.publish("meters/gw-0002/up/readings", b"gw2 own", qos=1).wait_for_publish(WAIT)
    msgs = [seen.get(timeout=WAIT), seen.get(timeout=WAIT)]
    assert sorted((m.topic, m.payload) for m in msgs) == [
        ("meters/gw-0001/up/readings", b"own"), ("meters/gw-0002/up/readings", b"gw2 own")]
    assert seen.empty()

    # Commands: gw-0001 may read its own and the fleet's, not gw-0002's.
    _suback(gw1, "meters/gw-0002/down/cmd")  # granted, but nothing of gw-0002's arrives
    _suback(gw1, "meters/+/down/cmd")
    assert _suback(gw1, "meters/gw-0001/down/cmd") == [1]
    assert _suback(gw1, "meters/fleet/down/cmd") == [1]
    assert _suback(gw1, "meters/fleet/ota/abc/+") == [1]
    gw1.publish("meters/gw-0001/down/cmd", b"self-made", qos=1).wait_for_publish(WAIT)
    for topic in ("meters/gw-0002/down/cmd", "meters/fleet/down/cmd", "meters/gw-0001/down/cmd"):
        headend.publish(topic, topic.encode(), qos=1).wait_for_publish(WAIT)
    got = sorted(gw1_got.get(timeout=WAIT).payload for _ in range(2))
    assert got == [b"meters/fleet/down/cmd", b"meters/gw-0001/down/cmd"]
    gw1.publish("meters/gw-0001/up/readings", b"marker", qos=1).wait_for_publish(WAIT)
    before_marker = []
    for _ in range(5):
        m = seen.get(timeout=WAIT)
        if m.payload == b"marker":
            break
        before_marker.append(m.topic)
    # The fleet topics are readable by every certificate (the pattern lines apply to all);
    # no gateway's own command topic is.
    assert before_marker in ([], ["meters/fleet/down/cmd"]), before_marker
    assert gw1_got.empty() and seen.empty()


def test_acl_a_gateway_cannot_leave_a_will_as_another(broker: Broker, pki: Path,
                                                      mqtt_client_factory: Any) -> None:
    """An LWT is a publish too: gw-0001's certificate dying with a will on gw-0002's status
    topic leaves nothing there."""
    seen: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    headend = mqtt_client_factory("headend", on_message=lambda _c, _u, m: seen.put(m))
    headend.subscribe("meters/+/status", qos=1)
    _wait_subscribed(headend)
    for will_topic in ("meters/gw-0002/status", "meters/gw-0001/status"):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"will-{will_topic[7:14]}")
        c.tls_set_context(client_tls_context(pki, "gateway"))
        c.will_set(will_topic, will_topic.encode(), qos=1, retain=False)
        acked: list[bool] = []
        c.on_connect = lambda _c, _u, _f, rc, _p: acked.append(not rc.is_failure)
        c.connect(broker.host, broker.port, keepalive=5)
        deadline = time.monotonic() + WAIT
        while not acked and time.monotonic() < deadline:
            c.loop(timeout=0.05)
        assert acked == [True]
        c.socket().close()  # gone without a DISCONNECT: the broker publishes the will
    # Only the will on its own topic arrives (the forged one died first).
    assert seen.get(timeout=WAIT).payload == b"meters/gw-0001/status"
    with pytest.raises(queue.Empty):
        seen.get(timeout=1.0)


def test_acl_file_names_prefixes_when_given(tmp_path: Path, pki: Path) -> None:
    text = broker_mod.render_acl(["utility/north"])
    assert "pattern write utility/north/%u/up/#" in text
    assert "topic write utility/north/+/down/#" in text and "+/%u" not in text
    conf = broker_mod.write_config(pki, 1, "127.0.0.1", tmp_path / "d")
    assert f"acl_file {(tmp_path / 'd' / 'mosquitto.acl').resolve()}" in conf.read_text()
    conf = broker_mod.write_config(pki, 1, "127.0.0.1", tmp_path / "e", acl=False)
    assert not [ln for ln in conf.read_text().splitlines() if ln.startswith("acl_file")]


def test_pki_contents(pki: Path) -> None:
    broker_cert = _cert(pki / "broker.pem")
    san = broker_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    eku = lambda p: list(_cert(p).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku(pki / "broker.pem") == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert eku(pki / "gateway.pem") == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert eku(pki / "headend.pem") == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (_cn(pki / "gateway.pem"), _cn(pki / "headend.pem")) == ("gw-0001", "headend")
    for name in ("broker", "gateway", "headend"):
        _cert(pki / f"{name}.pem").verify_directly_issued_by(_cert(pki / "ca.pem"))
    assert b"BEGIN PRIVATE KEY" in (pki / "gateway-sign.key").read_bytes()
    assert b"BEGIN PUBLIC KEY" in (pki / "gateway-sign.pub").read_bytes()


def test_extra_gateway_cert_connects(pki: Path, mqtt_client_factory: Any) -> None:
    pem, key = issue_client_cert(pki, "gw-0002")
    assert (pem.name, key.name, _cn(pem)) == ("gw-0002.pem", "gw-0002.key", "gw-0002")
    assert mqtt_client_factory("gw-0002").is_connected()


# ------------------------------------------------------------ (b)(c)(d) refusals

def test_client_without_certificate_is_refused(broker: Broker, pki: Path) -> None:
    assert _attempt(broker, client_tls_context(pki, "gateway"))[0]  # the probe itself works
    _assert_refused(broker, client_tls_context(pki, None))


def test_client_cert_from_other_ca_is_refused(broker: Broker, pki: Path, tmp_path: Path) -> None:
    make_ca(tmp_path, cn="rogue CA")
    issue_client_cert(tmp_path, "gw-0001")  # same CN, wrong issuer
    ctx = client_tls_context(pki, None)
    ctx.load_cert_chain(str(tmp_path / "gw-0001.pem"), str(tmp_path / "gw-0001.key"))
    _assert_refused(broker, ctx)


def test_client_trusting_wrong_ca_fails_verification(broker: Broker, pki: Path,
                                                     tmp_path: Path) -> None:
    rogue_ca, _ = make_ca(tmp_path, cn="rogue CA")
    ctx = ssl.create_default_context(cafile=str(rogue_ca))
    ctx.load_cert_chain(str(pki / "gateway.pem"), str(pki / "gateway.key"))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lost")
    client.tls_set_context(ctx)
    client.connect_timeout = WAIT
    t0 = time.monotonic()
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        client.connect(broker.host, broker.port)
    assert time.monotonic() - t0 < WAIT
    assert not client.is_connected()


def test_tls_below_1_2_is_refused(broker: Broker, pki: Path) -> None:
    ctx = probe_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert tls_ready(broker.host, broker.port, ctx)  # 1.2 is the floor, still accepted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # so the refusal comes from the broker, not us
    with socket.create_connection((broker.host, broker.port), timeout=WAIT) as raw:
        with pytest.raises(ssl.SSLError, match="ALERT_PROTOCOL_VERSION"):
            ctx.wrap_socket(raw, server_hostname=broker.host)


# --------------------------------------------------------------- (e) key modes

def test_private_keys_are_0600(tmp_path: Path) -> None:
    old = os.umask(0)  # even a careless umask must not widen key permissions
    try:
        stale = tmp_path / "gateway.key"
        stale.write_bytes(b"junk")
        stale.chmod(0o644)  # a pre-existing world-readable file gets replaced, not reused
        paths = make_pki(tmp_path)
        extra, extra_key = issue_client_cert(tmp_path, "gw-0002")
    finally:
        os.umask(old)
    keys = [p for k, p in paths.items() if k.endswith("_key")] + [extra_key]
    assert {p.name for p in keys} >= {"ca.key", "broker.key", "gateway.key", "headend.key",
                                      "gateway-sign.key", "gw-0002.key"}
    for p in keys:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    for p in (paths["ca"], paths["gateway"], paths["sign_pub"], extra):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------- (f) broker restart

def test_restart_keeps_port_and_accepts_again(broker: Broker, pki: Path) -> None:
    port = broker.port
    first = connect_client(broker.host, port, client_tls_context(pki, "gateway"))
    first.disconnect()
    first.loop_stop()
    broker.restart()
    assert (broker.port, broker.running) == (port, True)
    again = connect_client(broker.host, port, client_tls_context(pki, "gateway"))
    assert again.is_connected()
    again.disconnect()
    again.loop_stop()


def test_persistent_session_survives_restart(broker: Broker, pki: Path) -> None:
    """A head-end's queued QoS 1 reading outlives a broker restart (same data dir)."""
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    kw: dict[str, Any] = {"client_id": "headend-durable", "clean_session": False}
    headend = connect_client(broker.host, broker.port, client_tls_context(pki, "headend"), **kw)
    headend.subscribe("meters/+/up/readings", qos=1)
    _wait_subscribed(headend)
    headend.disconnect()
    headend.loop_stop()

    gateway = connect_client(broker.host, broker.port, client_tls_context(pki, "gateway"))
    gateway.publish("meters/gw-0001/up/readings", b"offline", qos=1).wait_for_publish(WAIT)
    gateway.disconnect()
    gateway.loop_stop()

    broker.restart()
    headend = connect_client(broker.host, broker.port, client_tls_context(pki, "headend"),
                             on_message=lambda _c, _u, m: got.put(m), **kw)
    try:
        msg = got.get(timeout=WAIT)
        assert (msg.payload, msg.qos) == (b"offline", 1)
    finally:
        headend.disconnect()
        headend.loop_stop()


def test_broker_start_failure_reports_log(pki: Path, tmp_path: Path) -> None:
    with Broker(pki, data_dir=tmp_path / "a") as first:
        clash = Broker(pki, port=first.port, data_dir=tmp_path / "b")
        with pytest.raises(broker_mod.BrokerError, match="Address already in use"):
            clash.start(timeout=WAIT)
        assert not clash.running


def test_cli_runs_in_foreground_and_forwards_sigterm(pki: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tools.broker", str(pki), "--port", str(port),
                             "--data", str(tmp_path)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ctx = probe_context(pki)
        deadline = time.monotonic() + WAIT
        while not tls_ready("127.0.0.1", port, ctx) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        assert (tmp_path / "mosquitto.conf").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert (tmp_path / "mosquitto.db").is_file()  # saved on SIGTERM


def test_cli_without_mosquitto_exits_2(monkeypatch: pytest.MonkeyPatch, pki: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    assert broker_mod.main([str(pki), "--port", "1"]) == 2
    assert "sudo apt-get install mosquitto" in capsys.readouterr().err


# -------------------------------------------------------------- (g) idempotence

def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_devpki_is_idempotent(tmp_path: Path) -> None:
    make_pki(tmp_path)
    before = _snapshot(tmp_path)
    assert len(before) == 10
    make_pki(tmp_path)
    assert _snapshot(tmp_path) == before

    (tmp_path / "gateway-sign.pub").unlink()  # a lost public key is re-derived, not rotated
    make_pki(tmp_path)
    assert _snapshot(tmp_path) == before

    make_pki(tmp_path, force=True)
    after = _snapshot(tmp_path)
    assert after.keys() == before.keys()
    assert all(after[n] != before[n] for n in before)


def test_devpki_reissues_only_what_changed(tmp_path: Path) -> None:
    make_pki(tmp_path)
    before = _snapshot(tmp_path)
    make_pki(tmp_path, gateway_ids=("gw-0042",))
    after = _snapshot(tmp_path)
    assert _cn(tmp_path / "gateway.pem") == "gw-0042"
    assert {n for n in before if before[n] != after[n]} == {"gateway.pem", "gateway.key"}

    make_ca(tmp_path)  # a new CA invalidates every leaf: all are re-issued
    make_pki(tmp_path)
    ca = _cert(tmp_path / "ca.pem")
    for name in ("broker", "gateway", "headend"):
        _cert(tmp_path / f"{name}.pem").verify_directly_issued_by(ca)


def test_devpki_cli(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tools.devpki", str(tmp_path / "pki"), "--gateway-id", "gw-0007"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=WAIT, check=True)
    assert "created" in first.stdout and "CN=gw-0007" in first.stdout
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=WAIT, check=True)
    assert "created" not in second.stdout and "kept" in second.stdout
    forced = subprocess.run(cmd + ["--force"], cwd=REPO, capture_output=True, text=True,
                            timeout=WAIT, check=True)
    assert "kept" not in forced.stdout

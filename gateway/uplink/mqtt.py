"""MQTT/TLS uplink: moves committed records from the outbox to the broker, QoS 1.

paho is used as a transport only, never as a store: its queue lives in memory. A record
leaves the outbox only in ``on_publish`` (the broker's PUBACK) for the message that carried
it. After a disconnect the paho client is thrown away (so it cannot re-send its own idea of
in-flight messages) and everything unacknowledged is re-sent from the outbox with the same
seq numbers; the head-end drops the duplicates.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..model import KIND_DIAG, KIND_EVENT, KIND_GAP, KIND_READING, Event, now_ms
from ..store import ChunkRow, Store
from .envelope import seal

log = logging.getLogger("gateway.uplink")


class UplinkSettings(Protocol):
    host: str
    port: int
    ca: str
    cert: str
    key: str
    topic_prefix: str
    client_id: str | None
    keepalive_s: int
    inflight: int
    batch_max_records: int
    batch_max_bytes: int
    reconnect_min_s: float
    reconnect_max_s: float
    tls_version: str


class ConnectFailed(Exception):
    """A connection attempt failed; the message says why in a field tech's words."""


def topics(prefix: str, gateway_id: str) -> dict[str, str]:
    base = f"{prefix}/{gateway_id}"
    return {"readings": f"{base}/up/readings", "events": f"{base}/up/events",
            "diag": f"{base}/up/diag", "status": f"{base}/status"}


# Which topic (key of topics()) a stored row goes to, by its kind.
TOPIC_OF_KIND = {KIND_READING: "readings", KIND_EVENT: "events", KIND_GAP: "events",
                 KIND_DIAG: "diag"}


def tls_context(ca: str, cert: str, key: str, tls_version: str = "1.2") -> ssl.SSLContext:
    """Mutual TLS, >= 1.2 (1.3 negotiated when the broker offers it), hostname checked."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def explain_connect_error(exc: BaseException, host: str, port: int) -> str:
    """Turn socket/TLS exceptions into a sentence that says what to check."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS: the broker certificate at {where} is not trusted "
                f"({exc.verify_message}); check uplink.ca and uplink.host")
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or str(exc)
        if reason and ("CERTIFICATE" in reason.upper() or "UNKNOWN_CA" in reason.upper()):
            return (f"TLS: the broker at {where} rejected our client certificate ({reason}); "
                    "check uplink.cert and uplink.key")
        return f"TLS handshake with {where} failed: {reason}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where} (is the broker running and listening there?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}: {exc}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"timed out connecting to {where}"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return f"cannot connect to {where}: {exc}"


@dataclass
class UplinkState:
    connected: bool = False
    since_ms: int | None = None
    last_error: str | None = None
    connect_attempts: int = 0
    connect_failures: int = 0
    messages_published: int = 0
    messages_acked: int = 0
    records_acked: int = 0
    in_flight: int = 0
    last_ack_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Uplink:
    """One thread that connects, publishes from the outbox and reconnects with backoff."""

    def __init__(self, settings: UplinkSettings, gateway_id: str, store: Store,
                 signing_key: Ed25519PrivateKey, birth: dict[str, Any] | None = None,
                 emit: Callable[[Event], None] | None = None,
                 on_command: Callable[[str, bytes], None] | None = None,
                 command_topics: list[str] | tuple[str, ...] = ()) -> None:
        self.s = settings
        # Downlink: {prefix}/{id}/down/cmd and the fleet-wide topic, subscribed on every
        # connect (clean sessions) and handed to on_command; it must not block.
        self.on_command = on_command
        self.command_topics = list(command_topics) if on_command is not None else []
        self.gateway_id = gateway_id
        self.store = store
        self.key = signing_key
        self.birth = dict(birth or {})
        self.emit = emit or (lambda ev: None)
        self.topics = topics(settings.topic_prefix, gateway_id)
        self.state = UplinkState()
        self._ctx = tls_context(settings.ca, settings.cert, settings.key, settings.tls_version)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _inflight/_early_acks/_status_mids only
        self._status_mids: set[int] = set()
        self._inflight: dict[int, tuple[int, int, int]] = {}
        self._early_acks: set[int] = set()
        self._connected = threading.Event()
        self._connack: tuple[bool, str] | None = None
        self._connack_event = threading.Event()
        self._drained = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        store.add_listener(self._wake)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_timeout: float = 3.0) -> None:
        """Stop publishing new messages, wait up to drain_timeout for the acks of those in
        flight, say goodbye on the status topic, disconnect."""
        self._drain_deadline = time.monotonic() + drain_timeout
        self._stopping.set()
        self._wake.set()
        self._thread.join(drain_timeout + 10)

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        backoff = self.s.reconnect_min_s
        while not self._stopping.is_set():
            self.state.connect_attempts += 1
            try:
                client = self._connect()
            except ConnectFailed as exc:
                self.state.connect_failures += 1
                msg = str(exc)
                if msg != self.state.last_error:
                    log.error("uplink: %s", msg)
                else:
                    log.warning("uplink: still failing: %s", msg)
                self.state.last_error = msg
                delay = random.uniform(backoff / 2, backoff)  # jitter: a fleet must not stampede
                log.info("uplink: retrying in %.1f s", delay)
                self._stopping.wait(delay)
                backoff = min(self.s.reconnect_max_s, backoff * 2)
                continue
            backoff = self.s.reconnect_min_s
            try:
                self._pump(client)
            except Exception:  # a bug here must not kill the uplink for good
                log.exception("uplink: unexpected error; reconnecting")
            finally:
                self._teardown(client)

    def _connect(self) -> mqtt.Client:
        s = self.s
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=s.client_id or self.gateway_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.tls_set_context(self._ctx)
        client.will_set(self.topics["status"], self._status("offline", reason="connection lost"),
                        qos=1, retain=True)
        client.max_inflight_messages_set(max(s.inflight, 1))
        client.connect_timeout = 10.0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._connack_event.clear()
        self._connack = None
        try:
            client.connect(s.host, s.port, keepalive=s.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConnectFailed(explain_connect_error(exc, s.host, s.port)) from exc
        client.loop_start()
        if not self._connack_event.wait(15):
            self._teardown(client)
            raise ConnectFailed(f"no CONNACK from {s.host}:{s.port} within 15 s "
                                "(TLS accepted, MQTT not answering; client certificate refused?)")
        ok, reason = self._connack or (False, "unknown")
        if not ok:
            self._teardown(client)
            raise ConnectFailed(f"broker {s.host}:{s.port} refused the connection: {reason}")
        self._publish_status(client, self._status("online"))
        return client

    def _publish_status(self, client: mqtt.Client, doc: bytes) -> mqtt.MQTTMessageInfo:
        """Status messages are QoS 1 too; their mids are remembered so that their PUBACKs are
        never mistaken for the ack of an outbox message."""
        info = client.publish(self.topics["status"], doc, qos=1, retain=True)
        with self._lock:
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
            else:
                self._status_mids.add(info.mid)
        return info

    def _teardown(self, client: mqtt.Client) -> None:
        was = self.state.connected
        self._connected.clear()
        try:
            client.disconnect()
        except Exception:
            pass
        try:
            client.loop_stop()
        except Exception:
            pass
        with self._lock:
            lost = len(self._inflight)
            self._inflight.clear()
            self._early_acks.clear()
            self._status_mids.clear()
        self.state.connected = False
        self.state.in_flight = 0
        if was and not self._stopping.is_set():
            log.warning("uplink: disconnected; %d messages were in flight and will be re-sent "
                        "from the store", lost)
            self.emit(Event("uplink.disconnected", now_ms(), "uplink", severity="warning",
                            detail={"in_flight": lost, "reason": self.state.last_error or ""}))

    def _status(self, state: str, **extra: Any) -> bytes:
        doc = {"state": state, "gateway": self.gateway_id, "ts_ms": now_ms(), **extra}
        if state == "online":
            doc.update(self.birth)
        return json.dumps(doc, sort_keys=True).encode()

    def _pump(self, client: mqtt.Client) -> None:
        s = self.s
        self.state.connected = True
        self.state.since_ms = now_ms()
        self.state.last_error = None
        st = self.store.stats()
        log.info("uplink: connected to %s:%d (%s); %d records waiting in the store",
                 s.host, s.port, self._tls_version(client), st.depth)
        self.emit(Event("uplink.connected", now_ms(), "uplink",
                        detail={"broker": f"{s.host}:{s.port}", "backlog": st.depth}))
        hwm = 0  # highest seq published on this connection; a new connection re-sends all
        while self._connected.is_set():
            # On stop the drivers are already stopped, so the store is finite: keep sending
            # until it is empty and acknowledged, or the drain deadline passes.
            stopping = self._stopping.is_set()
            if stopping and time.monotonic() >= self._drain_deadline:
                self._goodbye(client)
                return
            published = False
            while len(self._inflight) < s.inflight and self._connected.is_set():
                chunks = self.store.fetch_chunks(hwm, s.batch_max_records, s.batch_max_bytes)
                if not chunks:
                    break
                chunks = _same_topic_run(chunks)
                first, last = chunks[0][0], chunks[-1][1]
                count = sum([c[3] for c in chunks])
                topic = self.topics[TOPIC_OF_KIND.get(chunks[0][2], "events")]
                # The bodies were encoded when the records were stored: only seal them.
                payload = seal(self.gateway_id, self.store.epoch, now_ms(),
                               [(f, la, n, base, body) for f, la, _, n, base, body in chunks],
                               self.key)
                # Never call paho while holding our lock: paho calls on_publish holding its
                # own mutex, and on_publish takes ours (lock-order inversion = deadlock).
                info = client.publish(topic, payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    log.warning("uplink: publish failed (%s)", mqtt.error_string(info.rc))
                    break
                with self._lock:
                    if info.mid in self._early_acks:
                        self._early_acks.discard(info.mid)
                        self._acked(first, last, count)
                    else:
                        self._inflight[info.mid] = (first, last, count)
                    self.state.in_flight = len(self._inflight)
                self.state.messages_published += 1
                hwm = last
                published = True
            if stopping and not published:
                with self._lock:
                    idle = not self._inflight
                if idle:
                    self._goodbye(client)
                    return
            if not published:
                self._wake.wait(0.05 if stopping else 1.0)
                self._wake.clear()

    def _goodbye(self, client: mqtt.Client) -> None:
        info = self._publish_status(client, self._status("offline", reason="shutdown"))
        try:
            info.wait_for_publish(1.0)
        except (RuntimeError, ValueError):
            pass

    def _tls_version(self, client: mqtt.Client) -> str:
        try:
            sock = client.socket()
            return sock.version() if sock is not None else "TLS"
        except Exception:
            return "TLS"

    def _acked(self, first: int, last: int, n: int) -> None:
        self.store.ack(first, last)
        self.state.messages_acked += 1
        self.state.records_acked += n
        self.state.last_ack_ms = now_ms()

    # -------------------------------------------------------- paho callbacks
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        ok = not reason_code.is_failure
        self._connack = (ok, str(reason_code))
        if ok:
            if self.command_topics:
                client.subscribe([(t, 1) for t in self.command_topics])
            self._connected.set()
        self._connack_event.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.on_command is None:
            return
        try:
            self.on_command(msg.topic, msg.payload)
        except Exception:  # a bad command must never take the network thread down
            log.exception("uplink: command callback failed for %s", msg.topic)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if not self._stopping.is_set():
            self.state.last_error = f"connection lost ({reason_code})"
        self._connected.clear()
        self._connack_event.set()
        self._wake.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        with self._lock:
            if mid in self._status_mids:
                self._status_mids.discard(mid)
                return
            entry = self._inflight.pop(mid, None)
            if entry is None:
                self._early_acks.add(mid)  # PUBACK raced ahead of publish() returning
            else:
                self._acked(*entry)
            self.state.in_flight = len(self._inflight)
        self._wake.set()


def _same_topic_run(chunks: list[ChunkRow]) -> list[ChunkRow]:
    """Readings go to up/readings, events and gaps to up/events, diagnostics to up/diag: a
    message carries one run of consecutive chunks of one topic, so that its seq range covers
    exactly its own chunks (and its ack deletes nothing else)."""
    topic = TOPIC_OF_KIND.get(chunks[0][2], "events")
    for i, ch in enumerate(chunks):
        if TOPIC_OF_KIND.get(ch[2], "events") != topic:
            return chunks[:i]
    return chunks

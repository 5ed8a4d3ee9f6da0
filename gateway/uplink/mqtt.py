"""MQTT/TLS uplink: moves committed records from the outbox to the broker, QoS 1.

paho is used as a transport only, never as a store: its queue lives in memory. A record
leaves the outbox only in ``on_publish`` (the broker's PUBACK) for the message that carried
it. After a disconnect the paho client is thrown away (so it cannot re-send its own idea of
in-flight messages) and everything unacknowledged is re-sent from the outbox with the same
seq numbers; the head-end drops the duplicates.

The uplink thread runs paho's network loop itself (paho's external-loop API: ``socket()``,
``loop_read/loop_write/loop_misc``) instead of paho's own thread: PUBACKs are handled, and
the next message built and written, in one thread with no lock, no hand-off and no wake-up
byte per message. On a 2-core gateway this halves the uplink's CPU per message; it sleeps in
one ``select()`` on the broker socket and a doorbell that new records and ``stop()`` ring.
"""

from __future__ import annotations

import errno
import logging
import random
import select
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
from ..wire.envelope import seal
from .status import sign_status
from .. import events as kinds

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
    """A connection attempt failed; the message says why in a field tech's words.

    ``reachable`` is False when TCP may not have got through (refused, timed out, no route,
    no name): then a cheap TCP probe can tell when the broker is back. ``tcp_down`` says TCP
    surely failed (refused, no route, no name; a timeout may also be a hung TLS handshake)."""

    def __init__(self, message: str, reachable: bool = True, tcp_down: bool = False) -> None:
        super().__init__(message)
        self.reachable = reachable
        self.tcp_down = tcp_down


# Once the reconnect backoff is longer than this, the wait is cut short by a TCP probe of
# the broker's port every PROBE_INTERVAL_S (+-1/3 jitter): a dead broker still costs the
# gateway no TLS handshakes, and its return is noticed within seconds, not minutes.
PROBE_INTERVAL_S = 3.0
PROBE_TIMEOUT_S = 2.0


_NO_ROUTE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
             errno.EADDRNOTAVAIL}


def tcp_down(exc: BaseException) -> bool:
    """True when TCP surely did not get through: nothing listens there, or no way there."""
    if isinstance(exc, ssl.SSLError):
        return False
    return isinstance(exc, (ConnectionRefusedError, socket.gaierror)) or (
        isinstance(exc, OSError) and exc.errno in _NO_ROUTE)


def unreachable(exc: BaseException) -> bool:
    """True for failures a TCP probe can tell the end of: tcp_down, or a timeout (which may
    also be a broker that accepts TCP but hangs in TLS: see Uplink._wait_probing). A reset
    or a TLS error means TCP got through: plain backoff."""
    if isinstance(exc, ssl.SSLError):
        return False
    return tcp_down(exc) or isinstance(exc, (TimeoutError, socket.timeout))


def tcp_probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Does anything accept a TCP connection at host:port? (SYN, SYN-ACK, close: no TLS.)"""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


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
    probe_wakeups: int = 0  # backoff waits cut short because the broker's port answered
    messages_published: int = 0
    messages_acked: int = 0
    records_acked: int = 0
    in_flight: int = 0
    last_ack_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Doorbell:
    """A ``threading.Event``-like wake-up that a ``select()`` can wait on (a socketpair):
    the store rings it after every commit, ``stop()`` rings it, the uplink sleeps on it
    beside the broker socket.

    Every ring writes a byte (no "already rung" flag: a flag set by a ring whose byte the
    concurrent clear() drained would swallow every later ring). A ring drained by clear()
    is never lost either: it came after its commit, and the caller reads the store after
    clear()."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        return self._r.fileno()

    def set(self) -> None:
        try:
            self._w.send(b"\0")
        except OSError:  # buffer full (it is readable anyway) or closed (nobody listens)
            pass

    def clear(self) -> None:
        try:
            while self._r.recv(4096):
                pass
        except OSError:  # drained (EAGAIN) or closed
            pass

    def close(self) -> None:
        self._r.close()
        self._w.close()


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
        self._wake = Doorbell()
        self._stopping = threading.Event()
        # Only the uplink thread touches these (paho's callbacks run in it too).
        self._status_mids: set[int] = set()
        self._inflight: dict[int, tuple[int, int, int]] = {}
        self._connected = False
        self._connack: tuple[bool, str] | None = None
        self._rang = False  # the doorbell rang during the last _io()
        self._acks: list[tuple[int, int]] = []  # acknowledged seq ranges not yet given to the store
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        store.add_listener(self._wake)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        """The uplink thread runs (health snapshot, watchdog)."""
        return self._thread.is_alive()

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
        try:
            while not self._stopping.is_set():
                self.state.connect_attempts += 1
                try:
                    client = self._connect()
                except ConnectFailed as exc:
                    if self._stopping.is_set():
                        break  # not a failure: stop() came while we were connecting
                    self.state.connect_failures += 1
                    msg = str(exc)
                    if msg != self.state.last_error:
                        log.error("uplink: %s", msg)
                    else:
                        log.warning("uplink: still failing: %s", msg)
                    self.state.last_error = msg
                    delay = random.uniform(backoff / 2, backoff)  # jitter: no fleet stampede
                    if exc.reachable or delay <= PROBE_INTERVAL_S:
                        log.info("uplink: retrying in %.1f s", delay)
                        self._stopping.wait(delay)
                    else:
                        log.info("uplink: retrying in %.1f s, or as soon as %s:%d accepts "
                                 "TCP connections again", delay, self.s.host, self.s.port)
                        self._wait_probing(delay, seen_down=exc.tcp_down)
                    backoff = min(self.s.reconnect_max_s, backoff * 2)
                    continue
                backoff = self.s.reconnect_min_s
                try:
                    self._pump(client)
                except Exception:  # a bug here must not kill the uplink for good
                    log.exception("uplink: unexpected error; reconnecting")
                finally:
                    self._teardown(client)
        finally:
            self._wake.close()

    def _wait_probing(self, delay: float, seen_down: bool) -> None:
        """Wait up to delay, returning early once the broker's port accepts TCP again after
        it did not (seen_down: the failed connect, or a probe here). A port that answers
        from the first probe on (a broker hung after TCP) keeps the whole backoff."""
        deadline = time.monotonic() + delay
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._stopping.wait(min(left, random.uniform(PROBE_INTERVAL_S * 2 / 3,
                                                            PROBE_INTERVAL_S * 4 / 3))):
                return
            if time.monotonic() >= deadline:
                return
            if not tcp_probe(self.s.host, self.s.port):
                seen_down = True
            elif seen_down:
                self.state.probe_wakeups += 1
                log.info("uplink: %s:%d accepts connections again; reconnecting now",
                         self.s.host, self.s.port)
                return

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
        self._connack = None
        try:
            # TCP and the TLS handshake happen here (bounded by connect_timeout); CONNECT is
            # written, and the CONNACK is read by this thread's own loop below.
            client.connect(s.host, s.port, keepalive=s.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConnectFailed(explain_connect_error(exc, s.host, s.port),
                                reachable=not unreachable(exc), tcp_down=tcp_down(exc)) from exc
        if not self._run_until(client, lambda: self._connack is not None
                               or self._stopping.is_set(), 15.0) or self._connack is None:
            closed = client.socket() is None  # the broker hung up (before our teardown does)
            self._teardown(client)
            if self._stopping.is_set():
                raise ConnectFailed("stopped while connecting")
            if closed:
                raise ConnectFailed(f"{s.host}:{s.port} closed the connection before its "
                                    "CONNACK (client certificate or client id refused?)")
            raise ConnectFailed(f"no CONNACK from {s.host}:{s.port} within 15 s "
                                "(TLS accepted, MQTT not answering; client certificate refused?)")
        ok, reason = self._connack or (False, "unknown")
        if not ok:
            self._teardown(client)
            raise ConnectFailed(f"broker {s.host}:{s.port} refused the connection: {reason}")
        self._publish_status(client, self._status("online"))
        return client

    def _io(self, client: mqtt.Client, timeout: float) -> bool:
        """One turn of paho's network loop, run by this thread: wait up to timeout for the
        broker socket or the doorbell, read what came (PUBACKs call _on_publish here), write
        what is queued, keep the connection alive. False once the connection is gone."""
        sock = client.socket()
        if sock is None:
            return False
        if getattr(sock, "pending", None) is not None and sock.pending():
            timeout = 0.0  # TLS already decrypted bytes that select() cannot see
        try:
            readable, writable, _ = select.select([sock, self._wake], [sock] if
                                                  client.want_write() else [], [], timeout)
        except (OSError, ValueError):  # the socket was closed under us
            return False
        if self._wake in readable:
            self._wake.clear()
            self._rang = True
        rc = mqtt.MQTT_ERR_SUCCESS
        if sock in readable or timeout == 0.0:
            rc = client.loop_read()
        if rc == mqtt.MQTT_ERR_SUCCESS and writable:
            rc = client.loop_write()
        if rc == mqtt.MQTT_ERR_SUCCESS:
            rc = client.loop_misc()
        self._flush_acks()
        return rc == mqtt.MQTT_ERR_SUCCESS and client.socket() is not None

    def _flush_acks(self) -> None:
        """Hand this turn's PUBACKs to the store as few ranges (consecutive messages' ranges
        joined): one store wake-up per burst instead of one per message."""
        if not self._acks:
            return
        acks = sorted(self._acks)
        self._acks.clear()
        first, last = acks[0]
        for f, la in acks[1:]:
            if f == last + 1:
                last = la
            else:
                self.store.ack(first, last)
                first, last = f, la
        self.store.ack(first, last)

    def _run_until(self, client: mqtt.Client, done: Callable[[], bool], timeout: float) -> bool:
        """Run the network loop until done() or timeout (or the connection is gone)."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0 or not self._io(client, min(left, 0.25)):
                return done()
        return True

    def _publish_status(self, client: mqtt.Client, doc: bytes) -> mqtt.MQTTMessageInfo:
        """Status messages are QoS 1 too; their mids are remembered so that their PUBACKs are
        never mistaken for the ack of an outbox message."""
        info = client.publish(self.topics["status"], doc, qos=1, retain=True)
        self._status_mids.add(info.mid)
        return info

    def _teardown(self, client: mqtt.Client) -> None:
        was = self.state.connected
        self._connected = False
        try:
            client.disconnect()  # writes DISCONNECT and closes the socket when it can
        except Exception:
            pass
        sock = client.socket()
        if sock is not None:  # DISCONNECT could not be written (dead link): close anyway
            try:
                sock.close()
            except OSError:
                pass
        self._flush_acks()
        lost = len(self._inflight)
        self._inflight.clear()
        self._status_mids.clear()
        self.state.connected = False
        self.state.in_flight = 0
        if was and not self._stopping.is_set():
            log.warning("uplink: disconnected; %d messages were in flight and will be re-sent "
                        "from the store", lost)
            self.emit(Event(kinds.UPLINK_DISCONNECTED, now_ms(), "uplink", severity="warning",
                            detail={"in_flight": lost, "reason": self.state.last_error or ""}))

    def _status(self, state: str, **extra: Any) -> bytes:
        """A signed status (gateway/uplink/status.py): readable JSON plus its ``sig``."""
        doc = {"state": state, "gateway": self.gateway_id, "ts_ms": now_ms(), **extra}
        if state == "online":
            doc.update(self.birth)
        return sign_status(doc, self.key)

    def _pump(self, client: mqtt.Client) -> None:
        s = self.s
        self.state.connected = True
        self.state.since_ms = now_ms()
        self.state.last_error = None
        st = self.store.stats()
        self.state.extra["tls_negotiated"] = self._tls_version(client)  # for the console
        log.info("uplink: connected to %s:%d (%s); %d records waiting in the store",
                 s.host, s.port, self.state.extra["tls_negotiated"], st.depth)
        self.emit(Event(kinds.UPLINK_CONNECTED, now_ms(), "uplink",
                        detail={"broker": f"{s.host}:{s.port}", "backlog": st.depth}))
        hwm = 0  # highest seq published on this connection; a new connection re-sends all
        more = True  # the store may hold unsent chunks (cleared when a fetch finds none)
        while self._connected:
            # On stop the drivers are already stopped, so the store is finite: keep sending
            # until it is empty and acknowledged, or the drain deadline passes.
            stopping = self._stopping.is_set()
            if stopping and time.monotonic() >= self._drain_deadline:
                self._goodbye(client)
                return
            free = s.inflight - len(self._inflight)
            if more and free > 0:
                # Build every message the window has room for, then write them back to
                # back: measured here, a PUBLISH written between two signatures costs twice
                # what it costs in a burst (the broker is woken once per burst, not per
                # message), and one SELECT serves the whole burst.
                burst = self._build(hwm, free)
                if not burst:
                    more = False
                for topic, payload, (first, last, count) in burst:
                    info = client.publish(topic, payload, qos=1)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        log.warning("uplink: publish failed (%s)", mqtt.error_string(info.rc))
                        break  # hwm stays: the rest of the burst is fetched again
                    self._inflight[info.mid] = (first, last, count)
                    self.state.messages_published += 1
                    hwm = last
                self.state.in_flight = len(self._inflight)
            if stopping and not more and not self._inflight:
                self._goodbye(client)
                return
            self._rang = False
            if not self._io(client, 0.05 if stopping else 1.0):
                return
            more = more or self._rang  # the store committed something (or stop() rang)

    def _build(self, after_seq: int, messages: int) -> list[tuple[str, bytes, tuple[int, int, int]]]:
        """Up to `messages` signed messages of the chunks after after_seq, as (topic, payload,
        (first_seq, last_seq, records)). The bodies were encoded when the records were stored:
        a message only gets its header and signature here."""
        s = self.s
        chunks = self.store.fetch_chunks(after_seq, s.batch_max_records * messages,
                                         s.batch_max_bytes * messages)
        out = []
        for run in split_messages(chunks, s.batch_max_records, s.batch_max_bytes)[:messages]:
            first, last = run[0][0], run[-1][1]
            count = sum([c[3] for c in run])
            payload = seal(self.gateway_id, self.store.epoch, now_ms(),
                           [(f, la, n, base, body) for f, la, _, n, base, body in run], self.key)
            out.append((self.topics[TOPIC_OF_KIND.get(run[0][2], "events")], payload,
                        (first, last, count)))
        return out

    def _goodbye(self, client: mqtt.Client) -> None:
        info = self._publish_status(client, self._status("offline", reason="shutdown"))
        self._run_until(client, lambda: info.mid not in self._status_mids, 1.0)

    def _tls_version(self, client: mqtt.Client) -> str:
        try:
            sock = client.socket()
            return sock.version() if sock is not None else "TLS"
        except Exception:
            return "TLS"

    # -------------------------------------------------------- paho callbacks
    # paho calls these from inside _io(), in the uplink thread.
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        ok = not reason_code.is_failure
        self._connack = (ok, str(reason_code))
        if ok:
            if self.command_topics:
                client.subscribe([(t, 1) for t in self.command_topics])
            self._connected = True

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.on_command is None:
            return
        try:
            self.on_command(msg.topic, msg.payload)
        except Exception:  # a bad command must never take the uplink down
            log.exception("uplink: command callback failed for %s", msg.topic)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if not self._stopping.is_set():
            self.state.last_error = f"connection lost ({reason_code})"
        self._connected = False

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        if mid in self._status_mids:
            self._status_mids.discard(mid)
            return
        entry = self._inflight.pop(mid, None)
        if entry is None:
            log.debug("uplink: PUBACK for unknown message id %d ignored", mid)
            return
        first, last, n = entry
        self._acks.append((first, last))
        st = self.state
        st.messages_acked += 1
        st.records_acked += n
        st.last_ack_ms = now_ms()
        st.in_flight = len(self._inflight)


def split_messages(chunks: list[ChunkRow], max_records: int, max_bytes: int | None
                   ) -> list[list[ChunkRow]]:
    """Consecutive chunks grouped into messages: each at most max_records records and
    max_bytes of bodies (but at least one chunk), and of one topic (readings go to
    up/readings, events and gaps to up/events, diagnostics to up/diag), so that a message's
    seq range covers exactly its own chunks and its ack deletes nothing else."""
    out: list[list[ChunkRow]] = []
    cur: list[ChunkRow] = []
    records = size = 0
    topic = None
    for ch in chunks:
        t = TOPIC_OF_KIND.get(ch[2], "events")
        n, b = ch[3], len(ch[5])
        if cur and (t != topic or records + n > max_records
                    or (max_bytes is not None and size + b > max_bytes)):
            out.append(cur)
            cur, records, size = [], 0, 0
        cur.append(ch)
        records += n
        size += b
        topic = t
    if cur:
        out.append(cur)
    return out

"""``gateway-headend ingest``: one worker, MQTT in, database out, ack after commit.

The worker holds a persistent MQTT session (fixed client id, clean session off, QoS 1
subscription, paho's manual ack), so the broker keeps every message it has not
acknowledged. paho's network thread only queues messages; the main thread takes them in
batches, writes each batch in one transaction and acknowledges its messages after the
commit. A worker killed at any instant loses nothing (the broker redelivers the unacked
messages when the same client id comes back) and duplicates nothing (the database refuses
seqs it holds).

With ``--share GROUP`` the subscriptions are ``$share/GROUP/...``: workers of one group
split the traffic. The messages the broker has handed to a member stay in that member's
session until it returns with the same client id; run workers under a supervisor that
restarts them with their id (systemd ``Restart=always``). A member that never returns
keeps them until the broker expires its session (Mosquitto: ``persistent_client_expiration``,
off by default, i.e. never); the report then shows them as missing seq ranges. Even a
cleanly stopped member keeps getting its share queued: to take a worker out of a group for
good, run it once more with ``--retire`` (it drains its session, unsubscribes and exits).

A database outage stops the acknowledgements (the broker stops sending once the worker's
in-flight window is full), the batch is retried with backoff on a new connection, and the
work goes on where it stopped: nothing is dropped.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.headend.client import DEFAULT_TOPIC, tls_context
from gateway.headend.db import Database, db_errors, open_db, outage_errors
from gateway.headend.ingest import Ingestor, Message, RateLog
from gateway.model import now_ms

MAX_BATCH = 200  # messages per transaction
BATCH_WAIT_S = 0.05  # how long a batch may wait to fill once it has its first message
DB_BACKOFF_MIN_S = 0.5
DB_BACKOFF_MAX_S = 5.0
POLL_S = 0.2
RETIRE_IDLE_S = 2.0


@dataclass
class IngestOptions:
    db: str
    host: str
    port: int
    ca: str
    cert: str
    key: str
    trusted: dict[str, Ed25519PublicKey]
    topics: list[str] = field(default_factory=lambda: [DEFAULT_TOPIC])
    share: str | None = None
    client_id: str = "headend-ingest"
    replay_window_s: float = 300.0
    keepalive_s: int = 30
    max_batch: int = MAX_BATCH
    quiet: bool = False
    retire: bool = False  # drain this client id's session, leave the group, exit


def subscriptions(topics: list[str], share: str | None) -> list[str]:
    return [f"$share/{share}/{t}" if share else t for t in topics]


class Worker:
    def __init__(self, opts: IngestOptions, err: TextIO | None = None) -> None:
        self.opts = opts
        self.err = err or sys.stderr
        self._q: "queue.Queue[tuple[int, mqtt.MQTTMessage]]" = queue.Queue()
        self._gen = 0  # connection generation: acks only go to the connection that delivered
        self._stop = threading.Event()
        self._db: Database | None = None
        self._errors = db_errors()
        self._outage = outage_errors()
        self._log = RateLog(self.err)
        self.batches = 0
        self.ever_connected = False
        self._last_rx = time.monotonic()
        self._unsubscribed: float | None = None

    def stop(self) -> None:
        """Finish (or abandon, unacknowledged) the current batch and exit; signal-safe."""
        self._stop.set()

    def say(self, line: str, force: bool = False) -> None:
        if force or not self.opts.quiet:
            print(line, file=self.err, flush=True)

    # ------------------------------------------------------------------ MQTT side
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any,
                    _p: Any) -> None:
        if reason.is_failure:
            self.say(f"headend: broker refused the connection: {reason}", force=True)
            return
        self._gen += 1
        self.ever_connected = True
        subs = subscriptions(self.opts.topics, self.opts.share)
        client.subscribe([(t, 1) for t in subs])
        self.say(f"headend: ingest connected to {self.opts.host}:{self.opts.port} as "
                 f"{self.opts.client_id} (session present: {flags.session_present})", force=True)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        subs = subscriptions(self.opts.topics, self.opts.share)
        bad = [str(c) for c in codes if getattr(c, "is_failure", False)]
        if bad:
            self.say(f"headend: the broker refused the subscription ({', '.join(bad)})",
                     force=True)
        else:
            self.say(f"headend: subscribed {', '.join(subs)}", force=True)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._gen += 1  # whatever that connection delivered will be delivered again
        if not self._stop.is_set():
            self.say(f"headend: broker connection lost ({reason}); reconnecting", force=True)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._last_rx = time.monotonic()
        self._q.put((self._gen, msg))

    def _retire_step(self, client: mqtt.Client) -> bool:
        """--retire: once the session is drained (idle RETIRE_IDLE_S), unsubscribe (the
        broker stops giving this member a share), drain once more, then True = exit."""
        idle = time.monotonic() - self._last_rx
        if not self.ever_connected or not self._q.empty() or idle < RETIRE_IDLE_S:
            return False
        if self._unsubscribed is None:
            client.unsubscribe(subscriptions(self.opts.topics, self.opts.share))
            self._unsubscribed = self._last_rx = time.monotonic()
            self.say(f"headend: {self.opts.client_id} drained; left the subscriptions",
                     force=True)
            return False
        return True

    # ------------------------------------------------------------------ main loop
    def _database(self) -> Database:
        if self._db is None:
            db = open_db(self.opts.db)
            db.connect()
            try:
                db.migrate()
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _take_batch(self) -> list[tuple[int, mqtt.MQTTMessage]]:
        try:
            first = self._q.get(timeout=POLL_S)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + BATCH_WAIT_S
        while len(batch) < self.opts.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self._q.get(timeout=max(0.0, left)) if left > 0
                             else self._q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[tuple[int, mqtt.MQTTMessage]]) -> bool:
        """Commit the batch, retrying on database outages; False if stopped before."""
        backoff = DB_BACKOFF_MIN_S
        msgs = [Message(m.topic, m.payload) for _, m in batch]
        while True:
            try:
                db = self._database()
                outs = self._ingestor(db).ingest(msgs, now_ms())
                if not self.opts.quiet:
                    acc = sum(o.accepted for o in outs)
                    dup = sum(o.duplicates for o in outs)
                    self.say(f"headend: batch of {len(outs)} messages committed: {acc} new "
                             f"records, {dup} duplicates")
                return True
            except self._outage as e:
                self._drop_db()
                self._log("database", f"headend: database error, batch of {len(batch)} "
                                      f"not acknowledged, retrying in {backoff:.1f}s: "
                                      f"{type(e).__name__}: {str(e).strip()[:300]}")
            except Exception as e:  # noqa: BLE001 - a message the code or the DB cannot take
                self._drop_db()
                if self._isolate(msgs, e):
                    return True
            if self._stop.wait(backoff):
                return False
            backoff = min(backoff * 2, DB_BACKOFF_MAX_S)

    def _ingestor(self, db: Database) -> Ingestor:
        return Ingestor(db, self.opts.trusted, replay_window_s=self.opts.replay_window_s,
                        log=self._log)

    def _drop_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _isolate(self, msgs: list[Message], err: Exception) -> bool:
        """A batch failed for another reason than an outage: write its messages one by one
        and count the one(s) that still fail as malformed, so one poison message can
        neither wedge the worker nor take the others with it. False: retry later."""
        self._log("poison", f"headend: batch failed ({type(err).__name__}: "
                            f"{str(err).strip()[:200]}); writing its messages one by one")
        try:
            for m in msgs:
                db = self._database()
                try:
                    self._ingestor(db).ingest([m], now_ms())
                except self._outage:
                    raise
                except Exception as e:  # noqa: BLE001
                    self._drop_db()
                    self._ingestor(self._database()).reject(m, f"{type(e).__name__}: {e}",
                                                             now_ms())
            return True
        except self._outage:
            self._drop_db()
            return False

    def run(self) -> int:
        o = self.opts
        try:
            ctx = tls_context(o.ca, o.cert, o.key)
        except (OSError, ValueError) as e:
            self.say(f"headend: cannot load TLS material: {e}", force=True)
            return 2
        try:
            self._database()
        except self._errors as e:  # start anyway: the retry loop waits for the database
            self.say(f"headend: database not ready yet: {e}", force=True)
            self._db = None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=o.client_id,
                             clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        client.tls_set_context(ctx)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_connect_fail = lambda _c, _u: self._log(
            "broker", f"headend: cannot connect to the broker at {o.host}:{o.port}; retrying")
        client.reconnect_delay_set(0.5, 8)
        client.connect_async(o.host, o.port, keepalive=o.keepalive_s)
        client.loop_start()
        try:
            while not self._stop.is_set():
                batch = self._take_batch()
                if not batch:
                    if o.retire and self._retire_step(client):
                        break
                    continue
                if not self._write(batch):
                    break
                self.batches += 1
                gen = self._gen
                for g, m in batch:
                    if g == gen:  # else: a reconnect happened; the broker redelivers it
                        client.ack(m.mid, m.qos)
        finally:
            client.disconnect()
            client.loop_stop()
            if self._db is not None:
                self._db.close()
        return 0 if self.ever_connected else 1

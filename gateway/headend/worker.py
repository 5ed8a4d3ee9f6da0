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
off by default, i.e. never); the report then shows them as missing seq ranges.

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
from gateway.headend.db import Database, db_errors, open_db
from gateway.headend.ingest import Ingestor, Message, RateLog
from gateway.model import now_ms

MAX_BATCH = 200  # messages per transaction
BATCH_WAIT_S = 0.05  # how long a batch may wait to fill once it has its first message
DB_BACKOFF_MIN_S = 0.5
DB_BACKOFF_MAX_S = 5.0
POLL_S = 0.2


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
        self._log = RateLog(self.err)
        self.batches = 0
        self.ever_connected = False

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
                 f"{self.opts.client_id} (session present: {flags.session_present}); "
                 f"subscribed {', '.join(subs)}", force=True)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._gen += 1  # whatever that connection delivered will be delivered again
        if not self._stop.is_set():
            self.say(f"headend: broker connection lost ({reason}); reconnecting", force=True)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._q.put((self._gen, msg))

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
        """Commit the batch, retrying on database errors; False if stopped before."""
        backoff = DB_BACKOFF_MIN_S
        msgs = [Message(m.topic, m.payload) for _, m in batch]
        while True:
            try:
                db = self._database()
                ing = Ingestor(db, self.opts.trusted, replay_window_s=self.opts.replay_window_s,
                               log=self._log)
                outs = ing.ingest(msgs, now_ms())
                if not self.opts.quiet:
                    acc = sum(o.accepted for o in outs)
                    dup = sum(o.duplicates for o in outs)
                    self.say(f"headend: batch of {len(outs)} messages committed: {acc} new "
                             f"records, {dup} duplicates")
                return True
            except self._errors as e:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                self._log("database", f"headend: database error, batch of {len(batch)} "
                                      f"not acknowledged, retrying in {backoff:.1f}s: "
                                      f"{type(e).__name__}: {str(e).strip()[:300]}")
            if self._stop.wait(backoff):
                return False
            backoff = min(backoff * 2, DB_BACKOFF_MAX_S)

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
        client.reconnect_delay_set(0.5, 8)
        client.connect_async(o.host, o.port, keepalive=o.keepalive_s)
        client.loop_start()
        try:
            while not self._stop.is_set():
                batch = self._take_batch()
                if not batch:
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

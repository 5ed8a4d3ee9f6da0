"""MQTT/TLS head-end: subscribe, verify every message, keep the books, report them.

Single-threaded on purpose: paho's network loop, reconnects with backoff, the idle timer and
signal handling all run in the caller's thread, so a stop request is seen within
``POLL_S`` and connect errors can be reported with their real cause (paho's own reconnect
thread swallows them).
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.wire.cose import load_public_key  # noqa: F401  (re-exported: one key-file reader)
from gateway.model import Reading, StoredRecord, now_ms
from gateway.headend.verifier import FeedResult, Verifier

DEFAULT_TOPIC = "meters/+/up/#"
STATUS_TOPIC = "+/+/status"
POLL_S = 0.2
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 8.0

EXIT_OK = 0
EXIT_NEVER_CONNECTED = 1
EXIT_CONFIG = 2


def tls_context(ca: str | Path, cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """Verify the broker against ca (hostname included) and present our client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def default_client_id() -> str:
    return f"headend-{socket.gethostname()}"


@dataclass
class HeadendOptions:
    host: str
    port: int
    ca: str
    cert: str
    key: str
    trusted: dict[str, Ed25519PublicKey]
    topics: list[str] = field(default_factory=lambda: [DEFAULT_TOPIC])
    status_topics: list[str] = field(default_factory=lambda: [STATUS_TOPIC])
    client_id: str = field(default_factory=default_client_id)
    until_idle_s: float | None = None
    replay_window_s: float = 300.0
    json: bool = False
    print_readings: bool = False
    quiet: bool = False
    keepalive_s: int = 30


class Headend:
    """Runs one persistent MQTT session (clean_session=False) feeding a Verifier."""

    def __init__(self, opts: HeadendOptions, out: TextIO | None = None,
                 err: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.opts = opts
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._clock = clock
        self.verifier = Verifier(opts.trusted, opts.replay_window_s,
                                 on_record=self._print_record if opts.print_readings else None)
        self.ever_connected = False
        self._stop = False
        self._last_msg = clock()
        self._backoff = BACKOFF_MIN_S

    def stop(self) -> None:
        """Ask run() to finish; safe from a signal handler or another thread."""
        self._stop = True

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        """Connect (retrying), verify until stopped or idle, print the summary."""
        o = self.opts
        try:
            ctx = tls_context(o.ca, o.cert, o.key)
        except (OSError, ValueError) as e:
            self._log(f"headend: cannot load TLS material: {e}", force=True)
            return EXIT_CONFIG
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=o.client_id,
                             clean_session=False, protocol=mqtt.MQTTv311)
        client.tls_set_context(ctx)
        client.suppress_exceptions = True
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._last_msg = self._clock()
        sock_open = False
        next_try = 0.0
        try:
            while not self._stop:
                now = self._clock()
                if o.until_idle_s is not None and now - self._last_msg >= o.until_idle_s:
                    break
                if not sock_open:
                    if now < next_try:
                        time.sleep(min(POLL_S, next_try - now))
                        continue
                    try:
                        client.connect(o.host, o.port, keepalive=o.keepalive_s)
                        sock_open = True
                    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                        self._log(f"headend: connect to {o.host}:{o.port} failed: {e}; "
                                  f"retrying in {self._backoff:.1f}s", force=True)
                        next_try = self._clock() + self._next_backoff()
                    continue
                rc = client.loop(timeout=POLL_S)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    sock_open = False
                    if not self._stop:
                        self._log(f"headend: connection lost ({mqtt.error_string(rc)}); "
                                  f"reconnecting in {self._backoff:.1f}s", force=True)
                        next_try = self._clock() + self._next_backoff()
        finally:
            if sock_open:
                try:
                    client.disconnect()
                    client.loop(timeout=0.05)
                except Exception:  # noqa: BLE001 - shutting down anyway
                    pass
        self._report()
        return EXIT_OK if self.ever_connected else EXIT_NEVER_CONNECTED

    def _next_backoff(self) -> float:
        b = self._backoff
        self._backoff = min(b * 2, BACKOFF_MAX_S)
        return b

    # ------------------------------------------------------------------ callbacks

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any,
                    _props: Any) -> None:
        if reason.is_failure:
            self._log(f"headend: broker refused the connection: {reason}", force=True)
            return
        self.ever_connected = True
        self._backoff = BACKOFF_MIN_S
        subs = [(t, 1) for t in [*self.opts.topics, *self.opts.status_topics]]
        client.subscribe(subs)
        self._log(f"headend: connected to {self.opts.host}:{self.opts.port} as "
                  f"{self.opts.client_id} (session present: {flags.session_present}); "
                  f"subscribed {', '.join(t for t, _ in subs)}")

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        # Only the SUBACK proves the broker holds the subscription in the persistent
        # session (what arrives while we are away is kept for us from here on).
        bad = [str(c) for c in codes if getattr(c, "is_failure", False)]
        if bad:
            self._log(f"headend: the broker refused the subscription ({', '.join(bad)})",
                      force=True)
        else:
            self._log("headend: subscription confirmed by the broker")

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._last_msg = self._clock()
        try:
            if any(mqtt.topic_matches_sub(s, msg.topic) for s in self.opts.status_topics):
                self._status(msg)
            else:
                self._log(_describe(self.verifier.feed(msg.topic, msg.payload, now_ms())))
        except Exception as e:  # noqa: BLE001 - one bad message must never stop the head-end
            self._log(f"headend: internal error on {msg.topic}: {type(e).__name__}: {e}",
                      force=True)

    def _status(self, msg: mqtt.MQTTMessage) -> None:
        """Status messages are signed like envelopes (gateway.uplink.status): one whose
        signature does not verify is shown as such, never as the gateway's word."""
        from gateway.wire.envelope import EnvelopeError
        from gateway.uplink.status import verify_status
        levels = msg.topic.split("/")
        topic_gw = levels[-2] if len(levels) >= 2 else None
        try:
            fields = verify_status(msg.payload, self.opts.trusted, topic_gw)
            verdict, text = "signed", json.dumps(fields, sort_keys=True)
        except EnvelopeError as exc:
            verdict, text = f"NOT VERIFIED ({exc})", repr(msg.payload[:200])
        self._log(f"status {msg.topic}{' (retained)' if msg.retain else ''} [{verdict}]: {text}",
                  force=not verdict == "signed")

    def _print_record(self, gateway_id: str, _epoch: str, sr: StoredRecord) -> None:
        r = sr.record
        if type(r) is Reading:
            ts = r.meter_ts_ms if r.meter_ts_ms is not None else r.rx_ts_ms
            print(f"{r.meter_id} {r.quantity} {format(r.value, 'f')} {r.unit} {_iso(ts)}",
                  file=self.out, flush=True)

    # ------------------------------------------------------------------ output

    def _log(self, line: str, force: bool = False) -> None:
        if force or not self.opts.quiet:
            print(line, file=self.err, flush=True)

    def _report(self) -> None:
        s = self.verifier.summary()
        if self.opts.json:
            print(json.dumps(s), file=self.out, flush=True)
        else:
            print(human_summary(s, self.ever_connected), file=self.out, flush=True)


def _iso(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds" if ms % 1000 else "seconds").replace(
        "+00:00", "Z")


def _describe(r: FeedResult) -> str:
    """One short stderr line per message."""
    if r.bad_signature or r.malformed:
        what = "MALFORMED" if r.malformed else "BAD SIGNATURE"
        return f"{r.topic}: {what} (kid {r.gateway_id!r}): {r.error}"
    head = f"{r.gateway_id} epoch {r.epoch} seq {r.first_seq}-{r.last_seq}"
    if r.replay:
        return f"{head}: REPLAY rejected (sent_ms {r.sent_ms})"
    line = f"{head}: {len(r.accepted)} new, {r.duplicates} dup"
    if r.conflicts:
        line += f", {r.conflicts} CONFLICTING"
    if r.topic_mismatch:
        line += f" (published on foreign topic {r.topic})"
    return line


def human_summary(s: dict[str, Any], connected: bool = True) -> str:
    def figures(d: dict[str, Any]) -> str:
        return (f"{d['messages']} messages, {d['accepted']} accepted ({d['readings']} readings, "
                f"{d['events']} events, {d['gap_records']} gap records), "
                f"{d['duplicates']} duplicates, {d['gaps']} missing, {d['conflicts']} conflicts, "
                f"{d['replays']} replays, {d['bad_signatures']} bad signatures, "
                f"{d['malformed']} malformed")

    lines = [f"head-end summary: {figures(s)}"]
    for gid, g in s["gateways"].items():
        lines.append(f"  {gid}: {figures(g)}")
        for name, ep in g["epochs"].items():
            miss = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ep["missing_ranges"])
            lines.append(f"    epoch {name}: seq {ep['first_seq']}..{ep['last_seq']}, "
                         f"{ep['gaps']} missing" + (f" [{miss}]" if miss else ""))
    if not connected:
        verdict = "NOT CONNECTED: never reached the broker, nothing was verified"
    elif s["gaps"] or s["conflicts"] or s["replays"] or s["bad_signatures"] or s["malformed"]:
        verdict = "ATTENTION: see the figures above"
    else:
        verdict = "OK: nothing lost, duplicated, forged or replayed"
    lines.append(verdict)
    return "\n".join(lines)

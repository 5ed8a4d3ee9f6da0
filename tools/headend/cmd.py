"""``python -m tools.headend cmd``: sign and send downlink commands, optionally wait for the
gateway's answer on ``.../up/events``.

    python -m tools.headend cmd --pki pki --key cmd.key --gateway gw-0001 diagnostics --wait 20
    python -m tools.headend cmd --pki pki --key cmd.key --fleet reboot --arg mode=service
    python -m tools.headend cmd --pki pki --key cmd.key --gateway gw-0001 \
        ota --bundle dist/gateway-0.2.0.ota [--url https://...] --wait 300 \
        --wait-for ota.committed,ota.rolled_back,ota.failed
    python -m tools.headend cmd keygen cmd.key      # a new command-signing key (0600)

``--seq`` defaults to the current time in ms, so operators need no shared counter; the
gateway only requires it to grow. With ``ota`` and no ``--url`` the bundle is published
once as retained chunks (``{prefix}/fleet/ota/{sha256}/{i}``) that any gateway can fetch and
resume. The last stdout line is JSON: the command sent and the events that answered it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from gateway.fleet.command import FLEET_TARGET, encode_command
from gateway.wire.cose import load_private_key
from gateway.fleet.delivery import chunk_count, chunk_topic
from gateway.model import Event
from gateway.wire.envelope import WILDCARD, EnvelopeError, decode_envelope
from tools.headend.client import load_public_key, tls_context

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
DEFAULT_WAIT_FOR = ("fleet.command_result", "fleet.command_rejected")
DEFAULT_CHUNK = 32 * 1024


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.headend cmd",
                                description="Sign and send a downlink command.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--pki", metavar="DIR", help="dev PKI: ca.pem, headend.pem/.key, "
                   "gateway-sign.pub (to verify the answers)")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--client-key", help="head-end TLS client key (overrides --pki)")
    p.add_argument("--trust", help="gateway envelope public key (overrides --pki)")
    p.add_argument("--key", required=True, help="command-signing private key (Ed25519 PEM)")
    p.add_argument("--prefix", default="meters", help="topic prefix (uplink.topic_prefix)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--gateway", action="append", metavar="ID",
                     help="target gateway (repeatable: one signed command for several)")
    who.add_argument("--fleet", action="store_true", help='every gateway (target "*") on the '
                     "fleet-wide topic")
    p.add_argument("--fleet-topic", help="fleet-wide topic (default {prefix}/fleet/down/cmd)")
    p.add_argument("--id", help="command id (default: random)")
    p.add_argument("--seq", type=int, help="sequence (default: now in ms)")
    p.add_argument("--expires-in", type=float, default=600.0, metavar="S",
                   help="validity in seconds (default 600)")
    p.add_argument("--arg", action="append", default=[], metavar="K=V",
                   help="command argument (V parsed as JSON when it is valid JSON)")
    p.add_argument("--args-json", help="all arguments as one JSON object")
    p.add_argument("--bundle", help="ota: the bundle file (sha256 and size are computed)")
    p.add_argument("--url", help="ota: HTTPS URL of the bundle (default: MQTT chunks)")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK)
    p.add_argument("--config-file", help="set_config: the new config file")
    p.add_argument("--cert-file", help="install_cert: the signed certificate (PEM)")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for the answer events")
    p.add_argument("--wait-for", default=",".join(DEFAULT_WAIT_FOR), metavar="KINDS",
                   help="comma-separated event kinds that end the wait")
    p.add_argument("command", help="diagnostics, read_now, reboot, set_config, rotate_cert, "
                   "install_cert, rotate_key, activate_key, ota")
    return p.parse_args(argv)


def build_args(a: argparse.Namespace) -> dict[str, Any]:
    args: dict[str, Any] = json.loads(a.args_json) if a.args_json else {}
    for kv in a.arg:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ValueError(f"--arg wants K=V, got {kv!r}")
        try:
            args[k] = json.loads(v)
        except ValueError:
            args[k] = v
    if a.command == "ota" and a.bundle:
        data = Path(a.bundle).read_bytes()
        args.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        if a.url:
            args["url"] = a.url
        else:
            args["chunk_size"] = a.chunk_size
    if a.command == "set_config" and a.config_file:
        args["config"] = Path(a.config_file).read_text()
    if a.command == "install_cert" and a.cert_file:
        args["cert"] = Path(a.cert_file).read_text()
    return args


def publish_chunks(client: mqtt.Client, prefix: str, data: bytes, chunk_size: int) -> int:
    """Publish a bundle as retained QoS 1 chunks, once for the whole fleet."""
    sha = hashlib.sha256(data).hexdigest()
    infos = [client.publish(chunk_topic(prefix, sha, i),
                            data[i * chunk_size:(i + 1) * chunk_size], qos=1, retain=True)
             for i in range(chunk_count(len(data), chunk_size))]
    for info in infos:
        info.wait_for_publish(30)
    return len(infos)


def main(argv: Sequence[str]) -> int:
    if list(argv[:1]) == ["keygen"]:
        from tools.ota import keygen
        if len(argv) < 2:
            print("usage: python -m tools.headend cmd keygen KEYFILE", file=sys.stderr)
            return EXIT_USAGE
        key, pub = keygen(argv[1])
        print(json.dumps({"key": str(key), "pub": str(pub)}))
        return EXIT_OK
    a = _parse(argv)
    pki = Path(a.pki) if a.pki else None
    try:
        ca = a.ca or (pki and str(pki / "ca.pem"))
        cert = a.cert or (pki and str(pki / "headend.pem"))
        ckey = a.client_key or (pki and str(pki / "headend.key"))
        if not (ca and cert and ckey):
            raise ValueError("need --pki DIR or all of --ca, --cert and --client-key")
        key = load_private_key(a.key)
        args = build_args(a)
        trust = a.trust or (pki and pki / "gateway-sign.pub")
        gw_pub = load_public_key(trust) if trust and Path(trust).exists() else None
    except (OSError, ValueError) as e:
        print(f"headend cmd: {e}", file=sys.stderr)
        return EXIT_USAGE
    now = time.time_ns() // 1_000_000
    target: Any = FLEET_TARGET if a.fleet else (a.gateway[0] if len(a.gateway) == 1
                                                else list(a.gateway))
    cmd_id = a.id or f"cmd-{secrets.token_hex(6)}"
    try:
        payload = encode_command(key, id=cmd_id, seq=a.seq or now, target=target,
                                 cmd=a.command, args=args, issued_ms=now,
                                 expires_ms=now + int(a.expires_in * 1000))
    except ValueError as e:
        print(f"headend cmd: {e}", file=sys.stderr)
        return EXIT_USAGE
    topic = (a.fleet_topic or f"{a.prefix}/fleet/down/cmd") if a.fleet else None
    topics = [topic] if topic else [f"{a.prefix}/{g}/down/cmd" for g in a.gateway]
    kinds = {k.strip() for k in a.wait_for.split(",") if k.strip()}
    answers: list[dict[str, Any]] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if gw_pub is None:
            return
        try:
            env = decode_envelope(msg.payload, {WILDCARD: gw_pub})
        except EnvelopeError:
            return
        for sr in env.records:
            ev = sr.record
            if type(ev) is not Event or ev.kind not in kinds:
                continue
            if ev.detail.get("id", cmd_id) != cmd_id:
                continue
            answers.append({"gateway": env.gateway_id, "kind": ev.kind, "ts_ms": ev.ts_ms,
                            "detail": _jsonable(ev.detail)})
            print(f"{env.gateway_id}: {ev.kind}: {json.dumps(_jsonable(ev.detail))[:300]}",
                  file=sys.stderr)
            if not a.fleet and len({x['gateway'] for x in answers}) >= len(a.gateway):
                done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"headend-cmd-{secrets.token_hex(4)}", protocol=mqtt.MQTTv311)
    client.tls_set_context(tls_context(ca, cert, ckey))
    client.on_message = on_message
    client.on_subscribe = lambda *_x: subscribed.set()
    try:
        client.connect(a.host, a.port, keepalive=30)
    except (OSError, ValueError) as e:
        print(f"headend cmd: cannot connect to {a.host}:{a.port}: {e}", file=sys.stderr)
        return EXIT_FAILED
    client.loop_start()
    try:
        if a.wait > 0:
            wanted = "+" if a.fleet else None
            subs = [(f"{a.prefix}/{wanted or g}/up/events", 1)
                    for g in ([wanted] if wanted else a.gateway)]
            client.subscribe(subs)
            subscribed.wait(10)
        if a.command == "ota" and a.bundle and not a.url:
            n = publish_chunks(client, a.prefix, Path(a.bundle).read_bytes(), a.chunk_size)
            print(f"published {n} retained chunks", file=sys.stderr)
        infos = [client.publish(t, payload, qos=1) for t in topics]
        for info in infos:
            info.wait_for_publish(30)
        print(f"sent {a.command} {cmd_id} to {', '.join(topics)}", file=sys.stderr)
        timed_out = a.wait > 0 and not done.wait(a.wait) and (not a.fleet or not answers)
    finally:
        client.disconnect()
        client.loop_stop()
    print(json.dumps({"id": cmd_id, "command": a.command, "target": target, "topics": topics,
                      "answers": answers}))
    if timed_out:
        return EXIT_TIMEOUT
    bad = [x for x in answers if x["kind"] == "fleet.command_rejected"
           or x["detail"].get("ok") is False or x["kind"] in ("ota.failed", "ota.rolled_back")]
    return EXIT_FAILED if bad else EXIT_OK


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return v

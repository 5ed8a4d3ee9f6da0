"""Downlink commands end to end: head-end tool -> real mTLS broker -> real gateway process ->
results on up/events. Forged, misdirected, replayed (also across a restart) and expired
commands are rejected and reported, never executed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from cryptography.hazmat.primitives import serialization

from gateway.fleet.command import encode_command
from gateway.wire.cose import load_private_key
from gateway.model import Event, now_ms
from gateway.wire.envelope import EnvelopeError, decode_envelope
from tests.gwproc import ROOT, start_gateway, write_config
from tools.ota import keygen


class EventWatcher:
    """Collects the verified events a gateway publishes on .../up/events."""

    def __init__(self, factory: Callable[..., Any], pki: Path, topic: str = "meters/+/up/events"):
        self.keys = [serialization.load_pem_public_key((pki / "gateway-sign.pub").read_bytes())]
        self.events: list[Event] = []
        self.cond = threading.Condition()
        self.client = factory("headend", client_id=f"watch-{id(self)}",
                              on_message=self._on_message)
        self.client.subscribe(topic, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        for key in list(self.keys):  # a rotated signing key is trusted once announced
            try:
                env = decode_envelope(msg.payload, {"*": key})
                break
            except EnvelopeError:
                continue
        else:
            return
        with self.cond:
            self.events.extend(sr.record for sr in env.records if type(sr.record) is Event)
            self.cond.notify_all()

    def wait(self, pred: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                assert left > 0, "event not seen; got " + ", ".join(
                    f"{e.kind}{e.detail.get('reason', '')}" for e in self.events[-30:])
                self.cond.wait(left)

    def kind(self, kind: str, timeout: float = 30.0, **detail: Any) -> Event:
        return self.wait(lambda e: e.kind == kind and all(
            e.detail.get(k) == v for k, v in detail.items()), timeout)


def fleet_config(tmp: Path, pki: Path, port: int, fleet: dict[str, Any], **kw: Any) -> Path:
    path = write_config(tmp, pki, port, **kw)
    cfg = yaml.safe_load(path.read_text())
    cfg["fleet"] = fleet
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sign(key_path: Path, *, id: str, seq: int, target: Any = "gw-0001", cmd: str = "diagnostics",
         args: dict | None = None, iat: int | None = None, exp: int | None = None) -> bytes:
    now = now_ms()
    return encode_command(load_private_key(key_path), id=id, seq=seq, target=target, cmd=cmd,
                          args=args or {}, issued_ms=iat or now - 1000,
                          expires_ms=exp or now + 60_000)


def test_commands_end_to_end(tmp_path, pki, broker, mqtt_client_factory):
    key, pub = keygen(tmp_path / "cmd.key")
    keygen(tmp_path / "intruder.key")
    cfg = fleet_config(tmp_path, pki, broker.port, {"command_keys": [str(pub)]},
                       drivers=[{"type": "simulated", "name": "sim", "meters": 3,
                                 "interval_s": 1}])
    watch = EventWatcher(mqtt_client_factory, pki)
    sender = mqtt_client_factory("headend", client_id="cmd-sender")
    gw = start_gateway(cfg, tmp_path / "gw.log")
    try:
        assert gw.wait_for_log("uplink: connected", 20), gw.text()
        # The operator's tool: signs, sends, waits for the answer.
        r = subprocess.run([sys.executable, "-m", "tools.headend", "cmd", "--host", "localhost",
                            "--port", str(broker.port), "--pki", str(pki), "--key", str(key),
                            "--gateway", "gw-0001", "--id", "op-1", "--wait", "30",
                            "diagnostics"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr + gw.text()[-2000:]
        [answer] = json.loads(r.stdout.splitlines()[-1])["answers"]
        assert answer["kind"] == "fleet.command_result" and answer["detail"]["ok"] is True
        diag = answer["detail"]["result"]
        assert diag["drivers"]["sim"]["alive"] and diag["uplink"]["connected"]
        assert watch.kind("fleet.command_accepted", id="op-1")

        seq = now_ms() + 10_000  # above the tool's time-based seq
        topic = "meters/gw-0001/down/cmd"
        good = sign(key, id="op-2", seq=seq, cmd="read_now", args={"meters": ["sim-00001"]})
        forged = bytearray(sign(key, id="op-3", seq=seq + 1))
        forged[-1] ^= 1
        for payload in (good, bytes(forged), good,
                        sign(key, id="op-4", seq=seq + 2, target="gw-0002"),
                        sign(key, id="op-5", seq=seq + 3, iat=now_ms() - 20_000,
                             exp=now_ms() - 10_000),
                        sign(tmp_path / "intruder.key", id="op-6", seq=seq + 4)):
            sender.publish(topic, payload, qos=1).wait_for_publish(10)
        res = watch.kind("fleet.command_result", id="op-2")
        assert res.detail["ok"] and res.detail["result"]["read"] == {"sim-00001": 1}
        rejected = lambda reason, **kw: watch.kind("fleet.command_rejected", reason=reason, **kw)
        assert rejected("bad_signature")
        assert rejected("replayed", id="op-2")
        assert rejected("wrong_target", id="op-4")
        assert rejected("expired", id="op-5")
        assert rejected("unknown_key")
        # fleet-wide topic, target "*"
        sender.publish("meters/fleet/down/cmd", sign(key, id="op-7", seq=seq + 5, target="*"),
                       qos=1).wait_for_publish(10)
        assert watch.kind("fleet.command_result", id="op-7").detail["ok"]
        for i in ("op-3", "op-4", "op-5", "op-6"):
            assert not [e for e in watch.events if e.kind == "fleet.command_result"
                        and e.detail.get("id") == i], f"{i} must never run"
    finally:
        assert gw.terminate() == 0, gw.text()
    # The sequence survives a restart: the captured op-2 stays dead.
    gw = start_gateway(cfg, tmp_path / "gw2.log")
    try:
        assert gw.wait_for_log("uplink: connected", 20), gw.text()
        watch.events.clear()
        sender.publish(topic, good, qos=1).wait_for_publish(10)
        assert watch.kind("fleet.command_rejected", reason="replayed", id="op-2")
    finally:
        assert gw.terminate() == 0, gw.text()


def test_world_readable_private_key_refuses_to_start(tmp_path, pki):
    import shutil
    key = tmp_path / "gateway.key"
    shutil.copy(pki / "gateway.key", key)
    key.chmod(0o644)
    cfg = write_config(tmp_path, pki, 1, uplink={"key": str(key)})
    gw = start_gateway(cfg, tmp_path / "gw.log")
    assert gw.p.wait(30) != 0
    gw.terminate()
    assert "world-readable" in gw.text()

"""OTA for real in a temporary A/B tree: the launcher and the runtime run as subprocesses
(restarted by a small supervisor standing in for systemd), bundles travel as retained MQTT
chunks through the real broker, and the outcome arrives as events on up/events.

* update: download interrupted by a SIGKILL ("power cut") resumes after the restart, the new
  release starts on trial, passes its health checks and is committed; then a downgrade and
  a tampered bundle are refused;
* rollback 1: the new release starts but a driver dies -> health check fails -> back to A;
* rollback 2: the new release crashes at start-up -> the launcher gives up after
  max_start_attempts -> back to A.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.fleet.bundle import build_release, make_manifest, sign_bundle
from gateway.wire.cose import load_private_key
from gateway.fleet.delivery import chunk_count, chunk_topic
from gateway.model import now_ms
from tests.gwproc import ROOT, Restarter
from tests.test_fleet_commands import EventWatcher, fleet_config, sign
from tools.ota import keygen

CHUNK = 16 * 1024


def Supervisor(tmp: Path, root: Path, state: Path, cfg: Path) -> Restarter:
    """Restarts the launcher whenever it exits, like systemd's Restart=always."""
    return Restarter([sys.executable, str(root / "launcher.py"), "--root", str(root),
                      "--state-dir", str(state), "--python", sys.executable, "--",
                      "run", "-c", str(cfg)], tmp, pause_s=0.3)


@pytest.fixture
def tree(tmp_path: Path, pki: Path, broker: Any) -> dict[str, Any]:
    """releases/A holding this checkout as release 0.1.0, current -> releases/A, keys, config."""
    root, state = tmp_path / "opt", tmp_path / "var" / "fleet"
    slot = root / "releases" / "A"
    shutil.copytree(ROOT / "gateway", slot / "gateway",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(ROOT / "boards", slot / "boards")
    init = slot / "gateway" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "0.1.0" #"'))
    (slot / "RELEASE.json").write_text(json.dumps({"version": "0.1.0", "security_version": 1}))
    os.symlink("releases/A", root / "current")
    shutil.copy(ROOT / "gateway" / "fleet" / "launcher.py", root / "launcher.py")  # as install.sh
    keys = tmp_path / "keys"
    keys.mkdir()
    cmd_key, cmd_pub = keygen(keys / "cmd.key")
    rel_key, rel_pub = keygen(keys / "release.key")
    (tmp_path / "var").mkdir(exist_ok=True)
    cfg = fleet_config(tmp_path / "var", pki, broker.port, {
        "command_keys": [str(cmd_pub)], "release_keys": [str(rel_pub)],
        "releases_dir": str(root), "state_dir": str(state), "health_deadline_s": 30,
        "health_settle_s": 1, "max_start_attempts": 2},
        drivers=[{"type": "simulated", "name": "sim", "meters": 3, "interval_s": 0.5}])
    return {"root": root, "state": state, "cfg": cfg, "cmd_key": cmd_key, "rel_key": rel_key,
            "tmp": tmp_path, "port": broker.port}


def make_bundle(tree: dict[str, Any], version: str, security: int,
                patch: dict[str, str] | None = None, name: str = "b") -> Path:
    src = tree["tmp"] / f"src-{name}"
    shutil.copytree(ROOT / "gateway", src / "gateway",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(ROOT / "boards", src / "boards")
    for rel, text in (patch or {}).items():
        (src / rel).write_text(text)
    tar = tree["tmp"] / f"{name}.tar.gz"
    build_release(src, version, tar, security)
    out = tree["tmp"] / f"{name}.ota"
    sign_bundle(make_manifest(tar, version, security, "0.1.0"), tar,
                load_private_key(tree["rel_key"]), out)
    return out


def send_ota(tree: dict[str, Any], sender: Any, bundle: Path, id: str, publish: bool = True,
             chunks: range | None = None) -> None:
    data = bundle.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if publish:
        for i in chunks if chunks is not None else range(chunk_count(len(data), CHUNK)):
            sender.publish(chunk_topic("meters", sha, i), data[i * CHUNK:(i + 1) * CHUNK],
                           qos=1, retain=True).wait_for_publish(10)
    cmd = sign(tree["cmd_key"], id=id, seq=now_ms(), cmd="ota",
               args={"sha256": sha, "size": len(data), "chunk_size": CHUNK})
    sender.publish("meters/gw-0001/down/cmd", cmd, qos=1).wait_for_publish(10)


def current(tree: dict[str, Any]) -> str:
    return os.readlink(tree["root"] / "current")


def test_update_resumes_after_power_cut_and_commits(tree, pki, mqtt_client_factory):
    watch = EventWatcher(mqtt_client_factory, pki)
    sender = mqtt_client_factory("headend", client_id="ota-sender")
    sup = Supervisor(tree["tmp"], tree["root"], tree["state"], tree["cfg"])
    try:
        watch.kind("uplink.connected", timeout=30)
        bundle = make_bundle(tree, "0.2.0", 2)
        total = chunk_count(bundle.stat().st_size, CHUNK)
        assert total >= 4
        send_ota(tree, sender, bundle, "up-1", chunks=range(total // 2))  # half is out there
        watch.kind("ota.downloading", id="up-1")
        downloads = tree["state"] / "downloads"
        deadline = time.monotonic() + 30
        while len(list(downloads.glob("*/0*"))) < total // 2:
            assert time.monotonic() < deadline, sup.logs()
            time.sleep(0.1)
        sup.kill()  # power cut in the middle of the download
        data = bundle.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        for i in range(total // 2, total):
            sender.publish(chunk_topic("meters", sha, i), data[i * CHUNK:(i + 1) * CHUNK],
                           qos=1, retain=True).wait_for_publish(10)
        watch.kind("ota.resumed", id="up-1")
        inst = watch.kind("ota.installed", id="up-1")
        assert inst.detail["slot"] == "B"
        done = watch.kind("ota.committed", id="up-1", timeout=60)
        assert done.detail["to_version"] == "0.2.0" and done.detail["from_version"] == "0.1.0"
        assert current(tree) == "releases/B"
        assert json.loads((tree["state"] / "installed.json").read_text())["security_version"] == 2
        started = [e for e in watch.events if e.kind == "gateway.started"]
        assert started[-1].detail["firmware"] == "0.2.0"
        assert sup.exits[:2] == [-signal.SIGKILL, 75]

        # Anti-rollback: security version 1 < installed 2.
        old = make_bundle(tree, "0.1.9", 1, name="old")
        send_ota(tree, sender, old, "up-2")
        assert watch.kind("ota.failed", id="up-2").detail["reason"] == "downgrade"
        # Tampered in transit, with a command that vouches for the tampered file's hash:
        # the signed manifest still catches it. Sent with the operator's tool.
        evil = tree["tmp"] / "evil.ota"
        raw = bytearray(make_bundle(tree, "0.3.0", 3, name="evil").read_bytes())
        raw[len(raw) // 2] ^= 1
        evil.write_bytes(bytes(raw))
        r = subprocess.run([sys.executable, "-m", "tools.headend", "cmd", "--host", "localhost",
                            "--port", str(tree["port"]), "--pki", str(pki),
                            "--key", str(tree["cmd_key"]), "--gateway", "gw-0001",
                            "--id", "up-3", "--bundle", str(evil), "--chunk-size", str(CHUNK),
                            "--wait", "60", "--wait-for", "ota.failed,ota.installed", "ota"],
                           cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert r.returncode == 1, r.stderr
        [ans] = json.loads(r.stdout.splitlines()[-1])["answers"]
        assert ans["kind"] == "ota.failed" and ans["detail"]["reason"] == "digest_mismatch"
        assert current(tree) == "releases/B"
    finally:
        sup.stop()


CRASHING_DRIVER = '''
from .base import Driver
class Broken(Driver):
    def loop(self):
        self.stopping.wait(0.3)
        raise RuntimeError("release 0.2.0 bug: driver dies")
DRIVER = Broken
'''


def test_failed_health_check_rolls_back(tree, pki, mqtt_client_factory):
    watch = EventWatcher(mqtt_client_factory, pki)
    sender = mqtt_client_factory("headend", client_id="ota-sender")
    sup = Supervisor(tree["tmp"], tree["root"], tree["state"], tree["cfg"])
    try:
        watch.kind("uplink.connected", timeout=30)
        bundle = make_bundle(tree, "0.2.0", 2,
                             patch={"gateway/drivers/simulated.py": CRASHING_DRIVER})
        send_ota(tree, sender, bundle, "up-1")
        watch.kind("ota.installed", id="up-1")
        ev = watch.kind("ota.rolled_back", id="up-1", timeout=60)
        assert "driver sim stopped" in ev.detail["reason"]
        assert current(tree) == "releases/A"
        deadline = time.monotonic() + 30
        while not [e for e in watch.events if e.kind == "gateway.started"
                   and e.detail["firmware"] == "0.1.0" and e.ts_ms > ev.ts_ms]:
            assert time.monotonic() < deadline, sup.logs()
            time.sleep(0.1)
        assert not (tree["state"] / "installed.json").exists()
    finally:
        sup.stop()


def test_release_that_crashes_at_start_is_rolled_back_by_the_launcher(tree, pki,
                                                                      mqtt_client_factory):
    watch = EventWatcher(mqtt_client_factory, pki)
    sender = mqtt_client_factory("headend", client_id="ota-sender")
    sup = Supervisor(tree["tmp"], tree["root"], tree["state"], tree["cfg"])
    try:
        watch.kind("uplink.connected", timeout=30)
        bundle = make_bundle(tree, "0.2.0", 2, patch={
            "gateway/__main__.py": "raise SystemExit('release 0.2.0: broken at import')\n"})
        send_ota(tree, sender, bundle, "up-1")
        watch.kind("ota.installed", id="up-1")
        ev = watch.kind("ota.rolled_back", id="up-1", timeout=60)
        assert "2 starts" in ev.detail["reason"] and ev.detail["attempts"] == 2
        assert current(tree) == "releases/A"
        assert sup.exits[:3] == [75, 1, 1], sup.exits
        assert "broken at import" in sup.logs()
    finally:
        sup.stop()

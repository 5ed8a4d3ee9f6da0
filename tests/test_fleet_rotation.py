"""Commands that change the gateway itself, end to end with restarts (a supervisor stands in
for systemd): client certificate rotation (key made on the gateway, CSR up, certificate down),
signing key rotation, service restart, and a new config that cannot reach the broker and is
rolled back by its failed health check."""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.model import now_ms
from tests.gwproc import Restarter
from tests.test_fleet_commands import EventWatcher, fleet_config, sign
from tools.ota import keygen


def issue(csr_pem: str, pki: Path) -> str:
    """The head-end's CA signs the gateway's CSR."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.subject)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_credentials_restart_and_config_rollback(tmp_path, pki, broker, mqtt_client_factory):
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("gateway.pem", "gateway.key", "gateway-sign.key"):
        shutil.copy2(pki / name, keys / name)
    cmd_key, cmd_pub = keygen(keys / "cmd.key")
    cfg = fleet_config(tmp_path, pki, broker.port,
                       {"command_keys": [str(cmd_pub)], "health_deadline_s": 4,
                        "health_settle_s": 0.5},
                       uplink={"cert": str(keys / "gateway.pem"), "key": str(keys / "gateway.key"),
                               "signing_key": str(keys / "gateway-sign.key")},
                       drivers=[{"type": "simulated", "name": "sim", "meters": 2,
                                 "interval_s": 1}])
    watch = EventWatcher(mqtt_client_factory, pki)
    sender = mqtt_client_factory("headend", client_id="rot-sender")
    seq = [now_ms()]

    def send(id: str, cmd: str, **args: Any) -> None:
        seq[0] += 1
        sender.publish("meters/gw-0001/down/cmd", sign(cmd_key, id=id, seq=seq[0], cmd=cmd,
                                                       args=args), qos=1).wait_for_publish(10)

    def result(id: str, timeout: float = 30) -> dict:
        ev = watch.kind("fleet.command_result", id=id, timeout=timeout)
        assert ev.detail["ok"], ev.detail
        return ev.detail["result"]

    sup = Restarter([sys.executable, "-m", "gateway", "run", "-c", str(cfg)], tmp_path)
    try:
        watch.kind("uplink.connected")
        # 1. client certificate: the key never leaves the gateway
        old_key = (keys / "gateway.key").read_bytes()
        send("rc-1", "rotate_cert")
        csr = result("rc-1")["csr"]
        assert "PRIVATE" not in csr and (keys / "gateway.key.new").stat().st_mode & 0o077 == 0
        send("rc-2", "install_cert", cert=issue(csr, pki))
        result("rc-2")
        ok = watch.kind("credentials.committed", id="rc-2", timeout=40)
        assert ok.detail["what"] == "client_cert"
        assert (keys / "gateway.key").read_bytes() != old_key
        assert (keys / "gateway.key").stat().st_mode & 0o777 == 0o600
        # 2. envelope signing key: announced first (signed by the old key), then activated
        send("rk-1", "rotate_key")
        r = result("rk-1")
        watch.keys.append(serialization.load_pem_public_key(r["public_key"].encode()))
        send("rk-2", "activate_key", key_id=r["key_id"])
        result("rk-2")
        assert watch.kind("credentials.committed", id="rk-2", timeout=40).detail["what"] == \
            "signing_key"
        # 3. a config whose broker port is wrong: valid YAML, fails its health check
        good_text = cfg.read_text()
        bad = yaml.safe_load(good_text)
        bad["uplink"]["port"] = 1
        send("sc-1", "set_config", config=yaml.safe_dump(bad))
        assert result("sc-1")["applied"] == "restart"
        back = watch.kind("config.rolled_back", id="sc-1", timeout=60)
        assert "broker not reachable" in back.detail["reason"]
        assert cfg.read_text() == good_text
        # 4. a driver-only change is applied hot, without a restart
        exits = len(sup.exits)
        hot = yaml.safe_load(good_text)
        hot["drivers"][0]["meters"] = 3
        send("sc-2", "set_config", config=yaml.safe_dump(hot))
        assert result("sc-2")["applied"] == "hot"
        assert watch.kind("config.committed", id="sc-2")
        assert yaml.safe_load(cfg.read_text())["drivers"][0]["meters"] == 3
        # 5. an invalid config is refused with the loader's message; nothing changes
        send("sc-3", "set_config", config="gateway: {id: gw-0001}\n")
        ev = watch.kind("fleet.command_result", id="sc-3")
        assert not ev.detail["ok"] and "required section is missing" in ev.detail["error"]
        assert len(sup.exits) == exits
        # 6. restart the service
        send("rb-1", "reboot", mode="service")
        result("rb-1")
        watch.wait(lambda e: e.kind == "gateway.started" and e.ts_ms > ev.ts_ms)
        assert sup.exits[exits] == 75
    finally:
        sup.stop()

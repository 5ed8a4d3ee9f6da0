"""The Prometheus endpoint of a real gateway (simulated meters, real broker), and the
``metrics.listen`` option."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, load_config
from tools.broker import free_port

from .configs import config_with_driver
from .gwproc import start_gateway, write_config
from .waiting import wait_for

SAMPLE = re.compile(r'^([a-z_]+)(\{[^}]*\})? (-?[0-9.e+]+)$')


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE "))
            continue
        m = SAMPLE.match(line)
        assert m, f"not exposition format: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def test_metrics_of_a_running_gateway(tmp_path: Path, pki: Path, module_broker) -> None:
    cfg_path = write_config(tmp_path, pki, module_broker.port,
                            drivers=[{"type": "simulated", "name": "sim", "meters": 3,
                                      "interval_s": 0.2}])
    cfg = yaml.safe_load(cfg_path.read_text())
    port = free_port()
    cfg["metrics"] = {"listen": f"127.0.0.1:{port}"}
    cfg["logging"] = {"format": "json"}
    cfg_path.write_text(yaml.safe_dump(cfg))
    gw = start_gateway(cfg_path, tmp_path / "gw.log")
    try:
        assert gw.wait_for_log("metrics: serving Prometheus text", 30), gw.text()[-2000:]

        def acked() -> dict[str, float] | None:
            m = _scrape(port)
            return m if m.get("gateway_uplink_records_acked_total", 0) >= 10 else None
        m = wait_for(acked, timeout=30)
        assert m, gw.text()[-2000:]
        assert m['gateway_uplink_connected{broker="localhost:%d"}' % module_broker.port] == 1
        assert m["gateway_store_records_committed_total"] >= m["gateway_uplink_records_acked_total"]
        assert m['gateway_bus_up{bus="sim",type="simulated"}'] == 1
        seen = [k for k in m if k.startswith("gateway_meter_last_seen_timestamp_seconds")]
        assert len(seen) == 3
        assert all('bus="sim"' in k for k in seen)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
        assert e.value.code == 404
    finally:
        assert gw.terminate() == 0
    lines = [l for l in gw.text().splitlines() if l.strip()]
    assert lines and all(json.loads(l)["comp"] for l in lines)  # logging.format: json


@pytest.mark.parametrize("written,parsed", [
    ("9105", ("127.0.0.1", 9105)), ('"127.0.0.1:9105"', ("127.0.0.1", 9105)),
    ('"[::1]:9200"', ("::1", 9200)), ('"0.0.0.0:9105"', ("0.0.0.0", 9105))])
def test_metrics_listen_forms(tmp_path: Path, written: str, parsed: tuple[str, int]) -> None:
    p = config_with_driver(tmp_path, "  - {type: simulated, name: sim}\n")
    p.write_text(p.read_text() + f"metrics: {{listen: {written}}}\n")
    assert load_config(p, check_files=False).metrics.listen == parsed


@pytest.mark.parametrize("written", ["99999", '"host:12"', '"127.0.0.1:"', "true", '"1.2.3:5"'])
def test_metrics_listen_errors_name_the_line(tmp_path: Path, written: str) -> None:
    p = config_with_driver(tmp_path, "  - {type: simulated, name: sim}\n")
    p.write_text(p.read_text() + f"metrics: {{listen: {written}}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, check_files=False)
    assert any(i.key_path == "metrics.listen" and i.line == 6 for i in e.value.issues), e.value.issues


def test_metrics_off_by_default(tmp_path: Path) -> None:
    p = config_with_driver(tmp_path, "  - {type: simulated, name: sim}\n")
    assert load_config(p, check_files=False).metrics.listen is None

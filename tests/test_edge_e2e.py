"""The edge inside the real gateway process: diagnostics published on up/diag through the
store and verified by the head-end; `gateway diag` reads the table after a clean stop."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import yaml

from gateway.store import Store
from tests.gwproc import ROOT, headend_summary, start_gateway, start_headend, write_config


def test_diag_snapshots_reach_the_headend_on_up_diag(tmp_path, pki, broker):
    head = start_headend(pki, broker.port, tmp_path / "headend.log", "--until-idle", "3")
    cfg = write_config(tmp_path, pki, broker.port,
                       drivers=[{"type": "simulated", "name": "sim", "meters": 20,
                                 "interval_s": 0.1}])
    doc = yaml.safe_load(cfg.read_text())
    doc["edge"] = {"interval_s": 60, "diag_interval_s": 1, "clock": {"assume_synced": True}}
    cfg.write_text(yaml.safe_dump(doc))
    gw = start_gateway(cfg, tmp_path / "gw.log")
    assert gw.wait_for_log("uplink: connected", 15), gw.text()
    assert gw.wait_for_log("edge: boot reason first_start", 5), gw.text()
    time.sleep(3)
    assert gw.terminate() == 0, gw.text()
    summary = headend_summary(head)
    with Store(tmp_path / "store.db") as s:
        last_seq, depth = s.stats().last_seq, s.stats().depth
    assert depth == 0 and summary["accepted"] == last_seq
    assert summary["gaps"] == 0 and summary["bad_signatures"] == 0
    assert summary["topic_mismatches"] == 0
    # periodic snapshots and the one at stop (gateway + 20 meters = 21 rows)
    assert summary["diag"] >= 21 + 2
    assert summary["readings"] >= 20 * 10

    out = subprocess.run([sys.executable, "-m", "gateway", "diag", "-c", str(cfg), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    table = json.loads(out.stdout)
    assert len(table["meters"]) == 20 and table["run"]["clean_stop"] is True
    assert table["gateway"]["broker_connected"] in (True, False)
    assert all(m["reads_ok"] >= 10 for m in table["meters"].values())

"""A load-profile read killed with SIGKILL mid-way resumes exactly where it stopped: the real
gateway process, the dlms driver, the gurux simulator on a pty (which outlives the
gateway), the real broker and the head-end verifier. No duplicate, no hole."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time

import cbor2

from tests.gwproc import start_gateway, start_headend, write_config
from tests.waiting import wait_for as _wait

PERIOD_S = 60
HISTORY_S = 4 * 3600


def _cursor(db, name="profile:1-0:99.1.0"):
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT value FROM cursors WHERE meter_id='m17' AND name=?",
                              (name,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return cbor2.loads(row[0]) if row else None


def test_sigkill_mid_profile_read_no_duplicate_no_hole(tmp_path, pki, broker):
    from tools.sim.dlms import start
    sim = start(1, period_s=PERIOD_S, history_s=HISTORY_S, delay_s=0.03)
    try:
        head = start_headend(pki, broker.port, tmp_path / "headend.log", "--until-idle", "8",
                             "--print-readings")
        assert head.wait_for_log("subscribed", 15), head.text()
        meter = {"id": "m17", "physical": 17, "clock": False, "interval_s": 3600,
                 "profiles": ["1-0:99.1.0"], "profile_backfill_s": HISTORY_S,
                 "profile_span_s": 900}
        cfg = write_config(tmp_path, pki, broker.port, drivers=[{
            "type": "dlms", "name": "rs485", "serial": {"port": sim.device},
            "reply_timeout_ms": 1000, "meters": [meter]}])
        db = tmp_path / "store.db"
        gw = start_gateway(cfg, tmp_path / "gw1.log")
        first = _wait(lambda: _cursor(db), 30)
        assert first, gw.text()
        gw.kill()  # SIGKILL in the middle of the range read
        killed_at = _cursor(db)
        served_before = sim.server(17).profile_rows_served
        gw = start_gateway(cfg, tmp_path / "gw2.log")
        now_row = int(time.time()) // PERIOD_S * PERIOD_S * 1000
        final = _wait(lambda: (c := _cursor(db)) and c >= now_row and c, 60)
        assert final, gw.text()
        time.sleep(1)
        assert gw.terminate() == 0, gw.text()
        final = _cursor(db)  # a period boundary may have passed meanwhile: one more row
        out = head.stdout(90)
    finally:
        sim.stop()
    lines = [l for l in out.splitlines() if l.strip()]
    summary = json.loads(lines[-1])
    assert summary["gaps"] == 0 and summary["conflicts"] == 0 and summary["bad_signatures"] == 0
    stamps = []
    for line in lines[:-1]:
        meter, quantity, value, unit, ts = line.split()
        if quantity == "1-0:1.8.0":
            stamps.append(int(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000))
    assert len(stamps) == len(set(stamps)), "a profile row was delivered twice"
    assert killed_at < final and served_before > 0
    expected = set(range(min(stamps), final + 1, PERIOD_S * 1000))
    assert set(stamps) == expected, "a hole in the delivered profile"
    assert len(stamps) >= HISTORY_S // PERIOD_S - 2

"""Every diagnostic rule fires on realistic data and stays quiet on normal data; snapshots
go through the store; `gateway diag` prints the table from it."""

from __future__ import annotations

import json
from dataclasses import replace

import yaml

from gateway.config import DiagThresholds
from gateway.edge.clock import STA_UNSYNC, TIME_ERROR, Clock, KernelClock, read_kernel_clock
from gateway.edge.diagnostics import Diagnostics
from gateway.edge.gateway_row import board_metrics, boot_reason
from gateway.model import QUALITY_HISTORIC, Event
from tests.edge_support import (MIN, Q, T0, FakeTime, diags, events, make_pipeline,
                                     open_store, reading, stored)

H = 60 * MIN


def failure(meter: str, ts: int, kind: str = "meter.read_failed", **detail) -> Event:
    return Event(kind, ts, "bus0", meter, "warning", {"reason": "no answer within 2.0 s",
                                                     **detail})


def kinds(evs) -> list[str]:
    return [e.kind for e in evs]


def run_normal_day(pipe, ft, meter="m1", unit="Wh", q="1-0:1.8.0", hours=26,
                   flow=lambda i: 25) -> int:
    """A healthy meter read every 15 minutes with a good radio link."""
    v = 1000
    for i in range(hours * 4):
        ev = Event("meter.status", ft.w, "bus0", meter, "info",
                   {"rssi_dbm": -67, "lqi": 200, "latency_ms": 180, "battery_low": False})
        pipe.submit([reading(meter, v, ft.w, ft.w + 200, q=q, unit=unit), ev]).result(10)
        v += flow(i)
        ft.advance(Q)
    return v


def test_normal_data_raises_nothing(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    # electricity, and water with a quiet night (zero-flow hours from 01:00 to 05:00)
    run_normal_day(pipe, ft, "e1")
    ft.w = ft.m = T0  # same day again for the water meter
    ft.m = 5_000_000
    run_normal_day(pipe, ft, "w1", unit="m3", q="8-0:1.0.0",
                   flow=lambda i: 0 if 4 <= (i // 4) % 24 < 9 else 3)
    pipe.publish_diagnostics().result(10)
    recs = stored(store)
    assert [e for e in events(recs, "diag.") if e.meter_id is not None] == []
    m = {d.meter_id: d.metrics for d in diags(recs) if d.scope == "meter"}
    assert m["e1"]["reads_ok"] == 104 and m["e1"]["success_ratio"] == 1.0
    assert m["e1"]["rssi_dbm"]["mean"] == -67 and m["e1"]["alarms"] == {}
    assert m["w1"]["leak_since_ms"] is None
    store.close()


def test_consecutive_failures_raise_once_with_since_and_clear_on_success(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    pipe.submit([reading("m1", 1, T0, T0)]).result(10)
    for i in range(1, 6):
        pipe.submit([failure("m1", T0 + i * Q)]).result(10)
    pipe.submit([reading("m1", 2, T0 + 6 * Q, T0 + 6 * Q)]).result(10)
    evs = events(stored(store), "diag.")
    assert kinds(evs) == ["diag.read_failures", "diag.read_failures.cleared"]
    raised = evs[0].detail
    assert raised["since_ms"] == T0 + Q and raised["evidence"]["consecutive_failures"] == 3
    assert raised["evidence"]["last_ok_ms"] == T0 and "no answer" in raised["evidence"]["last_error"]
    assert evs[0].meter_id == "m1" and raised["threshold"] == 3
    store.close()


def test_low_success_ratio_and_silent_meter_at_the_snapshot(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    for i in range(12):  # every third read fails: 8 of 12 succeed = 67 %
        ft.advance(Q)
        batch = [failure("m1", ft.w)] if i % 3 == 2 else [reading("m1", i, ft.w, ft.w)]
        pipe.submit(batch).result(10)
    ft.advance(3 * H)  # then nothing for 3 hours
    pipe.publish_diagnostics().result(10)
    evs = {e.kind: e for e in events(stored(store), "diag.")}
    assert evs["diag.low_success_ratio"].detail["evidence"]["reads_ok"] == 8
    assert evs["diag.silent"].detail["since_ms"] == T0 + 11 * Q
    store.close()


def test_crc_and_decrypt_failures_per_interval(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    for i in range(5):
        pipe.submit([failure("m1", T0 + i, "meter.crc_error", retries=2)]).result(10)
        pipe.submit([reading("m1", i, T0 + i, T0 + i)]).result(10)  # retries succeed
    pipe.submit([failure("m2", T0, "meter.decrypt_failed", reason="MAC mismatch")]).result(10)
    pipe.publish_diagnostics().result(10)  # the interval ends: still over the limit
    pipe.publish_diagnostics().result(10)  # a quiet interval: cleared
    recs = stored(store)
    evs = kinds(events(recs, "diag."))
    assert evs.count("diag.crc_errors") == 1 and evs.count("diag.crc_errors.cleared") == 1
    assert evs.count("diag.decrypt_failures") == 1
    assert "diag.read_failures" not in evs  # never 3 in a row
    m1 = [d.metrics for d in diags(recs) if d.meter_id == "m1"][0]
    assert m1["crc_errors"] == 5 and m1["retries"] == 10
    store.close()


def test_weak_signal_from_event_detail_or_quality(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    for i, rssi in enumerate([-101, -104, -108]):
        pipe.submit([reading("w1", i, T0 + i * Q, T0 + i * Q, quality=(f"rssi={rssi}",))]).result(10)
    pipe.submit([Event("meter.status", T0, "bus0", "z1", "info", {"rssi": -62, "lqi": 230})])
    pipe.publish_diagnostics().result(10)
    recs = stored(store)
    (ev,) = events(recs, "diag.weak_signal")
    assert ev.meter_id == "w1" and ev.detail["evidence"]["rssi_dbm"]["min"] == -108
    z1 = [d.metrics for d in diags(recs) if d.meter_id == "z1"][0]
    assert z1["lqi"]["last"] == 230
    store.close()


def test_meter_clock_drift_only_judged_on_a_synced_gateway_clock(tmp_path) -> None:
    ft = FakeTime(synced=False)
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    pipe.submit([reading("m1", 1, ft.w - 10 * MIN, ft.w)]).result(10)
    assert events(stored(store), "diag.clock_drift") == []
    ft.synced = True
    ft.advance(Q)
    pipe.submit([reading("m1", 2, ft.w - 10 * MIN, ft.w)]).result(10)
    (ev,) = events(stored(store), "diag.clock_drift")
    assert ev.detail["evidence"]["drift_ms"] == -10 * MIN
    store.close()


def test_stored_values_with_their_own_old_timestamps_are_not_clock_drift(tmp_path) -> None:
    """A load-profile row or an M-Bus due-date value is stamped when the meter captured it:
    old by design, flagged historic, never a clock alarm (the meter's current time is)."""
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    pipe.submit([reading("m1", 5, ft.w - 40 * 24 * 60 * MIN, ft.w, q="1-0:1.8.0/storage=1",
                         quality=(QUALITY_HISTORIC,)),
                 reading("m1", 7, ft.w - 15 * MIN, ft.w, q="1-0:1.8.0",
                         quality=(QUALITY_HISTORIC,))]).result(10)
    assert events(stored(store), "diag.clock_drift") == []
    pipe.submit([reading("m1", 9, ft.w - 10 * MIN, ft.w)]).result(10)  # the meter clock now
    (ev,) = events(stored(store), "diag.clock_drift")
    assert ev.detail["evidence"]["drift_ms"] == -10 * MIN
    store.close()


def test_stuck_register_while_the_meter_answers(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft, diagnostics=replace(DiagThresholds(), stuck_after_s=6 * 3600))
    for i in range(30):  # 7.5 h of reads, value frozen after the first hour
        v = 100 + min(i, 4)
        pipe.submit([reading("m1", v, T0 + i * Q, T0 + i * Q)]).result(10)
    pipe.submit([reading("m1", 105, T0 + 30 * Q, T0 + 30 * Q)]).result(10)
    evs = events(stored(store), "diag.stuck_register")
    assert kinds(evs) == ["diag.stuck_register", "diag.stuck_register.cleared"]
    assert evs[0].detail["since_ms"] == T0 + 4 * Q
    assert evs[0].detail["evidence"]["register"] == "1-0:1.8.0"
    store.close()


def test_undated_stored_values_are_neither_stuck_nor_delta_sources(tmp_path) -> None:
    """An M-Bus storage-1 value without a date record stays constant until the next due
    date by design: forwarded as it is, no deltas, no stuck alarm."""
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft, diagnostics=replace(DiagThresholds(), stuck_after_s=3600))
    for i in range(12):  # 3 h of reads of the same stored value
        pipe.submit([reading("m1", 500, None, T0 + i * Q, q="Energy/storage=1",
                             quality=(QUALITY_HISTORIC,))]).result(10)
    recs = stored(store)
    assert events(recs, "diag.stuck_register") == []
    assert not [r for r in recs if "/delta/" in getattr(r, "quantity", "")]
    assert len([r for r in recs if getattr(r, "quantity", "") == "Energy/storage=1"]) >= 1
    store.close()


def test_leak_no_zero_flow_hour_in_24_hours(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    run_normal_day(pipe, ft, "w1", unit="m3", q="8-0:1.0.0", hours=25, flow=lambda i: 1)
    evs = events(stored(store), "diag.leak_suspected")
    assert len(evs) == 1 and evs[0].meter_id == "w1"
    assert evs[0].detail["since_ms"] == T0
    assert evs[0].detail["evidence"]["register"] == "8-0:1.0.0"
    store.close()


def test_reverse_flow_from_register_status_or_negative_flow(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    th = replace(DiagThresholds(), reverse_registers=("8-0:1.0.1",))
    pipe = make_pipeline(store, ft, diagnostics=th)
    pipe.submit([reading("w1", 5, T0, T0, q="8-0:1.0.1", unit="l")]).result(10)
    pipe.submit([reading("w1", 5, T0 + Q, T0 + Q, q="8-0:1.0.1", unit="l")]).result(10)
    pipe.submit([reading("w1", 9, T0 + 2 * Q, T0 + 2 * Q, q="8-0:1.0.1", unit="l")]).result(10)
    pipe.submit([reading("w2", -12, T0, T0, q="8-0:2.0.0", unit="m3/h", e=-3)]).result(10)
    pipe.submit([Event("meter.status", T0, "bus0", "w3", "info",
                       {"flags": ["reverse_flow", "tamper"]})]).result(10)
    evs = events(stored(store), "diag.")
    assert sorted((e.kind, e.meter_id) for e in evs) == [
        ("diag.reverse_flow", "w1"), ("diag.reverse_flow", "w2"), ("diag.reverse_flow", "w3"),
        ("diag.tamper", "w3")]
    store.close()


def test_battery_and_tamper_flags_raise_and_clear(tmp_path) -> None:
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    for flags in ({"battery_low": True}, {"battery_low": True}, {"battery_low": False}):
        pipe.submit([Event("meter.status", T0, "bus0", "g1", "info", flags)]).result(10)
    assert kinds(events(stored(store), "diag.")) == ["diag.battery_low",
                                                     "diag.battery_low.cleared"]
    store.close()


def test_gateway_rules_fire_on_thresholds_and_stay_quiet_otherwise() -> None:
    d = Diagnostics(DiagThresholds())
    ok = {"store_depth": 12, "oldest_unsent_s": 4, "disk_free_bytes": 2 * 2**30,
          "mem_available_bytes": 300 * 2**20, "temperature_c": 51.2, "broker_connected": True}
    assert d.gateway_rules(ok, T0) == []
    bad = {"store_depth": 250_000, "oldest_unsent_s": 7200, "disk_free_bytes": 10 * 2**20,
           "mem_available_bytes": 8 * 2**20, "temperature_c": 84.5, "broker_connected": False}
    evs = d.gateway_rules(bad, T0)
    assert sorted(kinds(evs)) == ["diag.disk_low", "diag.memory_low", "diag.store_backlog",
                                  "diag.temperature_high", "diag.uplink_lagging"]
    assert all(e.meter_id is None and e.detail["evidence"] for e in evs)
    assert d.gateway_rules(bad, T0 + 1) == []  # raised once, not at every snapshot
    assert len(d.gateway_rules(ok, T0 + 2)) == 5  # all cleared


def test_driver_meter_stats_feed_the_table() -> None:
    d = Diagnostics(DiagThresholds())
    d.tick(T0, {"m9": {"success": 4, "failures": 1, "rssi_dbm": -99.5, "nested": {"x": 1}}})
    m = d.meters["m9"].metrics()
    assert m["driver"] == {"success": 4, "failures": 1, "rssi_dbm": -99.5}
    assert m["rssi_dbm"]["last"] == -99.5


def test_boot_reason() -> None:
    assert boot_reason(None, "b1") == "first_start"
    assert boot_reason({"boot_id": "b1", "clean_stop": True}, "b1") == "restart"
    assert boot_reason({"boot_id": "b1", "clean_stop": False}, "b1") == "crash"
    assert boot_reason({"boot_id": "b0", "clean_stop": True}, "b1") in ("reboot", "watchdog")
    assert boot_reason({"boot_id": "b0", "clean_stop": False}, "b1") in ("power_loss",
                                                                         "watchdog")


def test_board_metrics_and_real_adjtimex(tmp_path) -> None:
    b = board_metrics(str(tmp_path))
    assert b["disk_free_bytes"] > 0 and b["cpus"] >= 1
    k = read_kernel_clock()
    assert k is not None and 0 <= k.state <= 5 and k.maxerror_us >= 0  # Linux
    assert KernelClock(TIME_ERROR, STA_UNSYNC, 16_000_000, 0).synced is False
    assert KernelClock(0, 0x2001, 50_000, 0).synced is True
    assert Clock(assume_synced=True).synced is True


def test_clock_unsynced_transition_is_an_event() -> None:
    ft = FakeTime()
    c = Clock(wall=ft.wall, mono=ft.mono, kernel=ft.kernel)
    ft.advance(1000)
    assert c.sample() == []
    ft.synced = False
    (ev,) = c.sample()
    assert ev.kind == "gateway.clock_unsynced"
    ft.w += 500  # a slew-sized step is not a jump
    assert c.sample() == []


# --------------------------------------------------------------------------- snapshots


def test_snapshot_is_stored_published_and_printed_by_gateway_diag(tmp_path, pki, capsys) -> None:
    from gateway.cli import main
    from tests.gwproc import write_config
    cfg = write_config(tmp_path, pki, 8883)
    ft = FakeTime()
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    pipe.start()
    for i in range(4):
        pipe.submit([reading("m1", 100 + i, ft.w, ft.w + 200, quality=("rssi=-80",)),
                     reading("m2", 7, ft.w, ft.w + 200)]).result(10)
        ft.advance(Q)
    pipe.submit([failure("m2", ft.w)]).result(10)
    pipe.stop()
    recs = stored(store)
    gw = [d for d in diags(recs) if d.scope == "gateway"]
    assert gw and gw[-1].metrics["boot_reason"] == "first_start"
    assert {"store_depth", "uptime_s", "clock", "disk_free_bytes"} <= set(gw[-1].metrics)
    assert events(recs, "gateway.boot")[0].detail["reason"] == "first_start"
    store.close()

    assert main(["diag", "-c", str(cfg), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["meters"]["m1"]["reads_ok"] == 4 and table["meters"]["m2"]["reads_failed"] == 1
    assert table["registers"]["m1"]["1-0:1.8.0"]["value"] == "103"
    assert table["run"]["clean_stop"] is True
    assert main(["diag", "-c", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "boot reason first_start" in text and "m1" in text and "1-0:1.8.0=103" in text
    assert "-80.0/-80.0" in text

    # the next start knows the previous one stopped cleanly
    store = open_store(tmp_path)
    pipe = make_pipeline(store, ft)
    pipe.start()
    pipe.stop()
    assert events(stored(store), "gateway.boot")[-1].detail["reason"] == "restart"
    store.close()


def test_gateway_diag_without_a_store_says_so(tmp_path, pki, capsys) -> None:
    from gateway.cli import main
    from tests.gwproc import write_config
    cfg = write_config(tmp_path, pki, 8883)
    assert main(["diag", "-c", str(cfg)]) == 1
    assert "no store" in capsys.readouterr().err


def test_edge_config_section(tmp_path, pki) -> None:
    from gateway.config import ConfigError, load_config
    from tests.gwproc import write_config
    path = write_config(tmp_path, pki, 8883)
    doc = yaml.safe_load(path.read_text())
    doc["edge"] = {"interval_s": 300, "gap_intervals": 6,
                   "rollover": [{"register": "8-0:*", "bus": "mbus", "digits": 8}],
                   "report_by_exception": {"enabled": True},
                   "diagnostics": {"leak_hours": 12}, "clock": {"assume_synced": True}}
    path.write_text(yaml.safe_dump(doc))
    e = load_config(path).edge
    assert (e.interval_s, e.gap_intervals, e.rollover[0].digits) == (300, 6, 8)
    assert e.report_by_exception.enabled and e.report_by_exception.every_n_intervals == 4
    assert e.diagnostics.leak_hours == 12 and e.clock.assume_synced
    doc["edge"] = {"interval_s": 700, "rollover": [{"register": "x"}]}
    path.write_text(yaml.safe_dump(doc))
    try:
        load_config(path)
    except ConfigError as exc:
        text = "\n".join(map(str, exc.issues))
        assert "edge.interval_s" in text and "divides a day" in text
        assert "edge.rollover[0]" in text and "digits" in text
    else:
        raise AssertionError("a bad edge section was accepted")

"""The benchmarks run end to end with tiny sizes and print their summary line.

No timing assertions: this box's speed varies too much; `make bench` gives the figures.
"""

from __future__ import annotations

import shutil

import pytest

from tools.broker import find_mosquitto

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None or shutil.which("mosquitto_sub") is None,
    reason="mosquitto and mosquitto_sub are needed (apt-get install mosquitto mosquitto-clients)")


def summary(lines: list[str]) -> dict[str, float]:
    assert lines, "the benchmark printed nothing"
    pairs = dict(kv.split("=", 1) for kv in lines[-1].split())
    return {k: float(v) for k, v in pairs.items()}


@needs_mosquitto
def test_e2e_runs_and_prints_its_summary() -> None:
    from tools.bench import e2e

    lines: list[str] = []
    s = e2e.run(n=2000, rounds=1, batch=100, naive_n=200, meters=500, verify=True,
                timeout=60, raw_min_msgs=50, out=lines.append)
    got = summary(lines)
    assert list(got) == ["readings_per_s", "ratio_vs_naive", "ratio_vs_raw", "bytes_per_reading"]
    assert got["readings_per_s"] > 0 and 0 < got["bytes_per_reading"] < 100
    assert any(l.startswith(("PASS", "FAIL")) for l in lines[:-1])
    assert s["readings_per_s"] > 0


def test_store_runs_and_prints_its_summary() -> None:
    # Its baseline is TinyDB, from the bench extra (`make test` installs it): say so if absent.
    pytest.importorskip("tinydb", reason="the store benchmark's baseline needs the bench "
                                         "extra: pip install -e '.[bench]'")
    from tools.bench import store

    lines: list[str] = []
    store.run(n=2000, rounds=1, tinydb_n=100, submit_size=500, ack_size=100, out=lines.append)
    got = summary(lines)
    assert list(got) == ["inserts_per_s", "acks_per_s", "tinydb_inserts_per_s", "ratio_vs_tinydb"]
    assert all(v > 0 for v in got.values())


@needs_mosquitto
def test_rss_runs_and_prints_its_summary() -> None:
    from tools.bench import rss

    lines: list[str] = []
    rss.run(backlog=2000, meters=10, seconds=1.0, rss_interval_s=1.0, settle=0.5,
            idle_seconds=1.0, out=lines.append)
    got = summary(lines)
    assert list(got) == ["peak_rss_mb", "idle_cpu_pct"]
    assert got["peak_rss_mb"] > 0 and got["idle_cpu_pct"] >= 0

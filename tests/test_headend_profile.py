"""`gateway-headend profile` and `groups import` on a scripted meter, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.headend.db import open_db
from gateway.headend.ingest import Ingestor, Message, RateLog
from gateway.headend.profile import (ProfileError, boundary_values, meter_profile,
                                     parse_interval, parse_time)
from gateway.model import Reading, StoredRecord
from gateway.wire.envelope import encode_envelope
from tests.headend_db import dsn, pg_cluster  # noqa: F401 (fixtures)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
GW = "gw-0001"
I = 900_000
T0 = 1_764_547_200_000  # 2025-12-01T00:00Z
OBIS = "1-0:1.8.0"
# reads at T0 + k*I, k = 0..24, except 5, 6 (a 3-interval gap: interpolated) and
# 12..17 (a 7-interval gap: estimated); meter b uses twice the consumption
MISSING = {5, 6, *range(12, 18)}


def script(meter: str, per: int) -> list[Reading]:
    return [Reading(meter, OBIS, 100_000 + k * per, -3, "kWh", T0 + k * I, T0 + k * I + 500)
            for k in range(25) if k not in MISSING]


def load(dsn_: str) -> None:
    db = open_db(dsn_)
    db.connect()
    db.migrate()
    log = RateLog()
    ing = Ingestor(db, {GW: KEY.public_key()}, log=log)
    recs = [*script("m-a", 250), *script("m-b", 500)]
    srs = [StoredRecord(i + 1, r) for i, r in enumerate(recs)]
    payload = encode_envelope(GW, "e1", srs, T0 + 30 * I, KEY)
    ing.ingest([Message(f"meters/{GW}/up/data", payload)], T0 + 30 * I)
    db.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.headend", *args], capture_output=True,
                          text=True, timeout=60)


def test_profile_interpolated_and_estimated_intervals(dsn: str, tmp_path) -> None:  # noqa: F811
    load(dsn)
    # one interval before the first read (missing), 24 with data, one after the last (missing)
    r = cli("profile", "--db", dsn, "--meter", "m-a", "--quantity", OBIS, "--interval", "15m",
            "--from", "2025-11-30T23:45Z", "--to", "2025-12-01T06:15Z", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    ivs = doc["intervals"]
    assert len(ivs) == 26 and doc["unit"] == "kWh" and doc["interval_s"] == 900
    assert ivs[0] == {"start": "2025-11-30T23:45:00Z", "end": "2025-12-01T00:00:00Z",
                      "value": None, "quality": "missing"}
    assert ivs[-1]["quality"] == "missing" and ivs[-1]["value"] is None
    body = ivs[1:-1]
    assert all(iv["value"] == "0.250" for iv in body), body
    q = [iv["quality"] for iv in body]
    assert q[4:7] == ["interpolated"] * 3  # (4I, 7I]: the reads around are 3 intervals apart
    assert q[11:18] == ["estimated"] * 7  # (11I, 18I]: 7 intervals apart, more than 4
    assert q.count("measured") == 24 - 3 - 7
    assert doc["total"] == "6.000"
    # --gap-intervals 8 interpolates the long gap too
    r = cli("profile", "--db", dsn, "--meter", "m-a", "--quantity", OBIS, "--interval", "15m",
            "--from", str(T0), "--to", str(T0 + 24 * I), "--gap-intervals", "8", "--json")
    assert [iv["quality"] for iv in json.loads(r.stdout)["intervals"]].count("estimated") == 0
    # CSV
    r = cli("profile", "--db", dsn, "--meter", "m-a", "--quantity", OBIS, "--interval", "1h",
            "--from", "2025-12-01T00:00Z", "--to", "2025-12-01T06:00Z", "--csv")
    lines = r.stdout.splitlines()
    assert lines[0] == "start,end,value,unit,quality"
    assert lines[1] == "2025-12-01T00:00:00Z,2025-12-01T01:00:00Z,1.000,kWh,measured"
    assert len(lines) == 7


def test_group_profile_sums_its_meters(dsn: str, tmp_path) -> None:  # noqa: F811
    load(dsn)
    groups = tmp_path / "groups.csv"
    groups.write_text("meter_id,group\nm-a,feeder-1\nm-b,feeder-1\nm-b,district-9\n")
    r = cli("groups", "import", str(groups), "--db", dsn)
    assert r.returncode == 0 and "3 memberships in 2 groups" in r.stdout, r.stderr
    r = cli("profile", "--db", dsn, "--group", "feeder-1", "--quantity", OBIS, "--interval",
            "15m", "--from", str(T0), "--to", str(T0 + 24 * I), "--json")
    doc = json.loads(r.stdout)
    assert doc["group"] == "feeder-1" and doc["meters"] == ["m-a", "m-b"]
    assert {iv["value"] for iv in doc["intervals"]} == {"0.750"}
    assert doc["intervals"][12]["quality"] == "estimated"
    r = cli("profile", "--db", dsn, "--group", "nobody", "--quantity", OBIS, "--interval", "15m",
            "--from", str(T0), "--to", str(T0 + I))
    assert r.returncode == 2 and "no meters" in r.stderr


def test_usage_errors() -> None:
    for bad in ("15", "0m", "fortnight"):
        try:
            parse_interval(bad)
            raise AssertionError(bad)
        except ProfileError:
            pass
    assert parse_interval("15m") == I and parse_interval("1h") == 4 * I
    assert parse_time("2025-12-01T00:00Z") == T0 == parse_time(str(T0))
    r = cli("profile", "--db", "mysql://x", "--meter", "m", "--quantity", OBIS,
            "--from", "2025-12-01", "--to", "2025-12-02")
    assert r.returncode == 2 and "unsupported DSN" in r.stderr


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5_000)), min_size=2, max_size=30),
       st.integers(0, 6))
def test_a_profile_adds_up_to_the_register_change(reads, gap_intervals) -> None:
    """Whatever the reads, the intervals between the first and last read sum exactly to the
    register's change between them (interpolation never creates or loses energy)."""
    pts = sorted({t * 300_000: None for t, _ in reads})
    vals = sorted(v for _, v in reads)[:len(pts)]
    series = [(t, Decimal(v).scaleb(-3), False) for t, v in zip(pts, vals)]
    if len(series) < 2:
        return
    lo, hi = series[0][0], series[-1][0]
    if hi - lo < I:
        return
    start, end = -(-lo // I) * I, hi // I * I
    if end <= start:
        return
    ivs = meter_profile(series, start, end, I, gap_intervals)
    assert all(iv.value is not None and iv.quality != "missing" for iv in ivs)
    (v0, _), (v1, _) = boundary_values(series, [start, end], I, gap_intervals)
    assert sum(iv.value for iv in ivs) == v1 - v0  # exact: no drift from rounding
    assert all(iv.value >= 0 for iv in ivs)  # a rising register never gives negative intervals


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_time_and_interval_parsers_raise_only_their_own_error(text: str) -> None:
    for parse in (parse_time, parse_interval):
        try:
            v = parse(text)
        except ProfileError:
            continue
        assert isinstance(v, int) and v >= 0

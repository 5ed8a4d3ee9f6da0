"""`gateway decode auto`: every kind tried, the ones that parse named; clear hex errors; a
missing or wrong key exits 3 for every kind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway import cli
from tests.gwproc import ROOT

V = json.loads((ROOT / "tests" / "vectors" / "decode_auto.json").read_text())


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60)


def _auto(*args: str) -> tuple[int, dict]:
    r = gateway("decode", "auto", *args, "--json")
    assert "Traceback" not in r.stderr
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}


def test_wired_mbus_frame_is_found_as_mbus_only() -> None:
    code, out = _auto(V["mbus_zero_length_bcd"]["hex"])
    assert code == 0 and out["parses"] == ["mbus"]


def test_xbee_frame_in_api_mode_1_is_named_with_its_mode() -> None:
    r = gateway("decode", "auto", V["xbee_api1"]["hex"])
    assert r.returncode == 0
    assert "xbee-ap1:    yes" in r.stdout
    assert "decode it with: gateway decode xbee HEX --api-mode 1" in r.stdout


def test_encrypted_radio_telegram_needs_its_key() -> None:
    v = V["wmbus_mode5"]
    code, out = _auto(v["hex"])
    assert code == 3 and out["parses"] == []
    wm = next(r for r in out["results"] if r["kind"] == "wmbus")
    assert wm["exit_code"] == 3 and "no key" in wm["error"]
    code, out = _auto(v["hex"], "--key", v["key"])
    assert code == 0 and out["parses"] == ["wmbus"]


def test_garbage_parses_as_nothing_and_says_why_for_each_kind() -> None:
    r = gateway("decode", "auto", "00112233445566778899")
    assert r.returncode == 2 and "no decoder parses these bytes" in r.stderr
    assert [l.split()[1] for l in r.stdout.splitlines()] == ["no:"] * 6


@pytest.mark.parametrize("kind", ["auto", "hdlc", "mbus", "wmbus", "xbee", "iec62056-21"])
def test_odd_length_and_non_hex_say_so(kind: str) -> None:
    r = gateway("decode", kind, "68121")
    assert r.returncode == 2 and "odd number of hex digits (5)" in r.stderr, r.stderr
    r = gateway("decode", kind, "6812zz")
    assert r.returncode == 2 and "'z' at digit 5 is not a hex digit" in r.stderr, r.stderr


def test_missing_or_wrong_key_exits_3_for_every_kind() -> None:
    han, radio = V["han_ciphered"], V["wmbus_mode5"]
    wrong = "00112233445566778899AABBCCDDEEFF"
    for kind, v in (("hdlc", han), ("wmbus", radio)):
        assert gateway("decode", kind, v["hex"]).returncode == 3, kind
        assert gateway("decode", kind, v["hex"], "--key", wrong).returncode == 3, kind
        assert gateway("decode", kind, v["hex"], "--key", v["key"]).returncode == 0, kind


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=80))
def test_auto_on_random_bytes_never_raises(capsys, data: bytes) -> None:
    code = cli.main(["decode", "auto", data.hex()])
    assert code in (0, 2, 3)
    assert "Traceback" not in capsys.readouterr().err

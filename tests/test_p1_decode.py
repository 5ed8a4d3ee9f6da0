"""`gateway decode iec62056-21 HEX|FILE|-` (issue 16 item 5): hex like every other kind,
file and stdin still work, bad hex says what is wrong; P1 values with their own times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = {t["id"]: t["telegram_latin1"].encode("latin-1") for t in
          json.loads((ROOT / "tests" / "corpus" / "p1.json").read_text())["p1"]}
V4_2 = CORPUS["dsmr_parser:TELEGRAM_V4_2"]


def _decode(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "decode", "iec62056-21", *args],
                          cwd=ROOT, input=stdin, capture_output=True, timeout=60)


def test_hex_file_and_stdin_give_the_same_json(tmp_path):
    f = tmp_path / "p1.txt"
    f.write_bytes(V4_2)
    h = tmp_path / "p1.hex"
    h.write_text(V4_2.hex(" ") + "\n")
    outs = []
    for args, stdin in (([V4_2.hex()], None), ([str(f)], None), (["-"], V4_2),
                        (["-"], V4_2.hex().encode()), ([str(h)], None),
                        ([V4_2.hex(":").upper()], None)):
        p = _decode(*args, "--json", stdin=stdin)
        assert p.returncode == 0, (args, p.stderr)
        outs.append(json.loads(p.stdout))
    assert all(o == outs[0] for o in outs)
    out = outs[0]
    assert out["check"] == "crc16" and out["meter_time"] == "2016-11-13T19:57:57Z"
    assert {"obis": "0-1:24.2.1", "value": "981.443", "unit": "m3",
            "time": "2016-11-29T19:00:00Z"} in out["readings"]
    assert {"obis": "1-0:1.8.1", "value": "1581.123", "unit": "kWh"} in out["readings"]


def test_bad_hex_says_what_is_wrong():
    for arg, msg in (("2F41424", b"odd number of hex digits (7)"),
                     ("2F4G42", b"'G' at digit 4 is not a hex digit"),
                     ("/no/such/capture.txt", b"no such file"),
                     ("", b"empty")):
        p = _decode(arg)
        assert p.returncode == 2, arg
        assert p.stderr.startswith(b"error: ") and p.stderr.count(b"\n") == 1, p.stderr
        assert msg in p.stderr, p.stderr


def test_codec_errors_are_one_line_exit_2():
    for raw, msg in ((V4_2.replace(b"!6796", b"!6797"), b"CRC mismatch"),
                     (V4_2[:-8], b"end mark"), (b"/AB\r\n", b"too short")):
        p = _decode(raw.hex())
        assert p.returncode == 2 and p.stderr.count(b"\n") == 1 and msg in p.stderr, p.stderr
    p = _decode(V4_2.hex(), "--tz", "Mars/Olympus")
    assert p.returncode == 2 and b"unknown time zone" in p.stderr


def test_text_output_shows_the_values_with_their_times():
    p = _decode(CORPUS["dsmr_parser:TELEGRAM_UNPADDED_CRC"].hex())
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "check: crc16" in out
    assert "0-1:24.2.1     240.860 GJ  at 2026-02-15T19:05:23Z" in out


def test_time_stamps_in_text_values_are_shown_as_utc():
    p = _decode(V4_2.hex(), "--json")
    out = json.loads(p.stdout)
    assert {"address": "0-0:1.0.0", "value": "161113205757W", "unit": "",
            "time": "2016-11-13T19:57:57Z"} in out["other"]
    assert {"address": "0-0:96.13.0", "value": "", "unit": ""} in out["other"]

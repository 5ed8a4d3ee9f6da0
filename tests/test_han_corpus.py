"""HAN push frames from other projects (tests/corpus/han.json, copied from the shared
corpus): every frame decodes with `gateway decode hdlc --json` to the values the
reference parsers read, exactly, except the listed exceptions (each with its reason)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parent.parent
CORPUS = json.loads((ROOT / "tests/corpus/han.json").read_text())["han"]

# id -> why it does not (yet) decode to the reference values
EXCEPTIONS: dict[str, str] = {}


def decode(entry: dict, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict | None, str]:
    args = ["decode", "hdlc", entry["input_hex"], "--json", *entry.get("cli_args", [])]
    if entry.get("key"):
        args += ["--key", entry["key"]]
    if entry.get("auth_key"):
        args += ["--auth-key", entry["auth_key"]]
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def _cde(obis: str) -> str:
    return obis.partition(":")[2].partition("*")[0]


def mismatches(entry: dict, out: dict) -> list[str]:
    """Each expected value must be read exactly (same value, same unit); a reading of the
    same quantity with another value is a mismatch too."""
    bad = []
    readings = out["readings"]
    for exp in entry["expected"]:
        same = [r for r in readings if (r["obis"] == exp["obis"] if "obis" in exp
                                        else _cde(r["obis"]) == exp["cde"])]
        if not same:
            bad.append(f"{exp.get('obis', exp['cde'])}: missing")
            continue
        for r in same:
            if Decimal(r["value"]) != Decimal(exp["value"]) or r["unit"] != exp["unit"]:
                bad.append(f"{r['obis']}: {r['value']} {r['unit']}, reference "
                           f"{exp['value']} {exp['unit']}")
    return bad


@pytest.mark.parametrize("entry", CORPUS, ids=[e["id"] for e in CORPUS])
def test_han_corpus_frame(entry, capsys):
    rc, out, err = decode(entry, capsys)
    if entry["id"] in EXCEPTIONS:
        pytest.xfail(EXCEPTIONS[entry["id"]])
    assert rc == 0, err
    assert mismatches(entry, out) == []
    if "expected_invoke_id" in entry:
        assert int(out["invoke_id"], 16) == entry["expected_invoke_id"]


def test_exceptions_are_corpus_ids():
    assert set(EXCEPTIONS) <= {e["id"] for e in CORPUS}

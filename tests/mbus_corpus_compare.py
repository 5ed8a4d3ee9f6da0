"""Compare our decoded M-Bus telegrams with what libmbus and wmbusmeters read from the same
frames (tests/corpus/mbus_corpus.json), so the corpus test and the measurement script
share one definition of "matches".

libmbus normalises values to doubles printed with six decimals in its own units (Wh, m^3);
ours are exact decimals in kWh/m3, so a value matches when it is the same number within
the double's (or, for type H reals, float32's) precision. wmbusmeters' main values
(total_m3, total_energy_consumption_kwh, ...) match when a record of the same unit carries
that value.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from gateway.protocols.mbus.records import decode_bcd

CORPUS = json.loads((Path(__file__).parent / "corpus" / "mbus_corpus.json").read_text())

FUNCTIONS = {"instantaneous": "Instantaneous value", "maximum": "Maximum value",
             "minimum": "Minimum value", "error": "Value during error state"}
# libmbus unit -> (our unit, factor: libmbus value = our value * factor)
UNITS = {"Wh": ("kWh", 1000), "m^3": ("m3", 1), "m^3/h": ("m3/h", 1), "°C": ("°C", 1),
         "K": ("K", 1), "W": ("W", 1), "V": ("V", 1), "A": ("A", 1), "s": ("s", 1)}
HEX_BYTES = re.compile(r"[0-9A-F]{2}( [0-9A-F]{2}){7,}")
RAW_INT = (1, 2, 3, 4, 6, 7)
RAW_BCD = (9, 10, 11, 12, 14)
MFR_FUNCTIONS = ("Manufacturer specific", "More records follow")
# wmbusmeters fields compared: the main totals, when they come from standard records
WMBUS_MAIN = {"total_m3": "m3", "total_energy_consumption_kwh": "kWh", "total_kwh": "kWh",
              "total_heat_kwh": "kWh", "total_energy_kwh": "kWh"}


def _dec(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def close(a: Decimal, b: Decimal) -> bool:
    """Equal within double printing (6 decimals) and float32 (7 significant digits)."""
    return abs(a - b) <= max(Decimal("0.000001"), abs(b) * Decimal("0.0000002"))


def record_mismatch(ours: Any, ref: dict[str, str]) -> str | None:
    """Why our DataRecord differs from libmbus' normalised record, or None."""
    why = []
    if FUNCTIONS.get(ours.function) != ref["Function"]:
        why.append(f"function {ours.function} != {ref['Function']}")
    if str(ours.storage) != ref["StorageNumber"]:
        why.append(f"storage {ours.storage} != {ref['StorageNumber']}")
    if "Tariff" in ref and str(ours.tariff) != ref["Tariff"]:
        why.append(f"tariff {ours.tariff} != {ref['Tariff']}")
    if "Device" in ref and str(ours.subunit) != ref["Device"]:
        why.append(f"subunit {ours.subunit} != {ref['Device']}")
    value = ref["Value"]
    unit = ref["Unit"]
    q = ref["Quantity"]
    if unit in UNITS:
        our_unit, factor = UNITS[unit]
        if ours.unit != our_unit:
            why.append(f"unit {ours.unit!r} != {our_unit!r}")
        elif not ours.is_numeric:
            why.append(f"not numeric: {ours.kind} {ours.value!r} {ours.error}")
        elif not close(ours.decimal() * factor, Decimal(value)):
            why.append(f"value {ours.decimal() * factor} != {value}")
        if not ours.quantity.lower().startswith(q.split(" (")[0].lower()):
            why.append(f"quantity {ours.quantity!r} is not {q!r}")
    elif q.startswith("Time point"):
        if "-00" in value[:10]:
            if ours.error is None:  # libmbus prints an invalid date with zero fields
                why.append(f"invalid date read as {ours.value!r}")
        else:
            exp = value.rstrip("Z")
            got = ours.value if isinstance(ours.value, str) else None
            if got is not None and len(got) == 16 and len(exp) == 19:
                got += ":00"
            if got != exp:
                why.append(f"date {ours.value!r} != {value}")
    else:
        d = _dec(value)
        if HEX_BYTES.fullmatch(value) and ours.kind in ("number", "flags"):
            d = Decimal(int(value.replace(" ", ""), 16))  # a long binary, printed MSB first
        if d is not None and ours.kind == "bytes" and ours.dib[0] & 0x0F in RAW_INT + RAW_BCD:
            # a manufacturer-specific VIF: we keep the raw bytes, libmbus reads the DIF's
            # integer coding
            n = int.from_bytes(ours.raw, "little") if ours.dib[0] & 0x0F in RAW_INT \
                else decode_bcd(ours.raw)
            if n is None or Decimal(n) != d:
                why.append(f"raw {ours.raw.hex()} != {value}")
        elif d is not None and ours.kind in ("number", "flags"):
            if not ours.is_numeric or not close(ours.decimal(), d):
                why.append(f"value {ours.value_text()} != {value}")
        elif ours.kind == "text":
            if ours.value != value:
                why.append(f"text {ours.value!r} != {value!r}")
        elif ours.kind == "bytes":
            if ours.value.hex(" ").upper() != value:
                why.append(f"bytes {ours.value.hex(' ').upper()} != {value}")
        elif d is None:
            why.append(f"{ours.kind} {ours.value_text()!r} != {value!r}")
        else:
            why.append(f"{ours.kind} {ours.value_text()!r} != {value!r}")
    return "; ".join(why) or None


def libmbus_mismatches(t: Any, refs: list[dict[str, str]]) -> list[str]:
    """Every difference between a decoded telegram and libmbus' records of it."""
    out = []
    plain = [r for r in refs if r["Function"] not in MFR_FUNCTIONS]
    mfr = [r for r in refs if r["Function"] in MFR_FUNCTIONS]
    if len(plain) != len(t.records):
        out.append(f"{len(t.records)} records, libmbus has {len(plain)}")
    for i, (ours, ref) in enumerate(zip(t.records, plain)):
        why = record_mismatch(ours, ref)
        if why:
            out.append(f"record {i} ({ours.key}): {why}")
    if mfr:
        exp = mfr[0]["Value"]
        got = t.manufacturer_data.hex(" ").upper()
        if got != exp:
            out.append(f"manufacturer data {got!r} != {exp!r}")
        if (mfr[0]["Function"] == "More records follow") != t.more_records_follow:
            out.append(f"more_records_follow {t.more_records_follow}")
    return out


def record_count(refs: list[dict[str, str]]) -> int:
    return sum(1 for r in refs if r["Function"] not in MFR_FUNCTIONS)


JOULES_PER_KWH = Decimal(3_600_000)


def wmbus_main_values(expected: dict[str, Any] | None) -> dict[str, tuple[str, Decimal]]:
    if not expected:
        return {}
    return {k: (unit, Decimal(repr(expected[k]))) for k, unit in WMBUS_MAIN.items()
            if k in expected}


def wmbus_mismatches(t: Any, expected: dict[str, Any] | None) -> list[str]:
    """Main wmbusmeters values that no record of the same unit carries."""
    out = []
    for name, (unit, value) in wmbus_main_values(expected).items():
        got = [r.decimal() / (JOULES_PER_KWH if r.unit == "J" else 1) for r in t.records
               if (r.unit == unit or unit == "kWh" and r.unit == "J") and r.is_numeric
               and r.storage == 0 and r.function == "instantaneous"]
        if not any(close(g, value) for g in got):
            out.append(f"{name}={value}: ours {[str(g) for g in got]}")
    return out

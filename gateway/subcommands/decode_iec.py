"""`gateway decode iec62056-21 HEX|FILE|-`: a captured readout (modes A-C, BCC) or a P1 /
mode D telegram (CRC16 or none).

The input is hex like every other kind, or a file, or ``-`` for stdin (raw bytes as
captured, or hex text). ``--json`` prints one object whose ``readings`` are ``{"obis",
"value", "unit"}`` with the value as an exact decimal string, plus ``"time"`` (UTC, ISO
8601) for a value the meter stamped with its own capture time (gas, peaks).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
from typing import Any

from .decode_common import DecodeFailed, exact_str, print_json, read_bytes_arg

HELP = "an IEC 62056-21 readout (mode A-C) or a P1 / mode D telegram, as HEX, a file or -"

_SEPARATORS = re.compile(r"[\s:\-]+")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Decode an IEC 62056-21 readout (mode A-C, BCC) or a P1 / mode D "
                          "telegram (CRC16). Give the bytes as hex, a capture file, or - "
                          "for stdin.")
    parser.add_argument("input", metavar="HEX|FILE|-",
                        help="the bytes in hex, a file holding the capture, or - for stdin")
    parser.add_argument("--obis-prefix", default="1-0:",
                        help="prefix for short C.D.E addresses (default 1-0:)")
    parser.add_argument("--tz", default=None,
                        help="time zone of P1 time stamps without W/S flag (DSMR 2.2/3; "
                             "default Europe/Amsterdam)")


def input_bytes(arg: str) -> bytes:
    """HEX, a file or stdin. A file or stdin holding only hex text is taken as hex (a
    readout always has '/' or STX, which are not hex digits)."""
    if arg == "-" or os.path.isfile(arg):
        data = read_bytes_arg(arg)
        text = data.decode("latin-1")
        cleaned = _SEPARATORS.sub("", text.strip().removeprefix("0x"))
        if cleaned and re.fullmatch(r"[0-9A-Fa-f]+", cleaned):
            return hex_bytes(text, "the input")
        return data
    if ("/" in arg or os.sep in arg) and not re.fullmatch(r"[0-9A-Fa-f\s:\-x]+", arg):
        raise DecodeFailed(f"cannot read {arg}: no such file (and it is not hex)")
    return hex_bytes(arg, "HEX")


def hex_bytes(text: str, what: str) -> bytes:
    cleaned = _SEPARATORS.sub("", text.strip())
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    if not cleaned:
        raise DecodeFailed(f"{what} is empty")
    bad = re.search(r"[^0-9A-Fa-f]", cleaned)
    if bad:
        raise DecodeFailed(f"{what} is not hex and not a file: {bad.group()!r} at digit "
                           f"{bad.start() + 1} is not a hex digit")
    if len(cleaned) % 2:
        raise DecodeFailed(f"{what} has an odd number of hex digits ({len(cleaned)}): "
                           "one digit is missing or extra")
    return bytes.fromhex(cleaned)


def _utc(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat().replace(
        "+00:00", "Z")




def decode(raw: bytes, obis_prefix: str = "1-0:", tz: str | None = None) -> dict[str, Any]:
    """The JSON object for ``raw``; raises the codec's Iec62056Error."""
    from ..protocols import iec62056_21 as iec
    from ..protocols import p1
    masked = bytes(b & 0x7F for b in raw)
    readings: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    meter_time = None
    if masked.lstrip(b"\r\n ").startswith(b"/") and bytes([iec.STX]) not in masked:
        tg = p1.parse_p1(raw, tz)
        ident, check, meter_time = tg.identification, tg.check, tg.meter_ts_ms
        for v in tg.values:
            obis = iec.normalise_obis(v.obis, obis_prefix)
            ex = v.exact()
            if ex is None:
                other: dict[str, Any] = {"address": v.obis, "value": v.text, "unit": v.unit}
                stamp = p1.parse_timestamp(v.text, tz)
                if stamp is not None:
                    other["time"] = _utc(stamp)  # a time stamp (0-0:1.0.0...), as UTC
                others.append(other)
                continue
            item: dict[str, Any] = {"obis": obis, "value": exact_str(*ex), "unit": v.unit}
            if v.ts_ms is not None:
                item["time"] = _utc(v.ts_ms)
            if v.buffer:
                item["buffer"] = True
                item["source"] = v.source
            readings.append(item)
    else:
        r = iec.parse_readout(raw)
        ident, check = r.identification, r.check
        for ds in r.data_sets:
            ex = ds.exact()
            if ex is not None:
                readings.append({"obis": iec.normalise_obis(ds.address, obis_prefix),
                                 "value": exact_str(*ex), "unit": ds.unit})
            else:
                others.append({"address": ds.address, "value": ds.value, "unit": ds.unit})
    out: dict[str, Any] = {
        "kind": "iec62056-21",
        "identification": None if ident is None else {
            "manufacturer": ident.manufacturer, "baud_char": ident.baud_char,
            "mode": ident.mode, "ident": ident.ident},
        "check": check, "readings": readings, "other": others}
    if meter_time is not None:
        out["meter_time"] = _utc(meter_time)
    return out


def run(args: argparse.Namespace) -> int:
    from ..protocols import iec62056_21 as iec
    raw = input_bytes(args.input)
    if args.tz:
        try:
            from zoneinfo import ZoneInfo
            ZoneInfo(args.tz)
        except Exception:
            raise DecodeFailed(f"unknown time zone {args.tz!r} (e.g. Europe/Brussels)") from None
    try:
        out = decode(raw, args.obis_prefix, args.tz)
    except iec.Iec62056Error as exc:
        raise DecodeFailed(str(exc)) from None
    if args.json:
        print_json(out)
        return 0
    ident = out["identification"]
    if ident is not None:
        print(f"identification: /{ident['manufacturer']}{ident['baud_char']}{ident['ident']} "
              f"(manufacturer {ident['manufacturer']}, mode {ident['mode']})")
    print(f"check: {out['check']}")
    if "meter_time" in out:
        print(f"meter time: {out['meter_time']}")
    for x in out["readings"]:
        at = f"  at {x['time']}" if "time" in x else ""
        print(f"  {x['obis']:<14} {x['value']} {x['unit']}".rstrip() + at)
    for x in out["other"]:
        at = f"  = {x['time']}" if "time" in x else ""
        print(f"  {x['address']:<14} {x['value']!r} {x['unit']}".rstrip() + at)
    return 0

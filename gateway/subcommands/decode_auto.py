"""`gateway decode auto HEX [--key K]`: which kinds of frame are these bytes? Each kind's own
decoder is tried in turn, exactly as `gateway decode KIND` would run it, and the answer says
which ones parse (and why the others do not), as wmbusmeters' --analyze does for radio.

Exit 0 when at least one kind parses, 3 when one would with the right key, 2 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
from typing import Any

from .decode_common import DECODE_MODULES, EXIT_BAD_INPUT, EXIT_BAD_KEY, DecodeFailed, guarded, \
    parse_hex, print_json

HELP = "try every kind on the bytes and say which ones parse"

# The kinds whose decoder takes a --key of this form.
KEYED = ("hdlc", "mbus", "wmbus")
# What is tried: (label, kind, extra arguments). XBee frames come escaped (AP=2) or not.
TRIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("hdlc", "hdlc", ()), ("iec62056-21", "iec62056-21", ()), ("mbus", "mbus", ()),
    ("wmbus", "wmbus", ()), ("xbee", "xbee", ("--api-mode", "2")),
    ("xbee-ap1", "xbee", ("--api-mode", "1")))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Try every decoder on the bytes (hdlc, iec62056-21, mbus, wmbus, "
                          "xbee in API mode 2 and 1) and say which ones parse them.")
    parser.add_argument("hex", metavar="HEX", help="the captured bytes in hex")
    parser.add_argument("--key", help="a meter key (hex), tried by the kinds that take one")


def _try(label: str, kind: str, extra: tuple[str, ...], hex_text: str,
         key: str | None) -> dict[str, Any]:
    argv = [hex_text, "--json", *extra]
    if key and kind in KEYED:
        argv += ["--key", key]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = _kind_parser(kind).parse_args(argv)
            code = guarded(importlib.import_module(DECODE_MODULES[kind]).run)(args)
        except SystemExit as exc:  # argparse refusing an argument of this kind
            code = exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
        except Exception as exc:  # noqa: BLE001 - one decoder's bug must not hide the others
            code, err = EXIT_BAD_INPUT, io.StringIO(f"error: {type(exc).__name__}: {exc}")
    result: dict[str, Any] = {"kind": label, "parses": code == 0, "exit_code": code,
                              "command": f"gateway decode {kind} HEX {' '.join(extra)}".strip()}
    if code == 0:
        try:
            result["result"] = json.loads(out.getvalue())
        except ValueError:
            result["result"] = out.getvalue()
    else:
        lines = [l for l in err.getvalue().splitlines() if l.strip()]
        result["error"] = (lines[-1].removeprefix("error: ") if lines else f"exit {code}")
    return result


def _kind_parser(kind: str) -> argparse.ArgumentParser:
    """The parser `gateway decode KIND` has (built here: importing the CLI would be a cycle)."""
    parser = argparse.ArgumentParser(prog=f"gateway decode {kind}")
    importlib.import_module(DECODE_MODULES[kind]).add_arguments(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(kind=kind)  # a module may decode several kinds (mbus, wmbus)
    return parser


def _summary(obj: Any) -> str:
    """A few words on what a decoder found: the lengths of its lists."""
    if not isinstance(obj, dict):
        return ""
    parts = [f"{len(v)} {k}" for k, v in obj.items() if isinstance(v, list) and v]
    return ", ".join(parts[:4])


def run(args: argparse.Namespace) -> int:
    parse_hex(args.hex, "HEX")  # one clear message for bytes that are no hex at all
    assert {kind for _, kind, _ in TRIES} == set(DECODE_MODULES), "a kind is not tried"
    results = [_try(label, kind, extra, args.hex, args.key) for label, kind, extra in TRIES]
    kinds = [label for label, _, _ in TRIES]
    ok = [r for r in results if r["parses"]]
    keyed = [r for r in results if r["exit_code"] == EXIT_BAD_KEY]
    if args.json:
        print_json({"kind": "auto", "parses": [r["kind"] for r in ok], "results": results})
    else:
        width = max(len(k) for k in kinds) + 1
        for r in results:
            if r["parses"]:
                what = _summary(r.get("result"))
                print(f"{r['kind'] + ':':<{width}} yes" + (f" ({what})" if what else ""))
            else:
                note = " (needs the right key)" if r["exit_code"] == EXIT_BAD_KEY else ""
                print(f"{r['kind'] + ':':<{width}} no{note}: {r['error']}")
        if ok:
            print(f"decode it with: {ok[0]['command']}"
                  + (" --key KEY" if args.key and ok[0]["command"].split()[2] in KEYED else ""))
    if ok:
        return 0
    if keyed:
        raise DecodeFailed("no kind parses these bytes without the right key "
                           f"({', '.join(r['kind'] for r in keyed)} would with it)", EXIT_BAD_KEY)
    raise DecodeFailed("no decoder parses these bytes", EXIT_BAD_INPUT)

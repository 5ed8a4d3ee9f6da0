"""`gateway decode KIND ...`: a field tech pastes bytes and sees what they mean.

Each kind lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``
(and a one-line ``HELP``); adding a kind is one line in DECODE_MODULES. Conventions for
every kind: ``--json`` prints one JSON object; values are exact decimal strings; bad input
is one line on stderr and exit 2 (a wrong key: exit 3), never a traceback.
"""

from __future__ import annotations

import argparse
import binascii
import importlib
import json
import sys
from typing import Any

from ..model import to_decimal

EXIT_BAD_INPUT = 2
EXIT_BAD_KEY = 3

# kind -> module
DECODE_MODULES: dict[str, str] = {
    "xbee": "gateway.commands.decode_xbee",
    "hdlc": "gateway.commands.decode_dlms", "iec62056-21": "gateway.commands.decode_iec",
    "mbus": "gateway.commands.decode_mbus", "wmbus": "gateway.commands.decode_mbus",
}


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("decode", help="decode captured bytes (auto, hdlc, iec62056-21, mbus, "
                                      "wmbus, xbee)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    for kind, module in DECODE_MODULES.items():
        mod = importlib.import_module(module)
        kp = kinds.add_parser(kind, help=getattr(mod, "HELP", ""))
        mod.add_arguments(kp)
        kp.add_argument("--json", action="store_true", help="print one JSON object")
        kp.set_defaults(func=_guarded(mod.run))
    from . import decode_auto
    ap = kinds.add_parser("auto", help=decode_auto.HELP)
    decode_auto.add_arguments(ap)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.set_defaults(func=_guarded(decode_auto.run))
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), EXIT_BAD_INPUT)[1])


def _guarded(run):  # type: ignore[no-untyped-def]
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except DecodeFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    return wrapper


class DecodeFailed(Exception):
    """Raised by a decode kind: printed as one line, exits with exit_code."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_HEX_DIGITS = frozenset("0123456789abcdef")


def parse_hex(text: str, what: str = "input") -> bytes:
    """Accept hex with spaces, colons, dashes or a 0x prefix, as people paste it; say
    exactly what is wrong otherwise (a character that is no hex digit, an odd count)."""
    cleaned = text.strip().lower().removeprefix("0x")
    for ch in " :-\n\t\r":
        cleaned = cleaned.replace(ch, "")
    bad = next((i for i, c in enumerate(cleaned) if c not in _HEX_DIGITS), None)
    if bad is not None:
        raise DecodeFailed(f"{what} is not hex: {cleaned[bad]!r} at digit {bad + 1} is not a "
                           "hex digit (0-9, A-F)")
    if not cleaned:
        raise DecodeFailed(f"{what} is empty")
    if len(cleaned) % 2:
        raise DecodeFailed(f"{what} has an odd number of hex digits ({len(cleaned)}): every "
                           "byte is two digits; was a digit lost when copying?")
    return binascii.unhexlify(cleaned)


def read_bytes_arg(arg: str) -> bytes:
    """A file path, or '-' for stdin, read as bytes: line ends (CR LF) are part of what
    checksums cover, so no text-mode translation."""
    if arg == "-":
        return sys.stdin.buffer.read()
    try:
        with open(arg, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DecodeFailed(f"cannot read {arg}: {exc.strerror}") from None


def read_text_arg(arg: str) -> str:
    """Like read_bytes_arg, as text (latin-1: every byte maps to one character)."""
    return read_bytes_arg(arg).decode("latin-1")



def exact_str(mantissa: int, exponent: int) -> str:
    return format(to_decimal(mantissa, exponent), "f")  # exact at any length


def print_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=False, default=str))

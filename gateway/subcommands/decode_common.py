"""What every `gateway decode KIND` shares: exit codes, the one error a kind raises, hex and
file input as people paste it, exact decimal output.

Apart from decode.py (which wires the kinds into the CLI) so that the kinds and
`decode auto` import this and never the CLI: no import cycle.
"""

from __future__ import annotations

import argparse
import binascii
import json
import sys
from typing import Any, Callable

from ..model import to_decimal

EXIT_BAD_INPUT = 2
EXIT_BAD_KEY = 3

# kind -> module
DECODE_MODULES: dict[str, str] = {
    "xbee": "gateway.subcommands.decode_xbee",
    "hdlc": "gateway.subcommands.decode_dlms", "iec62056-21": "gateway.subcommands.decode_iec",
    "mbus": "gateway.subcommands.decode_mbus", "wmbus": "gateway.subcommands.decode_mbus",
}


def guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A kind's run() with DecodeFailed printed as one line and its exit code returned."""
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

"""Byte sizes as written in a config (``10MB``, ``512MiB``) and back."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Union

from .show import quote

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}


def parse_size(text: Union[str, int]) -> int:
    """Parse ``4096``, ``10MB`` (decimal, 10**7) or ``512MiB`` (binary, 512 * 2**20) into bytes.

    Units are case-insensitive; a fraction is allowed only if the result is whole bytes
    (``1.5KiB`` is 1536, ``0.3KiB`` is an error). Raises ValueError or TypeError.
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise TypeError(f"a size must be an integer or a string, not {type(text).__name__}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise ValueError(f"not a size: {quote(text)}")
    unit = m[2].lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown unit {quote(m[2])}; use B, KB, KiB, MB, MiB, GB or GiB")
    n = Fraction(m[1]) * _SIZE_UNITS[unit]
    if n.denominator != 1:
        raise ValueError("not a whole number of bytes")
    return int(n)


def format_size(n: int) -> str:
    """Inverse of parse_size for display: the largest binary unit that divides n exactly."""
    for unit, mult in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= mult and n % mult == 0:
            return f"{n // mult} {unit}"
    return f"{n} bytes"

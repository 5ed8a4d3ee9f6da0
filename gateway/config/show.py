"""How keys and bad values are written in error messages (quoted, truncated, secrets masked)."""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any, Iterable, Mapping


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {quote(match[0])}?" if match else None


_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join_key(parent: str, name: str) -> str:
    """Key path for display; odd key names are quoted so the path stays readable."""
    shown = name if _SIMPLE_KEY.fullmatch(name) else quote(name)
    return f"{parent}.{shown}" if parent else shown


def quote(s: str, limit: int = 60) -> str:
    """Double-quoted and escaped, truncated, and safe to print on any UTF-8 terminal."""
    if len(s) > limit:
        s = s[:limit - 3] + "..."
    return json.dumps(s, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


def show_value(v: Any) -> str:
    """How a bad value is shown after "got"."""
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, Mapping):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, (bytes, bytearray)):
        return "binary data"
    if hasattr(v, "isoformat"):
        return f"a date {v.isoformat()}"
    return show_plain(v)


def show_plain(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}" if math.isfinite(v) else repr(v)
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, int) and v.bit_length() > 128:
        return "an integer of more than 128 bits"  # str() refuses ints above 4300 digits
    text_ = str(v)
    return text_ if len(text_) <= 60 else text_[:57] + "..."


def show_secret(v: Any) -> str:
    """A bad secret value, described without echoing it into logs."""
    if isinstance(v, str):
        return f"{count_noun(len(v), 'character')} (not shown: secret)"
    if isinstance(v, (Mapping, list)):
        return show_value(v)
    return "a value that is not a string (not shown: secret)"


def count_noun(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")

"""Builders of Check: the value types a FieldSpec can take (numbers, text, sizes, nested
mappings, lists, free-form tags) and cross-field rules."""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Union

from .schema import Check, CrossCheck, FieldSpec, Schema
from .show import did_you_mean, quote
from .sizes import format_size, parse_size


def integer(lo: int | None = None, hi: int | None = None, what: str = "an integer") -> Check:
    if lo is not None and hi is not None:
        expected = f"{what} {lo}-{hi}"
    elif lo is not None:
        expected = f"{what} >= {lo}"
    elif hi is not None:
        expected = f"{what} <= {hi}"
    else:
        expected = what

    def convert(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError()
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ValueError()
        return v

    return Check(expected, convert)


def number(*, gt: float | None = None, ge: float | None = None, le: float | None = None,
           what: str = "a number") -> Check:
    """An int or float; durations are numbers of seconds."""
    bounds = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else "",
              f"<= {le:g}" if le is not None else ""]
    expected = " ".join([what] + [b for b in bounds if b])

    def convert(v: Any) -> Union[int, float]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError()
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError()
        if (gt is not None and not v > gt) or (ge is not None and not v >= ge) \
                or (le is not None and not v <= le):
            raise ValueError()
        return v

    return Check(expected, convert)


def text(expected: str = "a string", pattern: str | None = None,
         validate: Callable[[str], None] | None = None) -> Check:
    """A string, optionally matching ``pattern`` in full and passing ``validate``."""
    rx = re.compile(pattern) if pattern else None

    def convert(v: Any) -> str:
        if not isinstance(v, str):
            raise TypeError()
        if rx is not None and not rx.fullmatch(v):
            raise ValueError()
        if validate is not None:
            validate(v)
        return v

    return Check(expected, convert, as_text=True)


def time_zone() -> Check:
    """An IANA time zone name (Europe/Oslo, UTC), checked against the system's tz database."""
    def validate(v: str) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone (is the tzdata package installed?)") from None

    return text("an IANA time zone such as Europe/Oslo", validate=validate)


def one_of(*choices: str) -> Check:
    """One of a fixed set of words (case-insensitive), with a did-you-mean hint."""
    expected = "one of " + ", ".join(quote(c) for c in choices)

    def convert(v: Any) -> str:
        if not isinstance(v, str):
            raise TypeError()
        if v.lower() in choices:
            return v.lower()
        raise ValueError(did_you_mean(v.lower(), choices) or "")

    return Check(expected, convert, as_text=True)


MAX_SIZE = 2**63 - 1  # what SQLite and most file APIs can count to


def size(lo: int = 0, hi: int | None = None) -> Check:
    if hi is None:
        expected = f"a size of at least {format_size(lo)} (e.g. 512MiB, 10MB, 4096)"
    else:
        expected = f"a size {lo}-{hi} bytes (e.g. 64KiB, 4096)"

    def convert(v: Any) -> int:
        n = parse_size(v)
        if n < lo or n > (MAX_SIZE if hi is None else hi):
            raise ValueError()
        return n

    return Check(expected, convert)


def boolean() -> Check:
    def convert(v: Any) -> bool:
        if not isinstance(v, bool):
            raise TypeError()
        return v

    return Check("true or false", convert)


def _check_path(v: str) -> None:
    if not v or "\0" in v:
        raise ValueError()


PATH = text("a file path", validate=_check_path)
ID_PATTERN = r"[A-Za-z0-9._-]{1,64}"
ID = text("an id of 1-64 characters from A-Z a-z 0-9 . _ -", ID_PATTERN)


def file_field(name: str, help: str, secret: bool = False) -> FieldSpec:
    """A required path to an existing file."""
    return FieldSpec(name, PATH, help=help, secret=secret, path=True, must_exist=True)


def one_of_ints(*choices: int) -> Check:
    """One of a fixed set of integers, e.g. the standard baud rates."""
    expected = "one of " + ", ".join(str(c) for c in choices)

    def convert(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError()
        if v not in choices:
            raise ValueError()
        return v

    return Check(expected, convert)


def scalar() -> Check:
    """A plain value: a string, an integer, a finite number or a boolean (not null or a date)."""
    def convert(v: Any) -> Union[str, int, float, bool]:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError()
        if not isinstance(v, (str, int, float, bool)):
            raise TypeError()
        return v

    return Check("a string, number or true/false", convert)


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def hex_bytes(n: int, what: str = "key") -> Check:
    """Exactly ``n`` bytes written as ``2 * n`` hex digits (either case, no separators).

    The value is ``bytes``. The text is taken as written, so an all-digit key stays a string.
    """
    if n < 1:
        raise ValueError("hex_bytes needs at least one byte")

    def convert(v: Any) -> bytes:
        if not isinstance(v, str):
            raise TypeError()
        bad = next((c for c in v if c not in _HEX_DIGITS), None)
        if bad is not None:
            raise ValueError(f"{quote(bad)} is not a hex digit")
        if len(v) != 2 * n:
            raise ValueError()
        return bytes.fromhex(v)

    return Check(f"{2 * n} hex digits (a {n}-byte {what})", convert, as_text=True)


def _same(v: Any) -> Any:
    return v


def mapping(schema: Schema, expected: str | None = None) -> Check:
    """A nested mapping whose keys are described by ``schema``; the value is a dict.

    Unknown keys, defaults, required keys, secrets, paths and cross-checks work exactly as in
    a section, at any depth. For an optional sub-mapping whose absence means "all defaults",
    give the field ``default=schema.defaults()``.
    """
    if expected is None:
        names = schema.field_names()
        expected = "a mapping with the keys " + ", ".join(names) if names else "an empty mapping"
    return Check(expected, _same, schema=schema)


def list_of(item: Union[Schema, Check], min_items: int = 0, max_items: int | None = None,
            unique_key: str | None = None, expected: str | None = None) -> Check:
    """A list whose items are mappings described by a Schema, or values passing a Check.

    ``unique_key`` names a field of the item schema whose (non-null) values must differ
    between items; the value is a list.
    """
    items = mapping(item) if isinstance(item, Schema) else item
    if not isinstance(items, Check):
        raise TypeError("list_of takes a Schema or a Check")
    if min_items < 0 or (max_items is not None and max_items < max(min_items, 1)):
        raise ValueError(f"bad item count limits {min_items}..{max_items}")
    if unique_key is not None and (items.schema is None
                                   or unique_key not in items.schema.field_names()):
        raise ValueError(f"unique_key {unique_key!r} must be a field of the item schema")
    if expected is None:
        if items.schema is not None:
            expected = "a list of " + items.expected.replace("a mapping", "mappings", 1)
        else:
            expected = f"a list, each item {items.expected}"
    return Check(expected, _same, items=items, min_items=min_items, max_items=max_items,
                 unique_key=unique_key)


def any_mapping(values: Check | None = None, expected: str | None = None) -> Check:
    """A mapping with free-form keys (kept as written, e.g. tags); each value passes ``values``.

    By default values are plain scalars: strings, numbers or booleans. The value is a dict.
    """
    values = scalar() if values is None else values
    if expected is None:
        expected = f"a mapping of names to values, each {values.expected}"
    return Check(expected, _same, values=values)


def one_of_keys(*names: str, required: bool = False) -> CrossCheck:
    """Cross-check: at most one of ``names`` may be given (exactly one if ``required``).

    For a secret given either as a file or inline, e.g. ``key`` (a secret file field) or
    ``key_hex`` (an inline secret); both fields should default to None.
    """
    if len(names) < 2:
        raise ValueError("one_of_keys needs at least two names")

    def rule(values: dict[str, Any]) -> list[tuple[str, str]]:
        given = [n for n in names if values.get(n) is not None]
        if len(given) > 1:
            return [(given[1], f"expected only one of {', '.join(names)}, got "
                     + ", ".join(given[:-1]) + f" and {given[-1]}")]
        if required and not given:
            return [(names[0], f"required key is missing (give one of {', '.join(names)})")]
        return []

    rule.checked_keys = names  # type: ignore[attr-defined]
    return rule

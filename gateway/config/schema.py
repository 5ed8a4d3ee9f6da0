"""The declarative tables every section and driver is described by: Schema, FieldSpec, Check."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True, slots=True)
class Check:
    """How to validate one value.

    ``convert`` returns the normalised value or raises ValueError/TypeError (its message, if
    any, is appended as detail); ``expected`` completes "expected ..., got ...". With
    ``as_text`` a scalar is passed as the text written in the file, not YAML's guess at it.

    Nested values are walked node by node, so their errors keep exact positions and key
    paths (``drivers[0].meters[3].id``). Build these with :func:`mapping` (``schema``: a
    mapping checked key by key like a section), :func:`list_of` (``items``: a list, each item
    checked by that Check; ``min_items``, ``max_items``, ``unique_key``) and
    :func:`any_mapping` (``values``: free-form keys, each value checked by that Check). For
    them ``convert`` is applied last, to the validated dict or list.
    """

    expected: str
    convert: Callable[[Any], Any]
    as_text: bool = False
    schema: Schema | None = None
    items: Check | None = None
    values: Check | None = None
    min_items: int = 0
    max_items: int | None = None
    unique_key: str | None = None

    def leaf(self) -> Check:
        """The check applied to each scalar value: through list items and mapping values."""
        c = self
        while c.items is not None or c.values is not None:
            c = c.items if c.items is not None else c.values  # type: ignore[assignment]
        return c


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One key of a section: its check, default (REQUIRED if none) and help text.

    ``path`` values are resolved against the config file's directory and stored absolute;
    ``must_exist`` additionally requires an existing regular file. A ``secret`` file must not
    be readable by group/other; a secret written inline requires the config file not to be.
    For :func:`list_of` and :func:`any_mapping` of scalars these flags apply to each item;
    a :func:`mapping` (or a list of them) takes them on the fields of its own schema instead.
    """

    name: str
    check: Check
    default: Any = REQUIRED
    help: str = ""
    secret: bool = False
    path: bool = False
    must_exist: bool = False

    def __post_init__(self) -> None:
        if self.check.leaf().schema is not None and (self.secret or self.path or self.must_exist):
            raise ValueError(f"field {self.name!r}: secret, path and must_exist go on the fields "
                             "of a nested schema, not on the mapping itself")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


# Cross-field rule: gets the validated values, returns (key, message) pairs. A rule with a
# ``checked_keys`` attribute (see one_of_keys) has those names checked against its schema.
CrossCheck = Callable[[dict[str, Any]], list[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class Schema:
    """The keys a section (or a driver entry's options) may hold, plus cross-field rules.

    ``check`` is one rule or a tuple of rules; they run only when every field is valid.
    """

    fields: tuple[FieldSpec, ...]
    check: CrossCheck | tuple[CrossCheck, ...] | None = None
    help: str = ""

    def __post_init__(self) -> None:
        names = self.field_names()
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names in schema: {names}")
        for rule in self.rules():
            unknown = [k for k in getattr(rule, "checked_keys", ()) if k not in names]
            if unknown:
                raise ValueError(f"cross-check refers to unknown fields {unknown}; "
                                 f"the schema has {names}")

    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def rules(self) -> tuple[CrossCheck, ...]:
        if self.check is None:
            return ()
        return self.check if isinstance(self.check, tuple) else (self.check,)

    def defaults(self) -> dict[str, Any]:
        """Every field's default, e.g. as the default of an optional :func:`mapping` field.

        Raises ValueError if a field is required.
        """
        missing = [f.name for f in self.fields if f.required]
        if missing:
            raise ValueError(f"no default for required fields {missing}")
        return {f.name: copy.deepcopy(f.default) for f in self.fields}


# Driver option tables use exactly the same mechanism as the core sections.
DriverSchema = Schema

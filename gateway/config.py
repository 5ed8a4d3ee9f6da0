"""Load and validate the gateway's YAML configuration.

Field techs edit this file on a live concentrator, so every problem is reported at once,
with ``file:line:column: key.path: expected X, got Y``, and bad input never produces a
Python traceback. Positions come from the YAML node tree (``yaml.compose``), not from
``safe_load``, which throws them away.

Every section (gateway, store, uplink, logging and each driver entry) is described by the
same declarative table of :class:`FieldSpec` and checked by one walker. Drivers add their
option tables with :func:`register_driver_schema` when their module is imported, so the
loader knows nothing about dlms, mbus, wmbus or zigbee; a module that registers a schema
must be imported before :func:`load_config` is called. Options may nest: a field can hold a
sub-mapping (:func:`mapping`), a list of values or of mappings (:func:`list_of`, e.g. a
driver's meters) or free-form tags (:func:`any_mapping`), all walked the same way, so an error
deep inside still reads ``file:line:col: drivers[0].meters[3].id: ...``.

``null`` (or an empty value) means "use the default". Types are strict: a quoted
``"8883"`` is not a port. String-valued keys take plain scalars as written, so
``id: 0001`` stays ``"0001"`` and ``tls_version: 1.2`` stays ``"1.2"`` instead of being
turned into a number by YAML.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import ipaddress
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Union

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# --------------------------------------------------------------------------- issues


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in a config file. line and column are 1-based; 0 means "whole file"."""

    file: str
    line: int
    column: int
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line > 0 else self.file
        what = f"{self.key_path}: {self.message}" if self.key_path else self.message
        return f"{where}: {what}"


class ConfigError(Exception):
    """The config file is unusable. ``issues`` holds every error found, not just the first."""

    def __init__(self, issues: Iterable[ConfigIssue], warnings: Iterable[ConfigIssue] = ()):
        self.issues = list(issues)
        self.warnings = list(warnings)
        super().__init__("\n".join(str(i) for i in self.issues))


# --------------------------------------------------------------------------- formatting


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {_quote(match[0])}?" if match else None


_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _join(parent: str, name: str) -> str:
    """Key path for display; odd key names are quoted so the path stays readable."""
    shown = name if _SIMPLE_KEY.fullmatch(name) else _quote(name)
    return f"{parent}.{shown}" if parent else shown


def _quote(s: str, limit: int = 60) -> str:
    """Double-quoted and escaped, truncated, and safe to print on any UTF-8 terminal."""
    if len(s) > limit:
        s = s[:limit - 3] + "..."
    return json.dumps(s, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


def _show(v: Any) -> str:
    """How a bad value is shown after "got"."""
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, Mapping):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, (bytes, bytearray)):
        return "binary data"
    if hasattr(v, "isoformat"):
        return f"a date {v.isoformat()}"
    return _show_plain(v)


def _show_plain(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}" if math.isfinite(v) else repr(v)
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, int) and v.bit_length() > 128:
        return "an integer of more than 128 bits"  # str() refuses ints above 4300 digits
    text_ = str(v)
    return text_ if len(text_) <= 60 else text_[:57] + "..."


# --------------------------------------------------------------------------- sizes

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
        raise ValueError(f"not a size: {_quote(text)}")
    unit = m[2].lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown unit {_quote(m[2])}; use B, KB, KiB, MB, MiB, GB or GiB")
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


# --------------------------------------------------------------------------- field specs


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
    expected = "one of " + ", ".join(_quote(c) for c in choices)

    def convert(v: Any) -> str:
        if not isinstance(v, str):
            raise TypeError()
        if v.lower() in choices:
            return v.lower()
        raise ValueError(_did_you_mean(v.lower(), choices) or "")

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
            raise ValueError(f"{_quote(bad)} is not a hex digit")
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


# --------------------------------------------------------------------------- core schemas


def _check_host(v: str) -> None:
    if not v or "://" in v or "/" in v or any(c.isspace() for c in v):
        raise ValueError()


def _check_topic_prefix(v: str) -> None:
    if not v or "+" in v or "#" in v or "\0" in v or "" in v.split("/"):
        raise ValueError()


def _check_client_id(v: str) -> None:
    if not v or len(v) > 256 or any(c.isspace() or not c.isprintable() for c in v):
        raise ValueError()


def _tls_version(v: Any) -> str:
    # "1.2" or "1.3"; as_text keeps an unquoted 1.2 from becoming a float.
    if not isinstance(v, str):
        raise TypeError()
    if v not in ("1.2", "1.3"):
        raise ValueError()
    return v


GATEWAY_SCHEMA = Schema((
    FieldSpec("id", ID, help="this gateway's unique id, e.g. gw-0001"),
    FieldSpec("board", ID, "generic-linux", help="board profile name"),
))

STORE_SCHEMA = Schema((
    FieldSpec("path", PATH, help="path of the store database, e.g. /var/lib/gateway/store.db",
              path=True),
    FieldSpec("max_bytes", size(64 * 1024), 512 * 1024**2,
              help="disk cap of the store; the oldest records are evicted beyond it"),
    FieldSpec("max_rows", integer(1), None, help="optional cap on stored records"),
    FieldSpec("commit_interval_ms", integer(1, 10000), 50,
              help="group commit: longest time a record waits before being committed"),
    FieldSpec("commit_max_records", integer(1, 1_000_000), 5000,
              help="group commit: most records committed in one transaction"),
    FieldSpec("reserve_bytes", size(0, 1024**3), 1024**2,
              help="space kept in a file beside the database and released to evict in when "
                   "the filesystem is full"),
))


def _uplink_rules(v: dict[str, Any]) -> list[tuple[str, str]]:
    if v["reconnect_max_s"] < v["reconnect_min_s"]:
        return [("reconnect_max_s", f"expected a number >= reconnect_min_s "
                                    f"({v['reconnect_min_s']:g}), got {v['reconnect_max_s']:g}")]
    return []


UPLINK_SCHEMA = Schema((
    FieldSpec("host", text("a host name or IP address (no scheme, port or path)",
                           validate=_check_host), help="the MQTT broker host name"),
    FieldSpec("port", integer(1, 65535), 8883, help="the MQTT broker TLS port"),
    file_field("ca", "CA certificate file (PEM) that signed the broker's certificate"),
    file_field("cert", "this gateway's client certificate file (PEM)"),
    file_field("key", "private key file of the client certificate", secret=True),
    file_field("signing_key", "private key file used to sign uplink batches", secret=True),
    FieldSpec("topic_prefix",
              text('an MQTT topic prefix such as "meters" or "utility/north" (no "+" or "#", '
                   'no empty levels, no leading or trailing "/")', validate=_check_topic_prefix),
              "meters", help="prefix of every published topic"),
    FieldSpec("client_id", text("an MQTT client id of 1-256 printable characters without spaces",
                                validate=_check_client_id),
              None, help="MQTT client id; defaults to the gateway id"),
    FieldSpec("keepalive_s", integer(5, 3600, "a whole number of seconds"), 30,
              help="MQTT keepalive interval"),
    FieldSpec("inflight", integer(1, 1000), 20, help="most unacknowledged messages in flight"),
    FieldSpec("batch_max_records", integer(1, 10000), 64, help="most records per message"),
    FieldSpec("batch_max_bytes", size(256, 268435455), 65536, help="largest message payload"),
    FieldSpec("reconnect_min_s", number(gt=0, what="a number of seconds"), 1,
              help="first reconnect back-off"),
    FieldSpec("reconnect_max_s", number(gt=0, what="a number of seconds"), 60,
              help="longest reconnect back-off"),
    FieldSpec("tls_version", Check('"1.2" (1.2 or newer) or "1.3"', _tls_version, as_text=True),
              "1.2", help="minimum TLS version"),
), check=_uplink_rules)

LOGGING_SCHEMA = Schema((
    FieldSpec("level", one_of("debug", "info", "warning", "error"), "info", help="log level"),
    FieldSpec("format", one_of("text", "json"), "text",
              help="text: logfmt lines (ts level=… comp=… msg=…); json: one JSON object per "
                   "line. Under systemd both drop their own timestamp where journald adds one "
                   "and carry journald priorities"),
))

CONTROL_SCHEMA = Schema((
    FieldSpec("socket", PATH, "/run/gateway/control.sock", path=True,
              help="Unix socket of the field-tech console (`gateway console`); no TCP"),
    FieldSpec("group", text("a group name", r"[A-Za-z_][A-Za-z0-9_.-]{0,31}"), None,
              help="group allowed to use the console (socket mode 0660); default: the "
                   "gateway user's group"),
    FieldSpec("audit_log", PATH, None, path=True,
              help="audit log of console changes; default: audit.log next to the store"),
    FieldSpec("audit_max_bytes", size(4096), 1024**2, help="rotate the audit log beyond this"),
    FieldSpec("audit_backups", integer(0, 100), 5, help="rotated audit logs kept"),
    FieldSpec("keys_dir", PATH, None, path=True,
              help="where `keys set` stores meter keys (mode 0600); default: keys/ next to "
                   "the store"),
    FieldSpec("roles", any_mapping(one_of("viewer", "technician", "admin"),
                                   "a mapping of Unix group names to viewer, technician or "
                                   "admin"), {},
              help="console roles by Unix group: viewer (status, meters, diag, tail), "
                   "technician (also read, listen, scan, permit-join, keys set), admin (also "
                   "config apply, fleet actions); none = every console user is admin"),
), help="the local control socket", check=lambda v: _control_rules(v))


def _control_rules(v: dict[str, Any]) -> list[tuple[str, str]]:
    bad = [g for g in v.get("roles") or {} if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", g)]
    return [("roles", f"expected group names as keys, got {len(bad)} that are not")] if bad else []

def _listen(v: Any) -> tuple[str, int]:
    """``9105``, ``"127.0.0.1:9105"`` or ``"[::1]:9105"`` -> (host, port); host defaults to
    loopback so that turning metrics on never exposes meter data by itself."""
    if isinstance(v, bool):
        raise TypeError()
    text_v = str(v).strip()
    host, sep, port_s = text_v.rpartition(":")
    if not sep:
        host, port_s = "127.0.0.1", text_v
    host = host.strip("[]") if host.startswith("[") else host
    if not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError()
    if ":" in host:
        ipaddress.IPv6Address(host)
    elif host != "localhost":
        ipaddress.IPv4Address(host)
    return host, int(port_s)


METRICS_SCHEMA = Schema((
    FieldSpec("listen", Check('a port or "address:port", e.g. 127.0.0.1:9105 or [::1]:9105',
                              _listen, as_text=True), None,
              help="serve Prometheus text format on http://ADDRESS:PORT/metrics; off when "
                   "unset; a bare port listens on 127.0.0.1 only"),
), help="the Prometheus metrics endpoint")

# --------------------------------------------------------------------------- edge section

def _decimal_text(v: Any) -> str:
    from decimal import Decimal, InvalidOperation
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise TypeError()
    try:
        d = Decimal(str(v).strip())
    except InvalidOperation:
        raise ValueError() from None
    if not d.is_finite() or d <= 0:
        raise ValueError()
    return str(d)


def _interval(v: Any) -> int:
    n = integer(60, 86400).convert(v)
    if 86400 % n:
        raise ValueError("intervals must tile a day")
    return n


ROLLOVER_SCHEMA = Schema((
    FieldSpec("register", text("a quantity or glob pattern such as 1-0:1.8.0 or 8-0:*"),
              help="which registers (OBIS code or description; * and ? match)"),
    FieldSpec("bus", ID, None, help="only readings of this driver instance"),
    FieldSpec("meter", text("a meter id or glob pattern"), None, help="only these meters"),
    FieldSpec("digits", integer(1, 38), None,
              help="the register wraps after this many digits of its mantissa (99999.999 -> 8)"),
    FieldSpec("bits", integer(1, 128), None, help="the raw counter wraps at 2**bits"),
    FieldSpec("wrap_at", Check("a positive decimal number such as 100000", _decimal_text,
                               as_text=True), None,
              help="the value (in the register's unit) at which it wraps to zero"),
), check=one_of_keys("digits", "bits", "wrap_at", required=True),
    help="a register that wraps at a fixed width")

RBE_SCHEMA = Schema((
    FieldSpec("enabled", boolean(), False,
              help="forward deltas, and register values only every N intervals or beyond the "
                   "deadband, instead of every value read"),
    FieldSpec("every_n_intervals", integer(1, 10000), 4,
              help="forward each cumulative register at least once per this many intervals"),
    FieldSpec("deadband", number(ge=0, le=1000, what="a fraction"), 0.05,
              help="forward an instantaneous value when it moved by more than this fraction "
                   "of the last forwarded one"),
    FieldSpec("skip_zero_deltas", boolean(), True,
              help="do not send deltas of zero: the register value sent every N intervals "
                   "shows that the missing intervals had no consumption"),
), help="report by exception (saves backhaul bytes)")

CLOCK_SCHEMA = Schema((
    FieldSpec("jump_threshold_ms", integer(100, 3_600_000), 2000,
              help="a wall-clock step larger than this (against the monotonic clock) is a jump"),
    FieldSpec("assume_synced", boolean(), False,
              help="trust the wall clock even when the kernel says it is not synchronised "
                   "(containers and test benches without NTP)"),
    FieldSpec("meter_time_window_s", integer(0, 10 * 365 * 86400), 86400,
              help="a current value whose meter timestamp is further than this from the "
                   "(synchronised) gateway clock is flagged meter_time_suspect: a replayed "
                   "telegram or a meter clock that was never set; 0 turns the check off"),
), help="clock trust")

DIAG_THRESHOLDS_SCHEMA = Schema((
    FieldSpec("consecutive_failures", integer(1, 10000), 3, help="failed reads in a row"),
    FieldSpec("min_success_ratio", number(ge=0, le=1, what="a fraction"), 0.8,
              help="read success ratio below which a meter is flagged"),
    FieldSpec("min_attempts", integer(1, 100000), 10,
              help="reads needed before the success ratio is judged"),
    FieldSpec("crc_errors", integer(1), 5, help="CRC/frame errors per diagnostics interval"),
    FieldSpec("decrypt_failures", integer(1), 1, help="decryption/authentication failures "
                                                      "per diagnostics interval"),
    FieldSpec("min_rssi_dbm", number(what="a level in dBm"), -100,
              help="mean RSSI below which the radio link is flagged"),
    FieldSpec("max_clock_drift_s", number(gt=0, what="a number of seconds"), 120,
              help="meter clock off the (synchronised) gateway clock by more than this"),
    FieldSpec("silent_after_s", number(gt=0, what="a number of seconds"), 7200,
              help="a meter not heard from for this long is flagged"),
    FieldSpec("stuck_after_s", number(gt=0, what="a number of seconds"), 172800,
              help="a cumulative register unchanged this long while the meter answers"),
    FieldSpec("leak_hours", integer(2, 720), 24,
              help="water/gas: no zero-flow hour within this many hours = suspected leak"),
    FieldSpec("reverse_registers", list_of(text("a quantity or glob pattern")), [],
              help="registers that count reverse flow (any increase is flagged)"),
    FieldSpec("store_depth", integer(1), 100000, help="unsent records in the store"),
    FieldSpec("oldest_unsent_s", number(gt=0, what="a number of seconds"), 3600,
              help="age of the oldest unsent record"),
    FieldSpec("disk_free_min", size(0), 50 * 1024**2, help="free space on the store's disk"),
    FieldSpec("memory_available_min", size(0), 32 * 1024**2, help="available memory"),
    FieldSpec("temperature_max_c", number(what="a temperature in Celsius"), 80,
              help="SoC temperature"),
), help="thresholds of the diagnostic events")

EDGE_SCHEMA = Schema((
    FieldSpec("enabled", boolean(), True, help="run the edge stage (deltas, diagnostics)"),
    FieldSpec("interval_s", Check("a number of seconds 60-86400 that divides a day "
                                  "(e.g. 900)", _interval), 900,
              help="interval grid the deltas are aligned to"),
    FieldSpec("gap_intervals", integer(1, 10000), 4,
              help="reads further apart than this many intervals are a gap: reported, not "
                   "interpolated across"),
    FieldSpec("registers", list_of(text("a quantity or glob pattern")), None,
              help="cumulative registers to compute deltas for; default: by unit (Wh, "
                   "varh, m3, l, J...)"),
    FieldSpec("rollover", list_of(ROLLOVER_SCHEMA), [], help="registers that wrap"),
    FieldSpec("report_by_exception", mapping(RBE_SCHEMA), RBE_SCHEMA.defaults(),
              help="report by exception"),
    FieldSpec("diag_interval_s", number(ge=1, what="a number of seconds"), 900,
              help="how often diagnostics snapshots are published on up/diag"),
    FieldSpec("clock", mapping(CLOCK_SCHEMA), CLOCK_SCHEMA.defaults(), help="clock trust"),
    FieldSpec("diagnostics", mapping(DIAG_THRESHOLDS_SCHEMA), DIAG_THRESHOLDS_SCHEMA.defaults(),
              help="thresholds of the diagnostic events"),
), help="edge computing: deltas, report by exception, diagnostics")

# --------------------------------------------------------------------------- fleet section

def _check_topic(v: str) -> None:
    if not v or "+" in v or "#" in v or "\0" in v or "" in v.split("/"):
        raise ValueError()


FLEET_SCHEMA = Schema((
    FieldSpec("command_keys", list_of(PATH), [], path=True, must_exist=True,
              help="head-end public keys (Ed25519 PEM) whose signed downlink commands are "
                   "obeyed; none = downlink commands disabled"),
    FieldSpec("release_keys", list_of(PATH), [], path=True, must_exist=True,
              help="release public keys (Ed25519 PEM) trusted to sign OTA bundles"),
    FieldSpec("topic", text('an MQTT topic without "+" or "#"', validate=_check_topic), None,
              help="fleet-wide command topic; default {topic_prefix}/fleet/down/cmd"),
    FieldSpec("releases_dir", PATH, None, path=True,
              help="A/B release root holding releases/A, releases/B and the current symlink "
                   "(e.g. /opt/gateway); none = OTA disabled"),
    FieldSpec("state_dir", PATH, None, path=True,
              help="trial, outcome and download state; default: fleet/ next to the store"),
    FieldSpec("health_deadline_s", number(gt=0, le=3600, what="a number of seconds"), 120,
              help="a new release/config/certificate must pass its health checks within this"),
    FieldSpec("health_settle_s", number(ge=0, le=600, what="a number of seconds"), 10,
              help="drivers must stay up this long (broker reached) to count as healthy"),
    FieldSpec("max_start_attempts", integer(1, 20), 3,
              help="starts a new release gets before the launcher rolls it back"),
    FieldSpec("reboot_command", list_of(text(), min_items=1), ["systemctl", "reboot"],
              help="argv run by the reboot command with mode: system"),
    FieldSpec("max_seq_jump", integer(1, 2**62), 86_400_000,
              help="a command's seq may be at most this far past the larger of the last "
                   "accepted seq and the gateway clock in ms (default one day of ms-time "
                   "seqs), so one command cannot lock the downlink"),
), help="fleet management: signed downlink commands, OTA updates")

# Top-level sections: name -> (schema, required). "drivers" is a list, handled separately.
SECTIONS: dict[str, tuple[Schema, bool]] = {
    "gateway": (GATEWAY_SCHEMA, True),
    "store": (STORE_SCHEMA, True),
    "uplink": (UPLINK_SCHEMA, True),
    "logging": (LOGGING_SCHEMA, False),
    "control": (CONTROL_SCHEMA, False),
    "edge": (EDGE_SCHEMA, False),
    "fleet": (FLEET_SCHEMA, False),
    "metrics": (METRICS_SCHEMA, False),
}
TOP_LEVEL_KEYS = [*SECTIONS, "drivers"]

# --------------------------------------------------------------------------- shared driver schemas

def _check_serial_port(v: str) -> None:
    # Absolute, and not checked for existence: a USB adapter may appear after start-up.
    # Not resolved against the config's directory either: "ttyUSB0" is a mistake, not a file.
    if "\0" in v or not v.startswith("/"):
        raise ValueError()


def _parity(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError()
    if v.upper() not in ("N", "E", "O"):
        raise ValueError()
    return v.upper()


RS485_SCHEMA = Schema((
    FieldSpec("mode", one_of("auto", "kernel", "rts"), "auto",
              help="who switches the transmitter: auto (the adapter, by itself), kernel (the "
                   "UART driver's RS-485 mode) or rts (the driver toggles RTS around writes)"),
    FieldSpec("rts_level_for_tx", boolean(), True, help="RTS level while transmitting"),
    FieldSpec("delay_before_tx_ms", integer(0, 100), 0, help="delay after RTS before sending"),
    FieldSpec("delay_before_rx_ms", integer(0, 100), 0, help="delay after sending before RTS "
                                                             "is released"),
), help="RS-485 half-duplex settings")

SERIAL_SCHEMA = Schema((
    FieldSpec("port", text("an absolute serial device path such as /dev/ttyUSB0",
                           validate=_check_serial_port),
              help="serial device, e.g. /dev/serial/by-id/usb-FTDI_...; it need not exist yet"),
    FieldSpec("baud", one_of_ints(300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600,
                                  115200, 230400), 9600, help="baud rate"),
    FieldSpec("bytesize", one_of_ints(7, 8), 8, help="data bits"),
    FieldSpec("parity", Check('one of "N", "E", "O"', _parity, as_text=True), "N",
              help="parity: N (none), E (even) or O (odd)"),
    FieldSpec("stopbits", one_of_ints(1, 2), 1, help="stop bits"),
    FieldSpec("rs485", mapping(RS485_SCHEMA), None,
              help="RS-485 half-duplex settings; omit for RS-232 or a USB adapter that "
                   "switches by itself"),
    FieldSpec("timeout_ms", integer(10, 60000), 1000, help="read timeout"),
), help="a serial port; embed as FieldSpec('serial', mapping(SERIAL_SCHEMA))")

# --------------------------------------------------------------------------- driver registry

DRIVER_SCHEMAS: dict[str, DriverSchema] = {}


def _driver_modules() -> dict[str, str]:
    from .drivers.registry import DRIVER_MODULES  # late: driver modules import this module
    return DRIVER_MODULES


def _driver_schema(type_name: str) -> DriverSchema | None:
    """The schema of a driver type, importing only that driver's module (a gateway with one
    bus should not pay the memory of every driver)."""
    if type_name not in DRIVER_SCHEMAS and type_name in _driver_modules():
        from .drivers.registry import load_schema
        load_schema(type_name)
    return DRIVER_SCHEMAS.get(type_name)
_DRIVER_COMMON = ("type", "name")


def register_driver_schema(type_name: str, schema: DriverSchema) -> None:
    """Declare the options of a driver type. Call at import time of the driver module.

    Registering the same schema twice is harmless (module reloads); a different schema under
    an existing name is a programming error.
    """
    if not re.fullmatch(ID_PATTERN, type_name):
        raise ValueError(f"invalid driver type name {type_name!r}")
    if not isinstance(schema, Schema):
        raise TypeError("schema must be a DriverSchema")
    names = schema.field_names()
    if len(set(names)) != len(names) or set(names) & set(_DRIVER_COMMON):
        raise ValueError(f"driver {type_name!r}: option names must be unique and not "
                         f"{' or '.join(_DRIVER_COMMON)}")
    old = DRIVER_SCHEMAS.get(type_name)
    if old is not None and old != schema:
        raise ValueError(f"driver type {type_name!r} is already registered")
    DRIVER_SCHEMAS[type_name] = schema


register_driver_schema("simulated", DriverSchema((
    FieldSpec("meters", integer(1, 100000), 1, help="number of simulated meters"),
    FieldSpec("interval_s", number(gt=0, what="a number of seconds"), 60,
              help="seconds between readings of one meter"),
    FieldSpec("meter_prefix", text("a string of 0-32 characters from A-Z a-z 0-9 . _ -",
                                   r"[A-Za-z0-9._-]{0,32}"), "sim-",
              help="prefix of the simulated meter ids"),
    FieldSpec("seed", integer(), 0, help="random seed, for reproducible runs"),
), help="generates plausible readings without hardware"))

# --------------------------------------------------------------------------- result


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    id: str
    board: str


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: str
    max_bytes: int
    max_rows: int | None
    commit_interval_ms: int
    commit_max_records: int
    reserve_bytes: int


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    host: str
    port: int
    ca: str
    cert: str
    key: str
    signing_key: str
    topic_prefix: str
    client_id: str
    keepalive_s: int
    inflight: int
    batch_max_records: int
    batch_max_bytes: int
    reconnect_min_s: float
    reconnect_max_s: float
    tls_version: str


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: str = "/run/gateway/control.sock"
    group: str | None = None
    audit_log: str | None = None  # filled in by the loader: next to the store
    audit_max_bytes: int = 1024**2
    audit_backups: int = 5
    keys_dir: str | None = None  # filled in by the loader: next to the store
    roles: Mapping[str, str] = field(default_factory=dict)  # Unix group -> console role


@dataclass(frozen=True, slots=True)
class RolloverRule:
    register: str
    bus: str | None = None
    meter: str | None = None
    digits: int | None = None
    bits: int | None = None
    wrap_at: str | None = None


@dataclass(frozen=True, slots=True)
class ReportByException:
    enabled: bool = False
    every_n_intervals: int = 4
    deadband: float = 0.05
    skip_zero_deltas: bool = True


@dataclass(frozen=True, slots=True)
class ClockTrust:
    jump_threshold_ms: int = 2000
    assume_synced: bool = False
    meter_time_window_s: int = 86400


@dataclass(frozen=True, slots=True)
class DiagThresholds:
    consecutive_failures: int = 3
    min_success_ratio: float = 0.8
    min_attempts: int = 10
    crc_errors: int = 5
    decrypt_failures: int = 1
    min_rssi_dbm: float = -100
    max_clock_drift_s: float = 120
    silent_after_s: float = 7200
    stuck_after_s: float = 172800
    leak_hours: int = 24
    reverse_registers: tuple[str, ...] = ()
    store_depth: int = 100000
    oldest_unsent_s: float = 3600
    disk_free_min: int = 50 * 1024**2
    memory_available_min: int = 32 * 1024**2
    temperature_max_c: float = 80


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """The ``edge:`` section (see EDGE_SCHEMA); the defaults equal the schema's."""

    enabled: bool = True
    interval_s: int = 900
    gap_intervals: int = 4
    registers: tuple[str, ...] | None = None
    rollover: tuple[RolloverRule, ...] = ()
    report_by_exception: ReportByException = ReportByException()
    diag_interval_s: float = 900
    clock: ClockTrust = ClockTrust()
    diagnostics: DiagThresholds = DiagThresholds()

    @classmethod
    def from_values(cls, v: Mapping[str, Any]) -> "EdgeConfig":
        d = {**EDGE_SCHEMA.defaults(), **{k: x for k, x in v.items() if x is not None}}
        th = dict(d["diagnostics"])
        th["reverse_registers"] = tuple(th.get("reverse_registers") or ())
        return cls(
            enabled=d["enabled"], interval_s=d["interval_s"], gap_intervals=d["gap_intervals"],
            registers=None if d["registers"] is None else tuple(d["registers"]),
            rollover=tuple(RolloverRule(**r) for r in d["rollover"]),
            report_by_exception=ReportByException(**d["report_by_exception"]),
            diag_interval_s=d["diag_interval_s"], clock=ClockTrust(**d["clock"]),
            diagnostics=DiagThresholds(**th))


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """One driver instance; options are validated and defaulted by its type's schema."""

    type: str
    name: str
    options: dict[str, Any]
    line: int


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The ``fleet:`` section (see FLEET_SCHEMA); the defaults equal the schema's."""

    command_keys: tuple[str, ...] = ()
    release_keys: tuple[str, ...] = ()
    topic: str | None = None
    releases_dir: str | None = None
    state_dir: str | None = None
    health_deadline_s: float = 120
    health_settle_s: float = 10
    max_start_attempts: int = 3
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    max_seq_jump: int = 86_400_000

    @classmethod
    def from_values(cls, v: Mapping[str, Any]) -> "FleetConfig":
        v = {**FLEET_SCHEMA.defaults(), **v}
        return cls(**{**v, **{k: tuple(v[k]) for k in
                              ("command_keys", "release_keys", "reboot_command")}})


@dataclass(frozen=True, slots=True)
class Config:
    gateway: GatewayConfig
    store: StoreConfig
    uplink: UplinkConfig
    logging: LoggingConfig
    drivers: tuple[DriverConfig, ...]
    source_path: str
    config_hash: str
    warnings: list[ConfigIssue] = field(default_factory=list, compare=False)
    control: ControlConfig = field(default_factory=ControlConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    board: dict[str, Any] = field(default_factory=dict)  # the validated boards/NAME.yaml

    def summary(self) -> str:
        """A few human lines for ``gateway check-config``; secrets are masked."""
        s, u = self.store, self.uplink
        lines = [
            f"config:  {self.source_path} (sha256 {self.config_hash[:16]})",
            f"gateway: {self.gateway.id} (board {self.gateway.board})",
            f"store:   {s.path}, cap {format_size(s.max_bytes)}"
            + (f", max {s.max_rows} rows" if s.max_rows is not None else "")
            + f", group commit {s.commit_interval_ms} ms / {s.commit_max_records} records",
            f"uplink:  {u.host}:{u.port} (TLS >= {u.tls_version}), client id {u.client_id}, "
            f"topic prefix {_quote(u.topic_prefix)}",
            f"logging: {self.logging.level} ({self.logging.format})",
            f"control: {self.control.socket}"
            + (f" (group {self.control.group})" if self.control.group else "")
            + f", audit log {self.control.audit_log}",
            "metrics: " + ("off" if self.metrics.listen is None else
                           "http://%s/metrics" % (f"[{self.metrics.listen[0]}]:{self.metrics.listen[1]}"
                                                  if ":" in self.metrics.listen[0] else
                                                  f"{self.metrics.listen[0]}:{self.metrics.listen[1]}")),
            "edge:    " + (f"deltas on a {self.edge.interval_s} s grid, diagnostics every "
                            f"{self.edge.diag_interval_s:g} s"
                            + (", report by exception"
                               if self.edge.report_by_exception.enabled else "")
                            if self.edge.enabled else "off"),
            f"fleet:   {len(self.fleet.command_keys)} command keys, "
            f"{len(self.fleet.release_keys)} release keys, OTA "
            + (f"into {self.fleet.releases_dir}" if self.fleet.releases_dir else "off"),
            f"drivers: {len(self.drivers)}",
        ]
        for d in self.drivers:
            schema = DRIVER_SCHEMAS.get(d.type)
            opts = _show_options(d.options, schema)
            lines.append(f"  - {d.name} ({d.type})" + (f": {opts}" if opts else ""))
        return "\n".join(lines)


def _show_options(values: Mapping[str, Any], schema: Schema | None) -> str:
    """``k=v, ...`` for the summary; secrets are masked at any depth."""
    specs = {f.name: f for f in schema.fields} if schema else {}
    return ", ".join(f"{k}={_show_option(v, specs.get(k))}" for k, v in values.items())


def _show_option(v: Any, spec: FieldSpec | None) -> str:
    if spec is not None and spec.secret:
        return "***"
    return _show_checked(v, spec.check if spec else None)


def _show_checked(v: Any, check: Check | None) -> str:
    if isinstance(v, dict):
        if check is not None and check.schema is not None:
            return "{" + _show_options(v, check.schema) + "}"
        inner = check.values if check is not None else None
        return "{" + ", ".join(f"{k}={_show_checked(x, inner)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        if v and all(isinstance(x, dict) for x in v):
            return f"[{len(v)} " + ("entry]" if len(v) == 1 else "entries]")
        inner = check.items if check is not None else None
        return "[" + ", ".join(_show_checked(x, inner) for x in v) + "]"
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return _show_plain(v)


# --------------------------------------------------------------------------- loading

MAX_CONFIG_BYTES = 4 * 1024 * 1024
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_DEPTH = 64
_MAX_NODES = 100_000


def load_config(path: Union[str, os.PathLike[str]], data: bytes | None = None, *,
                check_files: bool = True) -> Config:
    """Read, validate and default a config file. Raises ConfigError listing every problem.

    ``data``: the file's bytes, already read by the caller (the console opens the file once,
    checks it and hands its content over, so the file cannot be swapped in between).
    ``check_files=False`` skips the existence and mode checks of key, certificate and CA
    files (``gateway check-config --no-file-checks``: a config prepared for another machine).
    """
    return _Loader(path, data, check_files=check_files).load()


_Entries = dict[str, tuple[Node, Node]]


class _TooComplex(Exception):
    pass


class _Loader:
    """One pass over one file; collects issues instead of raising on the first."""

    def __init__(self, path: Union[str, os.PathLike[str]], data: bytes | None = None,
                 check_files: bool = True):
        self.check_files = check_files
        self.file = os.fspath(path)
        self.data = data
        self.abs = os.path.abspath(self.file)
        self.base = os.path.dirname(self.abs)
        self.errors: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []
        self.inline_secrets: list[tuple[Node, str]] = []
        self.constructor = SafeConstructor()

    # -- reporting

    def _issue(self, where: Node | None, key_path: str, message: str) -> ConfigIssue:
        if where is None:
            return ConfigIssue(self.file, 0, 0, key_path, message)
        mark = where.start_mark
        return ConfigIssue(self.file, mark.line + 1, mark.column + 1, key_path, message)

    def error(self, where: Node | None, key_path: str, message: str) -> None:
        self.errors.append(self._issue(where, key_path, message))

    def warn(self, where: Node | None, key_path: str, message: str) -> None:
        self.warnings.append(self._issue(where, key_path, message))

    def fail(self) -> ConfigError:
        return ConfigError(_tidy(self.errors), _tidy(self.warnings))

    # -- top level

    def load(self) -> Config:
        data = self._read()
        root = self._compose(data)
        if self.errors:
            raise self.fail()
        if root is None or _is_null(root):
            self.error(None, "", "file is empty; expected a mapping with the sections "
                       + ", ".join(TOP_LEVEL_KEYS))
            raise self.fail()
        top = self._entries(root, "", "a mapping with the sections " + ", ".join(TOP_LEVEL_KEYS))
        if top is None:
            raise self.fail()
        self._unknown_keys(top, TOP_LEVEL_KEYS, "")

        values: dict[str, dict[str, Any] | None] = {}
        for name, (schema, required) in SECTIONS.items():
            entry = top.get(name)
            if entry is None and required:
                self.error(root, name, "required section is missing")
                values[name] = None
                continue
            key_node, node = entry if entry else (root, None)
            entries = self._section_entries(node, name, schema)
            values[name] = None if entries is None else self._fields(schema, entries, name,
                                                                     key_node)
        drivers = self._drivers(top.get("drivers"), root)
        from .fleet.boards import resolve_board  # late: it imports this module
        board = resolve_board(self, top, values.get("gateway"), drivers)
        self._check_inline_secrets()
        if self.errors:
            raise self.fail()

        g, s, u, lg = (values[k] for k in ("gateway", "store", "uplink", "logging"))
        assert g is not None and s is not None and u is not None and lg is not None
        if u["client_id"] is None:
            u["client_id"] = g["id"]
        ctl = dict(values.get("control") or {})
        store_dir = os.path.dirname(s["path"])
        if ctl.get("audit_log") is None:
            ctl["audit_log"] = os.path.join(store_dir, "audit.log")
        if ctl.get("keys_dir") is None:
            ctl["keys_dir"] = os.path.join(store_dir, "keys")
        return Config(
            gateway=GatewayConfig(**g), store=StoreConfig(**s), uplink=UplinkConfig(**u),
            logging=LoggingConfig(**lg), drivers=tuple(drivers), source_path=self.abs,
            config_hash=hashlib.sha256(data).hexdigest(), warnings=_tidy(self.warnings),
            control=ControlConfig(**ctl), edge=EdgeConfig.from_values(values.get("edge") or {}),
            fleet=FleetConfig.from_values(values.get("fleet") or {}), board=board,
            metrics=MetricsConfig(**(values.get("metrics") or {})))

    def _read(self) -> bytes:
        if self.data is not None:
            data = self.data
            if len(data) > MAX_CONFIG_BYTES:
                self.error(None, "", f"cannot read: file is larger than "
                           f"{format_size(MAX_CONFIG_BYTES)}; is this really the config file?")
                raise self.fail()
            return data
        try:
            with open(self.file, "rb") as f:
                data = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as e:
            self.error(None, "", f"cannot read: {e.strerror or e}")
            raise self.fail() from None
        if len(data) > MAX_CONFIG_BYTES:
            self.error(None, "", f"cannot read: file is larger than {format_size(MAX_CONFIG_BYTES)};"
                       " is this really the config file?")
            raise self.fail()
        return data

    def _compose(self, data: bytes) -> Node | None:
        try:
            text_ = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
            self.errors.append(ConfigIssue(self.file, line, col, "",
                                           "expected UTF-8 text, got an invalid byte "
                                           f"0x{data[e.start]:02x}"))
            return None
        try:
            return yaml.compose(text_, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            msg = "YAML syntax error: " + (e.problem or "invalid YAML")
            if e.context:
                msg += f" ({e.context}"
                if e.context_mark is not None and e.context_mark is not mark:
                    msg += f" at line {e.context_mark.line + 1}"
                msg += ")"
            line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
            self.errors.append(ConfigIssue(self.file, line, col, "", msg))
        except yaml.reader.ReaderError as e:
            before = text_[:e.position]
            line = before.count("\n") + 1
            col = e.position - (before.rfind("\n") + 1) + 1
            self.errors.append(ConfigIssue(self.file, line, col, "",
                                           f"expected printable text, got character "
                                           f"U+{e.character:04X}" if isinstance(e.character, int)
                                           else f"YAML error: {e.reason}"))
        except yaml.YAMLError as e:
            self.errors.append(ConfigIssue(self.file, 0, 0, "", f"YAML error: {e}"))
        except RecursionError:
            self.errors.append(ConfigIssue(self.file, 0, 0, "",
                                           "expected a config file, got YAML nested too deeply"))
        return None

    # -- mappings

    def _entries(self, node: Node, key_path: str, expected: str,
                 _seen: set[int] | None = None) -> _Entries | None:
        """Keys of a mapping node with their nodes; reports non-mappings, odd and repeated keys.

        ``<<`` merge keys are honoured: explicit keys win over merged ones.
        """
        if not isinstance(node, MappingNode):
            self.error(node, key_path, f"expected {expected}, got {_node_kind(node, self)}")
            return None
        seen = set() if _seen is None else _seen
        if id(node) in seen:
            self.error(node, key_path, "expected a mapping, got a recursive merge")
            return {}
        seen.add(id(node))
        out: _Entries = {}
        merged: _Entries = {}
        for key, value in node.value:
            if key.tag == _MERGE_TAG:
                sources = value.value if isinstance(value, SequenceNode) else [value]
                for src in sources:
                    for name, e in (self._entries(src, key_path, "a mapping to merge", seen)
                                    or {}).items():
                        merged.setdefault(name, e)
                continue
            if not isinstance(key, ScalarNode):
                self.error(key, key_path, f"expected a key name, got {_node_kind(key, self)}")
                continue
            name = key.value
            if name in out:
                self.error(key, _join(key_path, name), "duplicate key (first given at line "
                           f"{out[name][0].start_mark.line + 1})")
                continue
            out[name] = (key, value)
        seen.discard(id(node))
        for name, e in merged.items():
            out.setdefault(name, e)
        return out

    def _section_entries(self, node: Node | None, key_path: str, schema: Schema) -> _Entries | None:
        if node is None or _is_null(node):
            return {}
        return self._entries(node, key_path, "a mapping with the keys "
                             + ", ".join(schema.field_names()))

    def _unknown_keys(self, entries: _Entries, known: list[str], key_path: str) -> None:
        for name, (key, _) in entries.items():
            if name not in known:
                hint = _did_you_mean(name, known) or "expected one of " + ", ".join(known)
                self.error(key, _join(key_path, name), f"unknown key; {hint}")

    # -- fields

    def _fields(self, schema: Schema, entries: _Entries, key_path: str,
                where: Node, out: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Validate and default every field of ``schema``; None if any of them is bad.

        ``where`` is the node blamed for missing keys (the section's key, or the entry).
        The good values are also put in ``out``, if given, even when others are bad.
        """
        self._unknown_keys(entries, schema.field_names(), key_path)
        values: dict[str, Any] = {} if out is None else out
        ok = True
        for f in schema.fields:
            kp = _join(key_path, f.name)
            entry = entries.get(f.name)
            if entry is None or _is_null(entry[1]):
                if not f.required:
                    values[f.name] = copy.deepcopy(f.default)  # a plugin may default to a list
                elif entry is None:
                    self.error(where, kp, "required key is missing"
                               + (f" ({f.help})" if f.help else ""))
                    ok = False
                else:
                    self.error(entry[1], kp, f"expected {f.check.expected}, got null")
                    ok = False
                continue
            value = self._value(f.check, f, entry[1], kp, entry[0])
            if value is _BAD:
                ok = False
            else:
                values[f.name] = value
        if ok:
            for rule in schema.rules():
                for name, message in rule(values):
                    node = entries[name][1] if name in entries else where
                    self.error(node, _join(key_path, name), message)
                    ok = False
        return values if ok else None

    def _value(self, check: Check, f: FieldSpec, node: Node, kp: str, key: Node | None,
               out: dict[str, Any] | None = None) -> Any:
        """One value (a field's, a list item's or a free mapping's) checked by ``check``.

        ``f`` supplies the path/secret flags for scalars; ``key`` is the node of the value's
        key, if it has one, blamed for keys missing from a nested mapping; ``out`` gets the
        good fields of a nested mapping even if others are bad.
        """
        if check.schema is not None:
            entries = self._entries(node, kp, check.expected)
            if entries is None:
                return _BAD
            value = self._fields(check.schema, entries, kp, node if key is None else key, out)
        elif check.items is not None:
            value = self._sequence(check, f, node, kp)
        elif check.values is not None:
            entries = self._entries(node, kp, check.expected)
            if entries is None:
                return _BAD
            value = {}
            for name, (k, v) in entries.items():
                value[name] = self._value(check.values, f, v, _join(kp, name), k)
            if any(v is _BAD for v in value.values()):
                return _BAD
        else:
            return self._scalar_value(check, f, node, kp)
        if value is None or value is _BAD:
            return _BAD
        try:
            return check.convert(value)
        except (ValueError, TypeError, ArithmeticError) as e:
            self.error(node, kp, f"expected {check.expected}, got {_show(value)}"
                       + (f"; {e}" if str(e) else ""))
            return _BAD

    def _sequence(self, check: Check, f: FieldSpec, node: Node, kp: str) -> Any:
        if not isinstance(node, SequenceNode):
            self.error(node, kp, f"expected {check.expected}, got {_node_kind(node, self)}")
            return _BAD
        n = len(node.value)
        ok = True
        if n < check.min_items:
            self.error(node, kp, f"expected at least {_count(check.min_items, 'item')}, got "
                       + ("an empty list" if n == 0 else str(n)))
            ok = False
        if check.max_items is not None and n > check.max_items:
            self.error(node.value[check.max_items], f"{kp}[{check.max_items}]",
                       f"expected at most {_count(check.max_items, 'item')}, got {n}")
            ok = False
        out: list[Any] = []
        first: dict[Any, int] = {}
        for i, item in enumerate(node.value):
            ikp = f"{kp}[{i}]"
            good: dict[str, Any] = {}  # the item's valid fields, to find duplicates anyway
            value = self._value(check.items, f, item, ikp, None, good)  # type: ignore[arg-type]
            if value is _BAD:
                ok = False
            else:
                out.append(value)
            u = check.unique_key
            if u is None or good.get(u) is None:
                continue
            where = _direct_value(item, u) or item
            seen = _hashable(good[u])
            if seen in first:
                self.error(where, _join(ikp, u), f"duplicate {u} {_show(good[u])} "
                           f"(first at line {first[seen]})")
                ok = False
            else:
                first[seen] = where.start_mark.line + 1
        return out if ok else _BAD

    def _scalar_value(self, check: Check, f: FieldSpec, node: Node, kp: str) -> Any:
        if isinstance(node, ScalarNode) and check.as_text:
            raw: Any = node.value
        else:
            raw = self._plain(node, kp)
            if raw is _BAD:
                return _BAD
        try:
            value = check.convert(raw)
        except (ValueError, TypeError, ArithmeticError) as e:
            detail = str(e)
            got = _show_secret(raw) if f.secret and not f.path else _show(raw)
            self.error(node, kp, f"expected {check.expected}, got {got}"
                       + (f"; {detail}" if detail else ""))
            return _BAD
        if f.path:
            value = os.path.normpath(os.path.join(self.base, value))
            if f.must_exist and self.check_files and not self._check_file(node, kp, value,
                                                                        f.secret):
                return _BAD
        elif f.secret:
            self.inline_secrets.append((node, kp))
        return value

    def _check_file(self, node: Node, kp: str, path: str, secret: bool) -> bool:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self.error(node, kp, f"file not found: {path}")
            return False
        except (OSError, ValueError) as e:
            self.error(node, kp, f"cannot access {path}: {getattr(e, 'strerror', None) or e}")
            return False
        if not stat.S_ISREG(st.st_mode):
            self.error(node, kp, f"expected a file, got a directory or device: {path}")
            return False
        if secret and st.st_mode & 0o077:
            self.warn(node, kp, f"{path} is readable by group/other "
                      f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        return True

    def _check_inline_secrets(self) -> None:
        if not self.inline_secrets:
            return
        try:
            mode = stat.S_IMODE(os.stat(self.abs).st_mode)
        except OSError:
            return
        if mode & 0o077:
            for node, kp in self.inline_secrets:
                self.warn(node, kp, f"secret written in {self.file}, which is readable by "
                          f"group/other (mode {mode:04o}); chmod 600 it")

    def _plain(self, node: Node, kp: str) -> Any:
        """A node as plain Python data (scalars typed by YAML's rules); _BAD after reporting."""
        budget = [_MAX_NODES]

        def walk(n: Node, depth: int, stack: set[int]) -> Any:
            budget[0] -= 1
            if depth > _MAX_DEPTH or budget[0] < 0 or id(n) in stack:
                raise _TooComplex()
            if isinstance(n, ScalarNode):
                return self._scalar(n)
            stack.add(id(n))
            try:
                if isinstance(n, SequenceNode):
                    return [walk(c, depth + 1, stack) for c in n.value]
                return {(k.value if isinstance(k, ScalarNode) else str(id(k))):
                        walk(v, depth + 1, stack) for k, v in n.value}
            finally:
                stack.discard(id(n))

        try:
            return walk(node, 0, set())
        except _TooComplex:
            self.error(node, kp, "expected a plain value, got a recursive or too deeply nested one")
        except _BadScalar as e:
            self.error(e.node, kp, _bad_scalar_message(e.node))
        return _BAD

    def _scalar(self, node: ScalarNode) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except Exception:  # noqa: BLE001 - bad explicit tags (!!int abc) fail in many ways
            raise _BadScalar(node) from None

    # -- drivers

    def _drivers(self, entry: tuple[Node, Node] | None, root: Node) -> list[DriverConfig]:
        if entry is None:
            self.error(root, "drivers", "required section is missing")
            return []
        _, node = entry
        if not isinstance(node, SequenceNode):
            self.error(node, "drivers", "expected a list of driver entries, got "
                       + _node_kind(node, self))
            return []
        if not node.value:
            self.error(node, "drivers", "expected at least one driver, got an empty list")
            return []
        types = sorted(set(DRIVER_SCHEMAS) | set(_driver_modules()))
        type_check = Check("a registered driver type: " + ", ".join(_quote(t) for t in types),
                           lambda v: _driver_type(v, types), as_text=True)
        common = (FieldSpec("type", type_check, help="driver type, one of " + ", ".join(types)),
                  FieldSpec("name", ID, None, help="unique driver name; defaults to the type"))
        out: list[DriverConfig] = []
        first_of: dict[str, int] = {}
        for i, item in enumerate(node.value):
            kp = f"drivers[{i}]"
            entries = self._entries(item, kp, "a mapping with type, name and driver options")
            if entries is None:
                continue
            type_node = entries.get("type")
            schema = None
            if type_node is not None and isinstance(type_node[1], ScalarNode):
                schema = _driver_schema(type_node[1].value)
            if schema is None:
                # Unknown type: report it (and a bad name) but not options we cannot judge.
                filtered = {k: v for k, v in entries.items() if k in _DRIVER_COMMON}
                self._fields(Schema(common), filtered, kp, item)
                continue
            full = Schema(common + schema.fields, schema.check)
            values = self._fields(full, entries, kp, item)
            if values is None:
                continue
            dtype = values.pop("type")
            name = values.pop("name") or dtype
            if name in first_of:
                where = entries["name"][1] if "name" in entries else item
                self.error(where, _join(kp, "name"), f"expected a unique driver name, got "
                           f"{_quote(name)} again (first used at line {first_of[name]})")
                continue
            line = item.start_mark.line + 1
            first_of[name] = line
            out.append(DriverConfig(dtype, name, values, line))
        return out


# --------------------------------------------------------------------------- helpers


class _Bad:
    def __repr__(self) -> str:
        return "<bad>"


_BAD: Any = _Bad()


class _BadScalar(Exception):
    def __init__(self, node: ScalarNode):
        super().__init__(node.value)
        self.node = node


def _bad_scalar_message(node: ScalarNode) -> str:
    """For scalars YAML itself cannot construct, which only happens with explicit tags."""
    std = "tag:yaml.org,2002:"
    if node.tag.startswith(std):
        return f"expected a valid !!{node.tag[len(std):]} value, got {_quote(node.value)}"
    return f"expected an untagged value, got one tagged {_quote(node.tag)}"


def _show_secret(v: Any) -> str:
    """A bad secret value, described without echoing it into logs."""
    if isinstance(v, str):
        return f"{_count(len(v), 'character')} (not shown: secret)"
    if isinstance(v, (Mapping, list)):
        return _show(v)
    return "a value that is not a string (not shown: secret)"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _direct_value(node: Node, name: str) -> Node | None:
    """The value node of key ``name`` written directly in a mapping node (not merged)."""
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.tag != _MERGE_TAG and k.value == name:
                return v
    return None


def _hashable(v: Any) -> Any:
    """A dict key standing for a validated value (unique_key values may be lists or dicts)."""
    try:
        hash(v)
        return (type(v) is bool, v)  # keep true apart from 1
    except TypeError:
        return repr(v)


def _driver_type(v: Any, types: list[str]) -> str:
    if not isinstance(v, str):
        raise TypeError()
    if v not in types:
        raise ValueError(_did_you_mean(v, types) or "")
    return v


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _node_kind(node: Node, loader: _Loader) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    try:
        return _show(loader._scalar(node))
    except _BadScalar:
        return _quote(node.value)  # the caller's "expected ..." is the useful part


def _tidy(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Drop repeats (an aliased node is visited once per use) and sort by position."""
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: (i.line, i.column))

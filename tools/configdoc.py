"""Writes docs/configuration.md from the config schema itself, so the reference cannot drift
from what the loader accepts: ``python -m tools.configdoc > docs/configuration.md``
(tests/test_configdoc.py fails when the committed file is stale)."""

from __future__ import annotations

import sys
from typing import Any, Iterator

from gateway.config import (DRIVER_SCHEMAS, REQUIRED, SECTIONS, Check, FieldSpec, Schema,
                            format_size, load_schemas)
from gateway.drivers.registry import DRIVER_MODULES

HEADER = """# Configuration reference

Generated from the schema in `gateway/config.py` and the drivers' option tables by
`python -m tools.configdoc > docs/configuration.md`; a test fails when this file is stale.
One YAML file (`gateway check-config -c FILE` validates it; every error names file, line and
column). Relative paths are resolved against the config file's directory. Sizes take
`KiB`/`MiB`/`GiB` (`512MiB`). `config/example.yaml` (`gateway example-config`) is a
production-shaped starting point.
"""


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(f: FieldSpec) -> str:
    d = f.default
    if d is REQUIRED:
        return "**required**"
    if d is None:
        return "none"
    if isinstance(d, bool):
        return "true" if d else "false"
    if isinstance(d, int) and "size" in f.check.expected.lower() and d >= 1024:
        return f"`{format_size(d).replace(' ', '')}`"
    if isinstance(d, (list, tuple)) and not d:
        return "`[]`"
    if isinstance(d, dict):
        return "see below"
    return f"`{d}`"


def _rows(schema: Schema, prefix: str) -> Iterator[tuple[str, FieldSpec]]:
    for f in schema.fields:
        key = f"{prefix}{f.name}"
        yield key, f
        check: Check | None = f.check
        suffix = ""
        while check is not None and check.schema is None and (check.items or check.values):
            suffix += "[]" if check.items is not None else ".*"
            check = check.items or check.values
        if check is not None and check.schema is not None:
            yield from _rows(check.schema, f"{key}{suffix}.")


def _table(schema: Schema, prefix: str) -> list[str]:
    out = ["| key | expected | default | meaning |", "|---|---|---|---|"]
    for key, f in _rows(schema, prefix):
        flags = []
        if f.secret:
            flags.append("secret: a file readable by group/other is a warning")
        if f.must_exist:
            flags.append("must exist")
        meaning = _cell(f.help) + (f" ({'; '.join(flags)})" if flags else "")
        out.append(f"| `{key}` | {_cell(f.check.expected)} | {_default(f)} | {meaning} |")
    return out


def render() -> str:
    load_schemas()
    lines = [HEADER]
    for name, (schema, required) in SECTIONS.items():
        lines += ["", f"## `{name}`" + (" (required)" if required else " (optional)"), ""]
        if schema.help:
            lines += [_cell(schema.help)[0].upper() + _cell(schema.help)[1:] + ".", ""]
        lines += _table(schema, f"{name}.")
    lines += ["", "## `drivers` (a list; each entry has `type` and `name`)", "",
              "Each bus is one entry: `type` picks the driver, `name` (an id, unique) names the "
              "bus in logs, events and the console. The options of each type:"]
    for type_name in DRIVER_MODULES:
        schema = DRIVER_SCHEMAS.get(type_name)
        if schema is None:
            continue
        lines += ["", f"### `type: {type_name}`", ""]
        if schema.help:
            lines += [_cell(schema.help)[0].upper() + _cell(schema.help)[1:] + ".", ""]
        lines += _table(schema, "")
    return "\n".join(lines) + "\n"


def undocumented() -> list[str]:
    """Keys whose schema entry has no help text (a test keeps this empty)."""
    load_schemas()
    out: list[str] = []
    for name, (schema, _) in SECTIONS.items():
        out += [k for k, f in _rows(schema, f"{name}.") if not f.help.strip()]
    for type_name, schema in DRIVER_SCHEMAS.items():
        out += [f"drivers[type={type_name}].{k}" for k, f in _rows(schema, "") if not f.help.strip()]
    return out


def main(argv: list[str] | None = None) -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())

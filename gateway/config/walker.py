"""The one walker that checks a YAML file against a Schema, node by node, collecting every
issue with its file:line:col instead of raising on the first (config files, board profiles)."""

from __future__ import annotations

import copy
import os
import stat
from typing import Any, Union

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .issues import ConfigError, ConfigIssue, tidy
from .nodes import (BAD, MAX_DEPTH, MAX_NODES, MERGE_TAG, BadScalar, Entries, TooComplex,
                    bad_scalar_message, direct_value, hashable_key, is_null, node_kind)
from .schema import Check, FieldSpec, Schema
from .show import count_noun, did_you_mean, join_key, show_value, show_secret
from .sizes import format_size

MAX_CONFIG_BYTES = 4 * 1024 * 1024


class Walker:
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
        return ConfigError(tidy(self.errors), tidy(self.warnings))

    # -- reading

    def document(self, schema: Schema, empty: str) -> tuple[dict[str, Any] | None, Entries]:
        """The whole file as one mapping checked by ``schema`` (a board profile): its values
        (None if any is bad) and its entries, for the caller's own checks."""
        root = self.compose(self.read())
        if root is None:
            if not self.errors:
                self.error(None, "", empty)
            return None, {}
        entries = self.entries(root, "", schema.help)
        if entries is None:
            return None, {}
        return self.fields(schema, entries, "", root), entries

    def read(self) -> bytes:
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

    def compose(self, data: bytes) -> Node | None:
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

    def entries(self, node: Node, key_path: str, expected: str,
                 _seen: set[int] | None = None) -> Entries | None:
        """Keys of a mapping node with their nodes; reports non-mappings, odd and repeated keys.

        ``<<`` merge keys are honoured: explicit keys win over merged ones.
        """
        if not isinstance(node, MappingNode):
            self.error(node, key_path, f"expected {expected}, got {node_kind(node, self)}")
            return None
        seen = set() if _seen is None else _seen
        if id(node) in seen:
            self.error(node, key_path, "expected a mapping, got a recursive merge")
            return {}
        seen.add(id(node))
        out: Entries = {}
        merged: Entries = {}
        for key, value in node.value:
            if key.tag == MERGE_TAG:
                sources = value.value if isinstance(value, SequenceNode) else [value]
                for src in sources:
                    for name, e in (self.entries(src, key_path, "a mapping to merge", seen)
                                    or {}).items():
                        merged.setdefault(name, e)
                continue
            if not isinstance(key, ScalarNode):
                self.error(key, key_path, f"expected a key name, got {node_kind(key, self)}")
                continue
            name = key.value
            if name in out:
                self.error(key, join_key(key_path, name), "duplicate key (first given at line "
                           f"{out[name][0].start_mark.line + 1})")
                continue
            out[name] = (key, value)
        seen.discard(id(node))
        for name, e in merged.items():
            out.setdefault(name, e)
        return out

    def section_entries(self, node: Node | None, key_path: str, schema: Schema) -> Entries | None:
        if node is None or is_null(node):
            return {}
        return self.entries(node, key_path, "a mapping with the keys "
                             + ", ".join(schema.field_names()))

    def unknown_keys(self, entries: Entries, known: list[str], key_path: str) -> None:
        for name, (key, _) in entries.items():
            if name not in known:
                hint = did_you_mean(name, known) or "expected one of " + ", ".join(known)
                self.error(key, join_key(key_path, name), f"unknown key; {hint}")

    # -- fields

    def fields(self, schema: Schema, entries: Entries, key_path: str,
                where: Node, out: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Validate and default every field of ``schema``; None if any of them is bad.

        ``where`` is the node blamed for missing keys (the section's key, or the entry).
        The good values are also put in ``out``, if given, even when others are bad.
        """
        self.unknown_keys(entries, schema.field_names(), key_path)
        values: dict[str, Any] = {} if out is None else out
        ok = True
        for f in schema.fields:
            kp = join_key(key_path, f.name)
            entry = entries.get(f.name)
            if entry is None or is_null(entry[1]):
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
            if value is BAD:
                ok = False
            else:
                values[f.name] = value
        if ok:
            for rule in schema.rules():
                for name, message in rule(values):
                    node = entries[name][1] if name in entries else where
                    self.error(node, join_key(key_path, name), message)
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
            entries = self.entries(node, kp, check.expected)
            if entries is None:
                return BAD
            value = self.fields(check.schema, entries, kp, node if key is None else key, out)
        elif check.items is not None:
            value = self._sequence(check, f, node, kp)
        elif check.values is not None:
            entries = self.entries(node, kp, check.expected)
            if entries is None:
                return BAD
            value = {}
            for name, (k, v) in entries.items():
                value[name] = self._value(check.values, f, v, join_key(kp, name), k)
            if any(v is BAD for v in value.values()):
                return BAD
        else:
            return self._scalar_value(check, f, node, kp)
        if value is None or value is BAD:
            return BAD
        try:
            return check.convert(value)
        except (ValueError, TypeError, ArithmeticError) as e:
            self.error(node, kp, f"expected {check.expected}, got {show_value(value)}"
                       + (f"; {e}" if str(e) else ""))
            return BAD

    def _sequence(self, check: Check, f: FieldSpec, node: Node, kp: str) -> Any:
        if not isinstance(node, SequenceNode):
            self.error(node, kp, f"expected {check.expected}, got {node_kind(node, self)}")
            return BAD
        n = len(node.value)
        ok = True
        if n < check.min_items:
            self.error(node, kp, f"expected at least {count_noun(check.min_items, 'item')}, got "
                       + ("an empty list" if n == 0 else str(n)))
            ok = False
        if check.max_items is not None and n > check.max_items:
            self.error(node.value[check.max_items], f"{kp}[{check.max_items}]",
                       f"expected at most {count_noun(check.max_items, 'item')}, got {n}")
            ok = False
        out: list[Any] = []
        first: dict[Any, int] = {}
        for i, item in enumerate(node.value):
            ikp = f"{kp}[{i}]"
            good: dict[str, Any] = {}  # the item's valid fields, to find duplicates anyway
            value = self._value(check.items, f, item, ikp, None, good)  # type: ignore[arg-type]
            if value is BAD:
                ok = False
            else:
                out.append(value)
            u = check.unique_key
            if u is None or good.get(u) is None:
                continue
            where = direct_value(item, u) or item
            seen = hashable_key(good[u])
            if seen in first:
                self.error(where, join_key(ikp, u), f"duplicate {u} {show_value(good[u])} "
                           f"(first at line {first[seen]})")
                ok = False
            else:
                first[seen] = where.start_mark.line + 1
        return out if ok else BAD

    def _scalar_value(self, check: Check, f: FieldSpec, node: Node, kp: str) -> Any:
        if isinstance(node, ScalarNode) and check.as_text:
            raw: Any = node.value
        else:
            raw = self._plain(node, kp)
            if raw is BAD:
                return BAD
        try:
            value = check.convert(raw)
        except (ValueError, TypeError, ArithmeticError) as e:
            detail = str(e)
            got = show_secret(raw) if f.secret and not f.path else show_value(raw)
            self.error(node, kp, f"expected {check.expected}, got {got}"
                       + (f"; {detail}" if detail else ""))
            return BAD
        if f.path:
            value = os.path.normpath(os.path.join(self.base, value))
            if f.must_exist and self.check_files and not self._check_file(node, kp, value,
                                                                        f.secret):
                return BAD
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
        """A node as plain Python data (scalars typed by YAML's rules); BAD after reporting."""
        budget = [MAX_NODES]

        def walk(n: Node, depth: int, stack: set[int]) -> Any:
            budget[0] -= 1
            if depth > MAX_DEPTH or budget[0] < 0 or id(n) in stack:
                raise TooComplex()
            if isinstance(n, ScalarNode):
                return self.construct(n)
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
        except TooComplex:
            self.error(node, kp, "expected a plain value, got a recursive or too deeply nested one")
        except BadScalar as e:
            self.error(e.node, kp, bad_scalar_message(e.node))
        return BAD

    def construct(self, node: ScalarNode) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except Exception:  # noqa: BLE001 - bad explicit tags (!!int abc) fail in many ways
            raise BadScalar(node) from None

    # -- drivers

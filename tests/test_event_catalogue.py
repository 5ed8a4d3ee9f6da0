"""Event kinds are named once, in gateway/events.py, and diagnostics count by the catalogue."""

from __future__ import annotations

import ast
import pathlib

import pytest

from gateway import events
from gateway.edge.diagnostics import FAILURE_KINDS, MeterHealth

ROOT = pathlib.Path(__file__).resolve().parents[1] / "gateway"


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = n.body[0] if n.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _literals() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "events.py" and path.parent == ROOT:
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for n in ast.walk(tree):
            if (isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
                    and n.value in events.CATALOGUE):
                found.append(f"{path.relative_to(ROOT.parent)}:{n.lineno}: {n.value!r}")
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Event" and n.args:
                first = n.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.append(f"{path.relative_to(ROOT.parent)}:{n.lineno}: Event({first.value!r})"
                                 " (not catalogued)")
    return found


def test_no_event_kind_literal_outside_the_catalogue():
    assert _literals() == []


def test_every_counted_kind_is_catalogued_and_feeds_a_real_counter():
    counters = {f for f in MeterHealth.__dataclass_fields__} | {"read_failures"}
    assert FAILURE_KINDS, "diagnostics count nothing"
    for kind, counter in FAILURE_KINDS.items():
        assert kind in events.CATALOGUE
        assert counter in counters, (kind, counter)
    # the drift issue 17 names: truncated and malformed frames are counted now
    assert FAILURE_KINDS[events.TRUNCATED] == events.CRC_ERRORS
    assert FAILURE_KINDS[events.MALFORMED] == events.READ_FAILURES
    assert "meter.timeout" not in FAILURE_KINDS  # nothing emits it


def test_event_takes_the_catalogue_severity_unless_told():
    ev = events.event(events.READ_FAILED, 1, "bus1", "m1", {"error": "x"})
    assert (ev.kind, ev.severity, ev.meter_id, ev.detail) == (
        "meter.read_failed", "warning", "m1", {"error": "x"})
    assert events.event(events.READ_FAILED, 1, "bus1", severity="error").severity == "error"
    with pytest.raises(KeyError):
        events.event("meter.never_heard_of", 1, "bus1")


def test_catalogue_refuses_a_kind_twice_and_an_unknown_severity():
    with pytest.raises(ValueError):
        events._kind(events.READ_FAILED, "warning", "again")
    with pytest.raises(ValueError):
        events._kind("meter.some_new_kind", "loud", "x")
    assert "meter.some_new_kind" not in events.CATALOGUE

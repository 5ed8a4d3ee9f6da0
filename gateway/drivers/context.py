"""What a driver is given: a small context, never the runtime.

Why: drivers used to reach through their sink for the store (``sink.store.get_cursor``)
and the config (``sink.config.control.keys_dir``), so a driver depended on how the runtime
happened to be built, and a test had to fake a runtime. The wiring module builds one
:class:`DriverContext` per driver with exactly what a driver may use.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

from ..model import Record


class RecordSink(Protocol):
    """Where drivers hand their records: the edge stage, then the store."""

    def submit(self, records: Iterable[Record],
               cursors: Mapping[tuple[str, str], Any] | None = None) -> "Future[list[int]]": ...


CursorReader = Callable[[str, str, Any], Any]  # (meter_id, name, default) -> stored value


def _no_cursors(meter_id: str, name: str, default: Any = None) -> Any:
    return default


@dataclass
class DriverContext:
    sink: RecordSink
    # reads a cursor the driver stored with its records (``emit(..., cursors=...)``): an
    # invocation counter, a replay guard, the compact formats learnt; default if none
    cursors: CursorReader = _no_cursors
    keys_dir: str | None = None  # where ``keys set`` stores meter keys (control.keys_dir)
    log: logging.Logger | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, sink_or_ctx: "DriverContext | RecordSink",
           options: Mapping[str, Any] | None = None) -> "DriverContext":
        """A context for a driver built on its own (a test, a tool): a bare sink is wrapped;
        ``options["keys_dir"]``, when given, wins (tests point it at a temp dir)."""
        if isinstance(sink_or_ctx, DriverContext):
            ctx = sink_or_ctx
        else:
            reader = getattr(sink_or_ctx, "get_cursor", None)
            ctx = cls(sink_or_ctx, reader if callable(reader) else _no_cursors)
        given = (options or {}).get("keys_dir")
        if given and ctx.keys_dir != str(given):
            ctx = DriverContext(ctx.sink, ctx.cursors, str(given), ctx.log, dict(ctx.extra))
        return ctx

"""Plain-text output for an 80-column serial terminal: ASCII only, tables that fit, colour
only on a tty and never when NO_COLOR is set (https://no-color.org) or TERM=dumb."""

from __future__ import annotations

import os
import re
import sys
import textwrap
import time
from typing import Any, Sequence, TextIO

WIDTH = 80
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def use_colour(stream: TextIO) -> bool:
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


class Out:
    """Where a command's human output goes, with optional colour for levels and states."""

    COLOURS = {"ok": "32", "warn": "33", "fail": "31", "dim": "2", "bold": "1"}

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = use_colour(self.stream) if colour is None else colour

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def paint(self, text: str, style: str) -> str:
        code = self.COLOURS.get(style)
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def kv(self, rows: Sequence[tuple[str, Any]], indent: int = 0) -> None:
        """``key   value`` lines, keys padded to a common width."""
        w = max((len(k) for k, _ in rows), default=0)
        for k, v in rows:
            self.wrapped(" " * indent + f"{k:<{w}}  ", "-" if v is None else str(v))

    def wrapped(self, head: str, text: str) -> None:
        """``head`` then ``text`` wrapped to the terminal, continuation lines indented."""
        shown = len(_ANSI.sub("", head))
        width = max(20, WIDTH - 1 - shown)
        parts = textwrap.wrap(text, width, break_on_hyphens=False) or [""]
        self.line(head + parts[0])
        for p in parts[1:]:
            self.line(" " * shown + p)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]],
              shrink: int | None = None, indent: int = 0) -> None:
        """Columns sized to their content; if the table is wider than the terminal, column
        ``shrink`` (default: the widest) is cut with ``~``."""
        cells = [[("-" if c is None else str(c)) for c in r] for r in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        total = indent + sum(widths) + 2 * (len(widths) - 1)
        if total > WIDTH - 1:
            i = shrink if shrink is not None else widths.index(max(widths))
            widths[i] = max(len(headers[i]), 4, widths[i] - (total - (WIDTH - 1)))
        pad = " " * indent
        self.line(self.paint(pad + "  ".join(f"{h:<{w}}" for h, w in zip(headers, widths))
                             .rstrip(), "bold"))
        for r in cells:
            self.line(fit(pad + "  ".join(f"{cut(c, w):<{w}}" for c, w in zip(r, widths))
                          .rstrip()))


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "~"


def fit(text: str, width: int = WIDTH - 1) -> str:
    return cut(text, width)


def ascii_safe(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")


def age(ts_ms: int | None, now_ms: int | None = None) -> str:
    """``4s ago``, ``3m ago``, ``2h ago``, ``5d ago``; ``never`` for None."""
    if ts_ms is None:
        return "never"
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return duration(max(0, now - ts_ms) / 1000) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clock(ts_ms: int | None, date: bool = False) -> str:
    """UTC wall-clock time of a record; the date only when asked (it rarely fits)."""
    if ts_ms is None:
        return "-"
    t = time.gmtime(ts_ms / 1000)
    base = time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", t)
    return f"{base}.{ts_ms % 1000:03d}Z" if not date else base + "Z"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, mult in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= mult:
            return f"{n / mult:.1f} {unit}"
    return f"{n} B"

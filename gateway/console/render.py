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

    def wrapped(self, head: str, text: str, indent: int | None = None) -> None:
        """``head`` then ``text`` wrapped to the terminal at word boundaries, continuation
        lines indented under the text (or by ``indent``)."""
        for line in wrap_lines(head, text, indent):
            self.line(line)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]],
              shrink: int | None = None, indent: int = 0, id_first: bool = False) -> None:
        """Columns sized to their content. If the table is wider than the terminal, the
        widest column is narrowed first (on a tie ``shrink``), and a cell that does not fit
        goes on continuation lines inside its column: nothing is cut. ``id_first``: the
        first column holds ids, never broken: one too long for it takes a line of its own
        above the rest of its row."""
        lines = table_lines(headers, rows, shrink, indent, id_first=id_first)
        self.line(self.paint(lines[0], "bold"))
        for line in lines[1:]:
            self.line(line)


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                shrink: int | None = None, indent: int = 0,
                width: int | None = WIDTH - 1, id_first: bool = False) -> list[str]:
    """The lines of :meth:`Out.table` (header first), for output that is not an Out;
    ``width`` None: as wide as the content."""
    cells = [[ascii_safe("-" if c is None else str(c)) for c in r] for r in rows]
    widths = table_widths(headers, cells, shrink, indent, width, id_first)
    pad = " " * indent
    out = [(pad + "  ".join(f"{h:<{w}}" for h, w in zip(headers, widths))).rstrip()]
    for r in cells:
        parts = [cell_lines(c, w) for c, w in zip(r, widths)]
        if id_first and len(r[0]) > widths[0]:
            out.append(pad + r[0])  # whole, on its own line
            parts[0] = [""]
        for k in range(max(len(p) for p in parts)):
            out.append((pad + "  ".join(f"{(p[k] if k < len(p) else ''):<{w}}"
                                        for p, w in zip(parts, widths))).rstrip())
    return out


MIN_COL = 6


def table_widths(headers: Sequence[str], cells: Sequence[Sequence[str]], shrink: int | None,
                 indent: int, width: int | None = WIDTH - 1,
                 id_first: bool = False) -> list[int]:
    """Column widths that fit ``width``: the widest column gives way one column at a time
    (on a tie, column ``shrink``), none narrower than its header (or MIN_COL). With
    ``id_first`` the first column is as wide as the other columns leave room for."""
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    floor = [max(MIN_COL, len(h)) for h in headers]
    if width is None:
        return widths
    if id_first and len(widths) > 1:
        room = width - indent - sum(min(w, f) for w, f in zip(widths[1:], floor[1:])) \
            - 2 * (len(widths) - 1)
        fitting = [len(r[0]) for r in cells if len(r[0]) <= room]
        widths[0] = max([len(headers[0])] + fitting)
        floor[0] = widths[0]  # the ids that fit keep their row; the others go above it
    over = indent + sum(widths) + 2 * (len(widths) - 1) - width
    while over > 0:
        cands = [i for i in range(len(widths)) if widths[i] > floor[i]]
        if not cands:
            break
        i = max(cands, key=lambda i: (widths[i], i == shrink))
        widths[i] -= 1
        over -= 1
    return widths


def cell_lines(text: str, width: int) -> list[str]:
    """A cell on as many lines of ``width`` as it needs: broken after a space, a comma or
    an underscore where it can, else (a long id, a hex string) mid-word. Nothing is dropped."""
    if len(text) <= width:
        return [text]
    lines: list[str] = []
    cur = ""
    for tok in re.findall(r"[^ ,_]*[ ,_]|[^ ,_]+$", text):
        while len(tok) > width:  # a token longer than the column: split it
            room = width - len(cur)
            if room <= 0:
                lines.append(cur.rstrip())
                cur, room = "", width
            cur += tok[:room]
            tok = tok[room:]
            lines.append(cur.rstrip())
            cur = ""
        if len(cur) + len(tok.rstrip()) > width:
            lines.append(cur.rstrip())
            cur = ""
        cur += tok
    if cur.strip() or not lines:
        lines.append(cur.rstrip())
    return lines


def wrap_lines(head: str, text: str, indent: int | None = None,
               width: int = WIDTH - 1) -> list[str]:
    """``head`` + ``text`` as lines of at most ``width`` columns, broken at word
    boundaries; continuation lines indented under the text (or by ``indent``)."""
    shown = len(_ANSI.sub("", head))
    ind = shown if indent is None else indent
    if shown > width - 20:  # a very long head: the text starts on the next line
        out = [head.rstrip()]
        head, shown = " " * ind, ind
    else:
        out = []
    first = textwrap.wrap(text, max(20, width - shown), break_on_hyphens=False) or [""]
    out.append(head + first[0])
    rest = " ".join(first[1:])
    if rest:
        out += [" " * ind + p for p in textwrap.wrap(rest, max(20, width - ind),
                                                     break_on_hyphens=False)]
    return out


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

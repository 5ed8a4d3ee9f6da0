"""Structured log lines on stderr: one event per line, logfmt, readable on an 80-column
serial console and parseable by journald/grep/awk alike.

    2026-11-25T22:50:01.123Z level=info comp=store msg="opened ..."

``logging.format: json`` gives one JSON object per line instead; under systemd (stderr is the
journal) lines carry journald's ``<N>`` priority and no timestamp of their own.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time


# journald's priorities (sd-daemon(3)): a "<N>" prefix on a line written to the journal stream.
_JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                     logging.CRITICAL: 2}


def _component(record: logging.LogRecord) -> str:
    return record.name.removeprefix("gateway.") if record.name != "gateway" else "runtime"


def _timestamp(record: logging.LogRecord) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{ts}.{int(record.msecs):03d}Z"


def _journal_priority(levelno: int) -> int:
    for level in sorted(_JOURNAL_PRIORITY, reverse=True):
        if levelno >= level:
            return _JOURNAL_PRIORITY[level]
    return 7


class LogfmtFormatter(logging.Formatter):
    """``ts level=… comp=… msg="…"``. Under systemd the journal stamps each line itself and
    reads the priority from a ``<N>`` prefix, so there the timestamp gives way to it."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace('"', "'")
        line = f'level={record.levelname.lower()} comp={_component(record)} msg="{msg}"'
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if self.journal:
            return f"<{_journal_priority(record.levelno)}>{line}"
        return f"{_timestamp(record)} {line}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``ts``, ``level``, ``comp``, ``msg``[, ``exc``]) for log
    shippers; under systemd the ``<N>`` priority prefix comes first and ``ts`` stays (a
    shipper reading the journal's MESSAGE field still wants it)."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        obj = {"ts": _timestamp(record), "level": record.levelname.lower(),
               "comp": _component(record), "msg": record.getMessage()}
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        line = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        if self.journal:
            return f"<{_journal_priority(record.levelno)}>{line}"
        return line


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=dev:inode of the journal socket it gave us as stderr; a
    shell started from such a service inherits the variable but not the stream, hence the
    comparison (systemd.exec(5))."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in want.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def make_formatter(fmt: str = "text", journal: bool | None = None) -> logging.Formatter:
    if journal is None:
        journal = stderr_is_journal()
    return JsonFormatter(journal) if fmt == "json" else LogfmtFormatter(journal)


def apply_logging(level: str, fmt: str) -> None:
    """Hot reload: a new level and format on the handlers already installed."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for h in root.handlers:
        if isinstance(h.formatter, (LogfmtFormatter, JsonFormatter)):
            h.setFormatter(make_formatter(fmt, h.formatter.journal))


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # paho and urllib-style libraries are chatty at debug; keep them at warning.
    logging.getLogger("paho").setLevel(logging.WARNING)


class RateLimitedLog:
    """Logs the first occurrence at once, then at most one line per interval with how many
    were suppressed: a full disk or a dead meter must not flood a serial console or flash."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last = -1e18
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            if self._suppressed:
                msg += f" ({self._suppressed} similar messages suppressed)"
            self.logger.log(level, msg, *args)
            self._last = now
            self._suppressed = 0
        else:
            self._suppressed += 1

    def error(self, msg: str, *args: object) -> None:
        self.log(logging.ERROR, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self.log(logging.WARNING, msg, *args)

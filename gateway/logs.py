"""Structured log lines on stderr: one event per line, logfmt, readable on an 80-column
serial console and parseable by journald/grep/awk alike.

    2026-11-25T22:50:01.123Z level=info comp=store msg="opened ..."
"""

from __future__ import annotations

import logging
import sys
import time


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        comp = record.name.removeprefix("gateway.") if record.name != "gateway" else "runtime"
        msg = record.getMessage().replace('"', "'")
        line = f'{ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} comp={comp} msg="{msg}"'
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
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

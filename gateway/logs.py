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

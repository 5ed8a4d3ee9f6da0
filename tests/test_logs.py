"""Log formats: logfmt and JSON lines, and journald priorities when stderr is the journal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from gateway.logs import JsonFormatter, LogfmtFormatter, make_formatter


def _record(level: int = logging.WARNING, msg: str = 'uplink: "broker" gone') -> logging.LogRecord:
    return logging.LogRecord("gateway.uplink", level, __file__, 1, msg, (), None)


def test_logfmt_line_has_timestamp_level_component_and_message() -> None:
    line = LogfmtFormatter().format(_record())
    ts, rest = line.split(" ", 1)
    assert ts.endswith("Z") and "T" in ts
    assert rest == "level=warning comp=uplink msg=\"uplink: 'broker' gone\""


def test_json_line_is_one_object() -> None:
    obj = json.loads(JsonFormatter().format(_record(logging.ERROR)))
    assert obj["level"] == "error" and obj["comp"] == "uplink"
    assert obj["msg"] == 'uplink: "broker" gone' and obj["ts"].endswith("Z")


@pytest.mark.parametrize("level,prio", [(logging.DEBUG, 7), (logging.INFO, 6),
                                        (logging.WARNING, 4), (logging.ERROR, 3),
                                        (logging.CRITICAL, 2)])
def test_journal_lines_carry_priority_and_no_timestamp(level: int, prio: int) -> None:
    line = LogfmtFormatter(journal=True).format(_record(level))
    assert line.startswith(f"<{prio}>level=")
    assert json.loads(JsonFormatter(journal=True).format(_record(level))[3:])["level"]


def _journal_probe(tmp_path, env_value: str | None) -> str:
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(err, "wb") as f:
        if env_value == "match":
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif env_value is not None:
            env["JOURNAL_STREAM"] = env_value
        code = ("import logging; from gateway.logs import setup_logging; setup_logging('info');"
                "logging.getLogger('gateway.store').warning('disk full')")
        subprocess.run([sys.executable, "-c", code], stderr=f, env=env, check=True, timeout=60)
    return err.read_text()


def test_systemd_journal_stream_detected_by_device_and_inode(tmp_path) -> None:
    assert _journal_probe(tmp_path, "match") == '<4>level=warning comp=store msg="disk full"\n'


@pytest.mark.parametrize("value", [None, "1:2", "garbage"])
def test_inherited_or_bogus_journal_stream_keeps_timestamps(tmp_path, value) -> None:
    out = _journal_probe(tmp_path, value)
    assert not out.startswith("<") and out.split(" ", 1)[1] == 'level=warning comp=store msg="disk full"\n'


def test_make_formatter_picks_by_name() -> None:
    assert isinstance(make_formatter("json", journal=False), JsonFormatter)
    assert isinstance(make_formatter("text", journal=False), LogfmtFormatter)

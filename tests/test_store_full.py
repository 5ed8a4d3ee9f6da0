"""A store on a real, tiny filesystem that stays full for many commits: one log line a
minute with counts (not one per commit), and the reserve file back once space is."""

from __future__ import annotations

import logging
import os
import random
import subprocess
from pathlib import Path

import pytest

from gateway.model import Reading
from gateway.store import Store, StoreFull


@pytest.fixture
def tiny_disk(tmp_path: Path):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def batch(i: int, rnd: random.Random) -> list[Reading]:
    return [Reading(f"m{j}", "1-0:1.8.0", rnd.getrandbits(40), -3, "kWh",
                    1_700_000_000_000 + i * 1000 + j, 1_700_000_000_000 + i * 1000 + j, (), "t")
            for j in range(40)]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def loud(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture
def store_log():
    h = Lines()
    lg = logging.getLogger("gateway.store")
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    try:
        yield h
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)


def test_full_disk_logs_once_a_minute_with_counts_and_remakes_the_reserve(tiny_disk,
                                                                           store_log):
    filler = tiny_disk / "filler"  # everything else on the disk: logs, other files
    filler.write_bytes(b"\0" * (1900 * 1024))
    rnd = random.Random(1)
    s = Store(tiny_disk / "s.db", reserve_bytes=128 * 1024, reserve_retry_s=0)
    try:
        refused = 0
        for i in range(300):
            try:
                s.append(batch(i, rnd))
            except StoreFull:
                refused += 1
        assert refused > 200  # the disk really was full, commit after commit
        loud = store_log.loud()
        # Not one line per commit: the reserve that cannot be made and one full-disk report.
        assert len(loud) <= 2, loud
        assert sum("storage full" in m for m in loud) == 1, loud
        # A minute later the next full commit reports what happened since, with counts.
        s._full_logged_at = -1e18
        with pytest.raises(StoreFull):
            s.append(batch(999, rnd))
        report = store_log.loud()[-1]
        assert f"{refused} commits hit it" in report and f"{refused * 40} new records refused" \
            in report, report
        assert not os.path.exists(tiny_disk / "s.db.reserve")
        filler.unlink()  # space is back
        s.append(batch(1000, rnd))
        assert os.path.getsize(tiny_disk / "s.db.reserve") == 128 * 1024
        assert any("reserve file is in place again" in r.getMessage()
                   for r in store_log.records)
    finally:
        s.close()

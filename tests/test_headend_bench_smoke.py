"""tools/bench/headend.py runs end to end with tiny sizes and prints its summary line.

No timing assertions: this box's speed varies too much; `make bench` gives the figures.
"""

from __future__ import annotations

from tests.headend_db import needs_pg
from tests.test_bench_smoke import needs_mosquitto, summary


@needs_pg
@needs_mosquitto
def test_headend_bench_runs_and_prints_its_summary() -> None:
    from tools.bench import headend

    lines: list[str] = []
    s = headend.run(gateways=3, per_gateway=2, workers=1, naive_n=64, rounds=1, fsync=False,
                    timeout=60, out=lines.append)
    got = summary(lines)
    assert list(got) == ["readings_per_s", "ratio_vs_naive", "ratio_vs_copy"]
    assert got["readings_per_s"] > 0 and all(v >= 0 for v in got.values()), lines
    assert any(l.startswith(("PASS", "FAIL")) for l in lines[:-1])

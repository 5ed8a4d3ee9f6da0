"""``gateway-headend report``: the accounting over everything ever ingested.

The same JSON as the live verifier's summary (:meth:`Verifier.summary`): totals, then per
gateway the same counters and per epoch ``first_seq``/``last_seq``/``gaps``/
``missing_ranges`` -- the seqs never received and not declared lost by a gap record.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gateway.headend.db import Database
from gateway.headend.verifier import COUNTERS, SeqRanges, missing

EXTRA_COUNTERS = ("oversized", "unknown_gateways")
REPORT_COUNTERS = (*COUNTERS, *EXTRA_COUNTERS)


def report(db: Database, gateway: str | None = None) -> dict[str, Any]:
    per: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(REPORT_COUNTERS, 0))
    totals = dict.fromkeys(REPORT_COUNTERS, 0)
    for gw, name, value in db.counters():
        if name not in totals or name == "gaps":
            continue
        totals[name] += value
        if gw:
            per[gw][name] += value
    received: dict[tuple[str, str], SeqRanges] = defaultdict(SeqRanges)
    covered: dict[tuple[str, str], SeqRanges] = defaultdict(SeqRanges)
    for gw, ep, a, b in db.seq_ranges():
        received[(gw, ep)].add(int(a), int(b))
    for gw, ep, a, b in db.gap_ranges():
        covered[(gw, ep)].add(int(a), int(b))
    gateways: dict[str, Any] = {}
    total_gaps = 0
    for gw, ep in db.epoch_keys():
        g = gateways.setdefault(gw, {**per[gw], "gaps": 0, "epochs": {}})
        r = received.get((gw, ep))
        if r is None or r.high is None:
            continue
        n, ranges = missing(r.high, r, covered.get((gw, ep), SeqRanges()))
        g["epochs"][ep] = {"first_seq": r.low, "last_seq": r.high, "gaps": n,
                           "missing_ranges": ranges}
        g["gaps"] += n
        total_gaps += n
    for gw in per:
        gateways.setdefault(gw, {**per[gw], "gaps": 0, "epochs": {}})
    totals["gaps"] = total_gaps
    out = {**totals, "gateways": {k: gateways[k] for k in sorted(gateways)}}
    if gateway is not None:
        g = out["gateways"].get(gateway)
        out = {**(dict.fromkeys(REPORT_COUNTERS, 0) if g is None else
                  {k: v for k, v in g.items() if k != "epochs"}),
               "gateways": {} if g is None else {gateway: g}}
    return out

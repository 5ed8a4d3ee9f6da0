"""Where the M-Bus decoders stand on the field corpus (tests/corpus/mbus_corpus.json):
libmbus frames decoded and records matching libmbus, wmbusmeters telegrams decoded and
their main values matching, and why the rest fail. Not a test: a measurement.

    PYTHONPATH=. python -m tools.bench.mbus_corpus [-v]
"""

from __future__ import annotations

import collections
import sys

from gateway.protocols.mbus.errors import MBusError
from gateway.protocols.mbus.wired import decode_rsp_ud
from gateway.protocols.mbus.wireless import decode_wmbus
from tests.mbus_corpus_compare import CORPUS, libmbus_mismatches, record_count, \
    wmbus_mismatches


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    ok = recs = total = 0
    for f in CORPUS["libmbus_frames"]:
        n = record_count(f["records"])
        total += n
        try:
            t = decode_rsp_ud(bytes.fromhex(f["hex"]))
        except MBusError as exc:
            print(f"libmbus {f['name']}: {type(exc).__name__}: {exc}")
            continue
        ok += 1
        mm = libmbus_mismatches(t, f["records"])
        if any("records, libmbus has" in m for m in mm):
            bad = n
        else:
            bad = len({m.split(" (")[0] for m in mm if m.startswith("record ")})
        recs += n - bad
        for m in mm:
            print(f"libmbus {f['name']}: {m}")
    print(f"libmbus frames decoded {ok}/{len(CORPUS['libmbus_frames'])}, "
          f"records matched {recs}/{total}")
    refused = 0
    for f in CORPUS["libmbus_error_frames"]:
        try:
            decode_rsp_ud(bytes.fromhex(f["hex"]))
        except MBusError as exc:
            refused += 1
            if verbose:
                print(f"error frame {f['name']}: {exc}")
    print(f"libmbus error frames refused {refused}/{len(CORPUS['libmbus_error_frames'])}")
    ok = mismatched = 0
    why: collections.Counter[str] = collections.Counter()
    for x in CORPUS["wmbus"]:
        key = bytes.fromhex(x["key"]) if x["key"] else None
        raw = bytes.fromhex(x["hex"])
        try:
            t = decode_wmbus(raw, key) if x["kind"] == "wmbus" else decode_rsp_ud(raw, key)
        except MBusError as exc:
            why[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
            if verbose:
                print(f"wmbus {x['cid']}: {exc}")
            continue
        ok += 1
        mm = wmbus_mismatches(t, x["expected"])
        if mm:
            mismatched += 1
            print(f"wmbus {x['cid']}: {mm}")
    print(f"wmbusmeters telegrams decoded {ok}/{len(CORPUS['wmbus'])}, "
          f"main values differing in {mismatched}")
    for k, v in why.most_common():
        print(f"  {v:4d}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

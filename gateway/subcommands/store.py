"""``gateway store verify -c CONFIG [--json]``: check the store file offline.

Read-only, so it is safe beside a running gateway (WAL mode: it reads one consistent snapshot
while the gateway goes on writing) and works on a stopped one. Exit 0 when the store is sound,
1 naming the bad seq ranges (or what else is wrong with the file), 2 on usage errors (bad
config, no store file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

EXIT_OK = 0
EXIT_BAD = 1
EXIT_USAGE = 2


def register(sub: Any) -> None:
    p = sub.add_parser("store", help="offline checks of the store database",
                       description="Offline checks of the store database.")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION")
    v = ssub.add_parser("verify", help="check every stored chunk's checksum and the file; "
                                       "exit 1 naming bad seq ranges",
                        description=__doc__.split("\n\n")[1].replace("\n", " "))
    v.add_argument("-c", "--config", required=True, help="config file (YAML)")
    v.add_argument("--json", action="store_true", help="one JSON document instead of text")
    v.set_defaults(func=run_verify)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), EXIT_USAGE)[1])


def run_verify(args: argparse.Namespace) -> int:
    from ..cli import load_or_report
    from ..storecheck import verify_store
    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_USAGE
    path = cfg.store.path
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        print(f"error: no store at {path} (store.path; has the gateway run yet?)",
              file=sys.stderr)
        return EXIT_USAGE
    rep = verify_store(path)
    if args.json:
        print(json.dumps(rep.to_json(), sort_keys=True, default=str))
        return EXIT_OK if rep.sound else EXIT_BAD
    for p in rep.problems:
        print(f"error: {path}: {p}")
    for first, last, n in rep.bad_ranges():
        print(f"bad: seq {first}..{last} ({n} records): stored bodies fail their checksum; "
              "the gateway sends them as a store_corruption gap")
    for note in rep.notes:
        print(f"note: {note}")
    state = "sound" if rep.sound else "NOT sound"
    print(f"store {path}: {state}: schema {rep.schema}, epoch {rep.epoch}, {rep.chunks} chunks, "
          f"{rep.records} good unsent records, next seq {rep.next_seq}")
    return EXIT_OK if rep.sound else EXIT_BAD

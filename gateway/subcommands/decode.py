"""`gateway decode KIND ...`: a field tech pastes bytes and sees what they mean.

Each kind lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``
(and a one-line ``HELP``); adding a kind is one line in decode_common.DECODE_MODULES.
Conventions for every kind: ``--json`` prints one JSON object; values are exact decimal
strings; bad input is one line on stderr and exit 2 (a wrong key: exit 3), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import decode_auto
from .decode_common import DECODE_MODULES, EXIT_BAD_INPUT, guarded


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("decode", help="decode captured bytes (auto, hdlc, iec62056-21, mbus, "
                                      "wmbus, xbee)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    for kind, module in DECODE_MODULES.items():
        mod = importlib.import_module(module)
        kp = kinds.add_parser(kind, help=getattr(mod, "HELP", ""))
        mod.add_arguments(kp)
        kp.add_argument("--json", action="store_true", help="print one JSON object")
        kp.set_defaults(func=guarded(mod.run))
    ap = kinds.add_parser("auto", help=decode_auto.HELP)
    decode_auto.add_arguments(ap)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.set_defaults(func=guarded(decode_auto.run))
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), EXIT_BAD_INPUT)[1])

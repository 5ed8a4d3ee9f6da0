"""``gateway audit verify -c CONFIG | --file LOG [--head [N:]HASH] [--json]``: check the
console audit log's hash chain.

Every entry carries the SHA-256 of the line before it (see gateway.control.audit), so an
edited, inserted or deleted line breaks the chain. Lines cut from the end leave a shorter
but sound chain: compare with the head the head-end last received in the signed
diagnostics (``audit.entries`` and ``audit.head``), given as ``--head``.

Exit codes: 0 the chain is sound (and holds the given head), 1 it is broken (the lines are
named), 2 usage errors (no such config or log).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_USAGE = 2

HELP = "check the console audit log's hash chain"


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help=HELP, description=__doc__.split("\n\n")[0])
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION")
    v = asub.add_parser("verify", help=HELP)
    where = v.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", help="config file (YAML): its control.audit_log")
    where.add_argument("--file", help="the audit log itself (its rotated .1, .2, ... too)")
    v.add_argument("--head", help="[N:]HASH the head-end last received; it must be in the log")
    v.add_argument("--json", action="store_true", help="one JSON document")
    v.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), EXIT_USAGE)[1])


def run(args: argparse.Namespace) -> int:
    from ..control.audit import line_hash, log_files, verify_chain
    backups = 100
    if args.config:
        from ..cli import load_or_report
        cfg = load_or_report(args.config)
        if cfg is None:
            return EXIT_USAGE
        path = cfg.control.audit_log
        backups = cfg.control.audit_backups
    else:
        path = os.path.abspath(args.file)
    files = log_files(path, max(backups, 100))
    if not files:
        print(f"error: no audit log at {path}", file=sys.stderr)
        return EXIT_USAGE
    want_n, want_hash = None, None
    if args.head:
        n_text, _, h = args.head.rpartition(":")
        try:
            want_n = int(n_text) if n_text else None
        except ValueError:
            print("error: --head is [N:]HASH", file=sys.stderr)
            return EXIT_USAGE
        want_hash = h.lower()
    rep = verify_chain(files)
    if want_hash is not None:
        found = _find(files, want_hash, line_hash)
        if found is None:
            rep.problems.append(f"the head {args.head} the head-end holds is not in the log: "
                                "entries were deleted or edited (or rotated out)")
        elif want_n is not None and found != want_n:
            rep.problems.append(f"the head {want_hash[:16]} is entry {found}, not {want_n}")
    out = {"ok": rep.ok, "files": files, "entries": rep.entries, "first": rep.first,
           "last": rep.last, "head": rep.head, "problems": rep.problems}
    if args.json:
        print(json.dumps(out))
    else:
        for p in rep.problems or []:
            print(f"broken: {p}")
        state = "sound" if rep.ok else f"BROKEN ({len(rep.problems or [])} problems)"
        print(f"audit log {path}: {state}; {rep.entries} entries in {len(files)} file(s)"
              + (f", entries {rep.first}-{rep.last}" if rep.first is not None else "")
              + f"; head {rep.last}:{rep.head}")
    return EXIT_OK if rep.ok else EXIT_BROKEN


def _find(files: list[str], want: str, line_hash: Any) -> int | None:
    """The ``n`` of the entry whose line hashes to ``want`` (-1 if it has none)."""
    for path in files:
        try:
            with open(path, "rb") as f:
                lines = f.read().split(b"\n")
        except OSError:
            continue
        for line in lines:
            if line.strip() and line_hash(line) == want:
                try:
                    return int(json.loads(line)["n"])
                except (ValueError, KeyError, TypeError):
                    return -1
    return None

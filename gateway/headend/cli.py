"""``gateway-headend``: the durable head-end.

    gateway-headend ingest --db DSN [--host H --port P] (--pki DIR | --ca --cert --key)
                           [--trust GWID=PUB ...] [--share GROUP] [--client-id ID]
    gateway-headend report --db DSN [--gateway ID] [--json]
    gateway-headend profile --db DSN --meter ID --quantity OBIS --interval 15m
                            --from T --to T [--group NAME] [--csv|--json] [--gap-intervals N]
    gateway-headend groups import FILE.csv [--db DSN] [--replace]
    gateway-headend verify ...            # the live in-memory verifier (python -m tools.headend)

DSN: ``postgresql://user@host/db`` or ``sqlite:///path`` (the embedded default,
``sqlite:///headend.db``). Exit codes: 0 ok, 1 never connected / nothing to report, 2 usage
or configuration error, 3 database error.
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from gateway.headend.broker_args import add_broker_args, broker_identity
from gateway.headend.client import DEFAULT_TOPIC, human_summary

DEFAULT_DB = "sqlite:///headend.db"
EXIT_CONFIG = 2
EXIT_DB = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway-headend", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    ing = sub.add_parser("ingest", help="one ingest worker: MQTT -> verified -> database")
    ing.add_argument("--db", default=DEFAULT_DB, metavar="DSN")
    add_broker_args(ing)
    ing.add_argument("--share", metavar="GROUP",
                     help="subscribe as $share/GROUP/...: workers of a group split the traffic")
    ing.add_argument("--client-id", default=None,
                     help="fixed MQTT client id; its session keeps unacknowledged messages "
                          "(default headend-ingest-<host>)")
    ing.add_argument("--topic", action="append", metavar="T",
                     help=f"subscription (repeatable, default {DEFAULT_TOPIC})")
    ing.add_argument("--replay-window", type=float, default=300.0, metavar="S")
    ing.add_argument("--batch", type=int, default=200, metavar="N",
                     help="messages per transaction at most")
    ing.add_argument("--retire", action="store_true",
                     help="drain this --client-id's session, leave the share group and exit "
                          "(a member that is just stopped keeps getting its share queued)")
    ing.add_argument("-q", "--quiet", action="store_true", help="no per-batch lines")

    rep = sub.add_parser("report", help="the books over everything ever ingested")
    rep.add_argument("--db", default=DEFAULT_DB, metavar="DSN")
    rep.add_argument("--gateway", metavar="ID")
    rep.add_argument("--json", action="store_true")

    pro = sub.add_parser("profile", help="interval consumption of a register (or a group)")
    pro.add_argument("--db", default=DEFAULT_DB, metavar="DSN")
    who = pro.add_mutually_exclusive_group(required=True)
    who.add_argument("--meter", metavar="ID")
    who.add_argument("--group", metavar="NAME")
    pro.add_argument("--quantity", required=True, metavar="OBIS")
    pro.add_argument("--interval", default="15m")
    pro.add_argument("--from", dest="from_", required=True, metavar="T")
    pro.add_argument("--to", required=True, metavar="T")
    pro.add_argument("--gap-intervals", type=int, default=4, metavar="N",
                     help="interpolate gaps of up to N intervals, longer ones are estimated")
    fmt = pro.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")

    grp = sub.add_parser("groups", help="meter groups (feeders, districts)")
    gsub = grp.add_subparsers(dest="groups_command", required=True)
    gi = gsub.add_parser("import", help="FILE.csv rows: meter_id,group (a header is skipped)")
    gi.add_argument("file")
    gi.add_argument("--db", default=DEFAULT_DB, metavar="DSN")
    gi.add_argument("--replace", action="store_true",
                    help="the file's groups replace their old members")

    sub.add_parser("verify", help="the live in-memory verifier (python -m tools.headend)",
                   add_help=False)
    return p


def cmd_ingest(a: argparse.Namespace) -> int:
    from gateway.headend.db import Dsn, DsnError
    from gateway.headend.worker import IngestOptions, Worker
    try:
        Dsn.parse(a.db)
        ca, cert, key, trusted = broker_identity(a)
    except (OSError, ValueError, DsnError) as e:
        print(f"gateway-headend: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if a.batch < 1:
        print("gateway-headend: --batch must be >= 1", file=sys.stderr)
        return EXIT_CONFIG
    w = Worker(IngestOptions(
        db=a.db, host=a.host, port=a.port, ca=ca, cert=cert, key=key, trusted=trusted,
        topics=a.topic or [DEFAULT_TOPIC], share=a.share,
        client_id=a.client_id or f"headend-ingest-{socket.gethostname()}",
        replay_window_s=a.replay_window, max_batch=a.batch, quiet=a.quiet, retire=a.retire))

    def on_signal(_s: int, _f: FrameType | None) -> None:
        w.stop()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    return w.run()


def _open(dsn: str) -> Any:
    from gateway.headend.db import open_db
    db = open_db(dsn)
    db.connect()
    db.migrate()
    return db


def cmd_report(a: argparse.Namespace) -> int:
    from gateway.headend.report import report
    db = _open(a.db)
    try:
        s = report(db, a.gateway)
    finally:
        db.close()
    if a.json:
        print(json.dumps(s))
    else:
        print(human_summary(s).replace("head-end summary", "head-end report"))
    return 0


def cmd_profile(a: argparse.Namespace) -> int:
    from gateway.headend import profile as pr
    interval = pr.parse_interval(a.interval)
    lo, hi = pr.parse_time(a.from_), pr.parse_time(a.to)
    if a.gap_intervals < 0:
        raise pr.ProfileError("--gap-intervals must be >= 0")
    db = _open(a.db)
    try:
        meters = [a.meter] if a.meter else db.group_members(a.group)
        if not meters:
            raise pr.ProfileError(f"group {a.group!r} has no meters (gateway-headend groups import)")
        profiles, units = [], set()
        margin = (a.gap_intervals + 1) * interval
        for m in meters:
            rows = db.series(m, a.quantity, lo - margin, hi + margin)
            units.update(u for _t, _v, u, _q in rows)
            reads = [(t, v, "estimated" in (q or "").split(",")) for t, v, _u, q in rows]
            profiles.append(pr.meter_profile(reads, lo, hi, interval, a.gap_intervals))
    finally:
        db.close()
    if len(units) > 1:
        raise pr.ProfileError(f"the readings have different units ({', '.join(sorted(units))}): "
                              f"cannot add them up")
    ivs = pr.sum_profiles(profiles)
    unit = ",".join(sorted(units))
    if a.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["start", "end", "value", "unit", "quality"])
        for iv in ivs:
            w.writerow([pr.iso(iv.start_ms), pr.iso(iv.end_ms),
                        "" if iv.value is None else format(iv.value, "f"), unit, iv.quality])
        return 0
    doc = {("group" if a.group else "meter"): a.group or a.meter, "meters": meters,
           "quantity": a.quantity, "interval_s": interval // 1000, "unit": unit,
           "gap_intervals": a.gap_intervals,
           "total": (format(sum(iv.value for iv in ivs if iv.value is not None), "f")
                     if ivs else "0"),
           "intervals": [{"start": pr.iso(iv.start_ms), "end": pr.iso(iv.end_ms),
                          "value": None if iv.value is None else format(iv.value, "f"),
                          "quality": iv.quality} for iv in ivs]}
    if a.json:
        print(json.dumps(doc))
    else:
        for iv in ivs:
            v = "-" if iv.value is None else format(iv.value, "f")
            print(f"{pr.iso(iv.start_ms)}  {v:>14} {unit}  {iv.quality}")
    return 0


def cmd_groups_import(a: argparse.Namespace) -> int:
    rows: list[tuple[str, str]] = []
    with open(a.file, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            cells = [c.strip() for c in row]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            if len(cells) < 2 or not cells[0] or not cells[1]:
                raise ValueError(f"{a.file}:{n}: want meter_id,group")
            if n == 1 and cells[0].lower() in ("meter", "meter_id"):
                continue
            rows.append((cells[1], cells[0]))
    db = _open(a.db)
    try:
        db.import_groups(rows, a.replace)
    finally:
        db.close()
    groups = sorted({g for g, _ in rows})
    print(f"imported {len(rows)} memberships in {len(groups)} groups: {', '.join(groups)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["verify"]:
        from gateway.headend.verify_cli import main as verify_main
        return verify_main(args_in[1:])
    a = build_parser().parse_args(args_in)
    from gateway.headend.db import DsnError, db_errors
    from gateway.headend.profile import ProfileError
    try:
        if a.command == "ingest":
            return cmd_ingest(a)
        if a.command == "report":
            return cmd_report(a)
        if a.command == "profile":
            return cmd_profile(a)
        return cmd_groups_import(a)
    except db_errors() as e:
        print(f"gateway-headend: database error: {e}", file=sys.stderr)
        return EXIT_DB
    except (DsnError, ProfileError, OSError, ValueError) as e:
        print(f"gateway-headend: {e}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())

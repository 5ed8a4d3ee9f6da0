"""`gateway scan KIND --port /dev/ttyX`: find the meters on a bus, for installation.

``gateway scan mbus`` searches secondary addresses with wildcards (select FFFFFFFF; on a
collision fix the next digit 0-9 and go deeper), or primary addresses 0-250 with
``--primary``. It prints each meter's secondary address, ready to paste into the config.
Exit 0 when the scan ran (even if it found nothing), 1 if the port cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

EXIT_OK = 0
EXIT_PORT = 1
EXIT_USAGE = 2


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("scan", help="find the meters on a bus (mbus)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    for kind, (add, run, help_) in SCAN_KINDS.items():
        kp = kinds.add_parser(kind, help=help_)
        add(kp)
        kp.add_argument("--json", action="store_true", help="print one JSON object")
        kp.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), EXIT_USAGE)[1])


# --------------------------------------------------------------------------- mbus

def _add_mbus(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial device of the M-Bus level converter")
    p.add_argument("--baud", type=int, choices=[300, 2400, 9600], default=2400)
    p.add_argument("--parity", choices=["E", "N", "O"], default="E")
    p.add_argument("--primary", action="store_true",
                   help="scan primary addresses 0-250 instead of secondary addresses")
    p.add_argument("--mask", default="FFFFFFFF",
                   help="secondary id mask, F = any digit (default FFFFFFFF)")
    p.add_argument("--timeout-ms", type=int, default=None,
                   help="answer timeout (default: from the baud rate)")
    p.add_argument("--rs485", choices=["auto", "kernel", "rts"], default="auto",
                   help="how the RS-485 transmitter is switched")


def _show_progress(*what: Any) -> None:
    print(f"\rprobing {what[0]} ", end="", file=sys.stderr, flush=True)


def _run_mbus(args: argparse.Namespace) -> int:
    from ..drivers.mbus import MBusMaster, default_timeout_s, describe_device, open_port
    from ..drivers.serialport import SerialPortError
    from ..protocols.mbus.wired import SecondaryMask
    from ..text import error_text
    try:
        mask = SecondaryMask.parse(args.mask)
    except ValueError as exc:
        print(f"error: --mask: {exc}", file=sys.stderr)
        return EXIT_USAGE
    opts = {"port": args.port, "baud": args.baud, "parity": args.parity, "bytesize": 8,
            "stopbits": 1, "timeout_ms": 100, "rs485": {"mode": args.rs485}}
    try:
        ser = open_port(opts)
    except SerialPortError as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return EXIT_PORT
    timeout = args.timeout_ms / 1000 if args.timeout_ms else default_timeout_s(args.baud)
    master = MBusMaster(ser, opts, timeout_s=timeout, retries=0)
    progress: Callable[..., None] | None = None
    if not args.json and sys.stderr.isatty():
        progress = _show_progress
    try:
        if args.primary:
            results = master.scan_primary(range(0, 251), progress)
        else:
            results = master.scan_secondary(mask, progress)
    except OSError as exc:
        print(f"error: {args.port}: {error_text(exc)}", file=sys.stderr)
        return EXIT_PORT
    finally:
        ser.close()
        if progress:
            print("\r", end="", file=sys.stderr)
    found = [describe_device(r) for r in results if not isinstance(r, tuple)]
    problems = [{"kind": r[0], "address": str(r[1]), "detail": r[2] if len(r) > 2 else ""}
                for r in results if isinstance(r, tuple)]
    if args.json:
        print(json.dumps({"port": args.port, "baud": args.baud,
                          "method": "primary" if args.primary else "secondary",
                          "meters": found, "problems": problems,
                          "requests": master.stats.requests}))
        return EXIT_OK
    for m in found:
        prim = "-" if m["primary"] is None else str(m["primary"])
        print(f"{m['secondary']}  {m['manufacturer']} {m['id']}  version {m['version']}  "
              f"{m['device_type']}  primary {prim}  {m['records']} records")
    for p in problems:
        print(f"{p['kind']}: {p['address']} {p['detail']}")
    print(f"{len(found)} meter(s) found on {args.port} at {args.baud} baud "
          f"({master.stats.requests} requests)")
    return EXIT_OK


# kind -> (add_arguments, run, help)
SCAN_KINDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                            Callable[[argparse.Namespace], int], str]] = {
    "mbus": (_add_mbus, _run_mbus, "wired M-Bus: secondary-address search with wildcards "
             "(or --primary)"),
}

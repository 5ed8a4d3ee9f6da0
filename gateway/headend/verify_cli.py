"""The live in-memory verifier's command line (``python -m tools.headend``, ``gateway-headend verify``)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from gateway.uplink.envelope import WILDCARD
from gateway.headend.client import (
    DEFAULT_TOPIC,
    EXIT_CONFIG,
    Headend,
    HeadendOptions,
    default_client_id,
    load_public_key,
)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tools.headend",
        description="Subscribe to gateway uplinks over MQTT/TLS, verify every envelope and "
                    "report accepted/duplicate/missing/replayed/forged records.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--pki", metavar="DIR",
                   help="dev PKI: DIR/ca.pem, DIR/headend.pem/.key, trust DIR/gateway-sign.pub")
    p.add_argument("--ca", help="CA bundle for the broker (overrides --pki)")
    p.add_argument("--cert", help="head-end client certificate (overrides --pki)")
    p.add_argument("--key", help="head-end client key (overrides --pki)")
    p.add_argument("--trust", action="append", default=[], metavar="GWID=PUBFILE",
                   help="trust PUBFILE for gateway GWID (repeatable; GWID '*' = any gateway)")
    p.add_argument("--gateway-id", action="append", default=[], metavar="GWID",
                   help="with --pki: trust gateway-sign.pub only for these ids (default: any)")
    p.add_argument("--topic", action="append", metavar="T",
                   help=f"subscription (repeatable, default {DEFAULT_TOPIC})")
    p.add_argument("--client-id", default=None, help="MQTT client id (default headend-<host>)")
    p.add_argument("--until-idle", type=float, metavar="S",
                   help="exit after S seconds without a message (counted from start)")
    p.add_argument("--replay-window", type=float, default=300.0, metavar="S",
                   help="sent_ms tolerance before an all-duplicate message counts as replay")
    p.add_argument("--json", action="store_true", help="last stdout line is the JSON summary")
    p.add_argument("--print-readings", action="store_true",
                   help="print each accepted reading on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-message lines on stderr")
    return p.parse_args(argv)


def _options(a: argparse.Namespace) -> HeadendOptions:
    pki = Path(a.pki) if a.pki else None
    ca = a.ca or (pki and str(pki / "ca.pem"))
    cert = a.cert or (pki and str(pki / "headend.pem"))
    key = a.key or (pki and str(pki / "headend.key"))
    if not (ca and cert and key):
        raise ValueError("need --pki DIR or all of --ca, --cert and --key")
    trusted = {}
    if pki is not None:
        pub = load_public_key(pki / "gateway-sign.pub")
        for gid in a.gateway_id or [WILDCARD]:
            trusted[gid] = pub
    for spec in a.trust:
        gid, sep, path = spec.partition("=")
        if not sep or not gid or not path:
            raise ValueError(f"--trust wants GWID=PUBFILE, got {spec!r}")
        trusted[gid] = load_public_key(path)
    if not trusted:
        raise ValueError("no trusted gateway key: use --pki or --trust GWID=PUBFILE")
    return HeadendOptions(
        host=a.host, port=a.port, ca=ca, cert=cert, key=key, trusted=trusted,
        topics=a.topic or [DEFAULT_TOPIC], client_id=a.client_id or default_client_id(),
        until_idle_s=a.until_idle, replay_window_s=a.replay_window, json=a.json,
        print_readings=a.print_readings, quiet=a.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        opts = _options(args)
    except (OSError, ValueError) as e:
        print(f"headend: {e}", file=sys.stderr)
        return EXIT_CONFIG
    headend = Headend(opts)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        headend.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return headend.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())

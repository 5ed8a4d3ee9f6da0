"""The live in-memory verifier's command line (``python -m tools.headend``, ``gateway-headend verify``)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from gateway.headend.broker_args import add_broker_args, broker_identity
from gateway.headend.client import (
    DEFAULT_TOPIC,
    EXIT_CONFIG,
    Headend,
    HeadendOptions,
    default_client_id,
)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tools.headend",
        description="Subscribe to gateway uplinks over MQTT/TLS, verify every envelope and "
                    "report accepted/duplicate/missing/replayed/forged records.")
    add_broker_args(p)
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
    ca, cert, key, trusted = broker_identity(a)
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

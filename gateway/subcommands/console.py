"""``gateway console [-c CONFIG] [COMMAND ...]``: the field-tech shell (see gateway.console)."""

from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "console", help="field-tech shell attached to the running gateway",
        description="Without COMMAND: an interactive shell (type 'help'). With COMMAND: run it "
                    "once, e.g. `gateway console status --json`. Exit codes: 0 ok, 1 the "
                    "command failed, 2 usage error, 3 gateway unreachable or access denied.")
    p.add_argument("-c", "--config", help="the gateway's config file (for control.socket)")
    p.add_argument("--socket", help="control socket path (overrides the config)")
    p.add_argument("--json", action="store_true", help="one-shot: print JSON")
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND ...")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..console.shell import main
    return main(args.config, args.socket, list(args.words), args.json)

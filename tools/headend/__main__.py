"""``python -m tools.headend``: the live in-memory verifier (now :mod:`gateway.headend`),
plus ``cmd``, the development tool that signs and sends downlink commands."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    rest = list(sys.argv[1:] if argv is None else argv)
    if rest[:1] == ["cmd"]:  # `python -m tools.headend cmd ...`: sign and send a command
        from tools.headend.cmd import main as cmd_main
        return cmd_main(rest[1:])
    from gateway.headend.verify_cli import main as verify_main
    return verify_main(rest)


if __name__ == "__main__":
    sys.exit(main())

"""The one command line: ``gateway run``, ``gateway check-config``, ``gateway --version``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

EXIT_OK = 0
EXIT_CONFIG = 2

# Further subcommands (bus scans, console, fleet tools) live in their own modules, each with
# `register(subparsers)`; adding one is one line here.
COMMAND_MODULES: list[str] = [
    "gateway.subcommands.decode",
    "gateway.subcommands.diag",
    "gateway.subcommands.console",
    "gateway.subcommands.zigbee",
    "gateway.subcommands.scan",
    "gateway.subcommands.store",
    "gateway.subcommands.audit",
]


def load_or_report(path: str, check_files: bool = True):  # -> Config | None
    """Load a config, printing errors and warnings to stderr; None when invalid."""
    from .config import ConfigError, load_config
    try:
        cfg = load_config(path, check_files=check_files)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        return None
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return cfg


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.config or args.file
    if not path or (args.config and args.file and args.config != args.file):
        print("error: check-config takes one config file: -c FILE (or FILE)", file=sys.stderr)
        return EXIT_CONFIG
    cfg = load_or_report(path, check_files=not args.no_file_checks)
    if cfg is None:
        return EXIT_CONFIG
    print(cfg.summary())
    if args.no_file_checks:
        print("files:   not checked (--no-file-checks): key, certificate and CA files must "
              "exist on the gateway itself")
    return EXIT_OK


def example_config_path():  # -> Path | None
    """config/example.yaml of the source tree, else the copy a pip install put under
    <prefix>/share/meter-gateway/config."""
    from pathlib import Path
    for p in (Path(__file__).resolve().parent.parent / "config" / "example.yaml",
              Path(sys.prefix) / "share" / "meter-gateway" / "config" / "example.yaml"):
        if p.is_file():
            return p
    return None


def cmd_example_config(args: argparse.Namespace) -> int:
    path = example_config_path()
    if path is None:
        print("error: example.yaml is not installed with this package "
              f"(looked in the source tree and {sys.prefix}/share/meter-gateway/config)",
              file=sys.stderr)
        return 1
    sys.stdout.write(path.read_text())
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from .logs import setup_logging
    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    setup_logging(args.log_level or cfg.logging.level, cfg.logging.format)
    from .runtime import Runtime
    try:
        return Runtime(cfg).run_forever()
    except (OSError, ValueError) as exc:
        logging.getLogger("gateway").error("cannot start: %s", exc)
        return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Smart-meter concentrator runtime")
    p.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the gateway in the foreground")
    run.add_argument("-c", "--config", required=True, help="config file (YAML)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)
    chk = sub.add_parser("check-config", help="validate a config file; exit 2 on errors")
    chk.add_argument("file", nargs="?", help="config file (YAML); or -c FILE")
    chk.add_argument("-c", "--config", help="config file (YAML)")
    chk.add_argument("--no-file-checks", action="store_true",
                     help="do not require the key, certificate and CA files to exist here "
                          "(a config prepared for another machine)")
    chk.set_defaults(func=cmd_check_config)
    ex = sub.add_parser("example-config", help="print a production-shaped example config")
    ex.set_defaults(func=cmd_example_config)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

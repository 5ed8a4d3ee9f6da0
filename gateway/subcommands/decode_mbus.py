"""`gateway decode mbus HEX [HEX ...]` and `gateway decode wmbus HEX [HEX ...] [--key K]`.

Prints the header and every record; ``--json`` prints one object with manufacturer, id,
version, device_type, access_number, status and records (values as exact decimal
strings) and, when a meter profile read a manufacturer-specific payload, ``profile`` and
its canonical ``registers``. Malformed bytes: one line on stderr, exit 2. A wrong key
(decryption check or MAC failed) or a missing key for an encrypted telegram: "decrypt
failed", exit 3.

Several telegrams are decoded in order as one listening session, as the runtime would: a
compact frame after its meter's full frame decodes. Then ``--json`` prints a list (a
telegram that failed is ``{"error": ...}``), each failure is one line on stderr naming
the telegram, and the exit code is the first failure's.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .decode_common import EXIT_BAD_INPUT, EXIT_BAD_KEY, DecodeFailed, parse_hex, print_json, \
    read_text_arg

HELP = "decode a wired M-Bus RSP_UD frame (mbus) or a wireless M-Bus telegram (wmbus)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("hex", metavar="HEX", nargs="+", help="the frame as hex (spaces allowed), "
                   "or @FILE / - to read it from a file / stdin; several are decoded in "
                   "order as one listening session")
    p.add_argument("--key", help="AES-128 key, 32 hex digits (encrypted telegrams)")
    p.add_argument("--format", choices=["auto", "A", "B", "none"], default="auto",
                   help="wmbus: block CRCs present (A, B), stripped (none) or guess (auto)")


def _frame_bytes(arg: str) -> bytes:
    if arg == "-" or arg.startswith("@"):
        text = read_text_arg("-" if arg == "-" else arg[1:])
    else:
        text = arg
    return parse_hex(text, "frame")


def decode(kind: str, data: bytes, key: bytes | None, fmt: str = "auto",
           formats: Any = None) -> Any:
    """The Telegram, or DecodeFailed with the exit code the CLI contract gives.
    ``formats``: the session's learned compact-frame formats (see run)."""
    from ..protocols.mbus.errors import DecryptError, MBusError, NoKeyError
    try:
        if kind == "wmbus":
            from ..protocols.mbus.wireless import decode_wmbus
            return decode_wmbus(data, key, fmt=fmt, formats=formats)
        from ..protocols.mbus.wired import decode_rsp_ud
        return decode_rsp_ud(data, key, formats=formats)
    except DecryptError as exc:
        msg = str(exc)
        raise DecodeFailed(msg if msg.startswith("decrypt failed") else f"decrypt failed: {msg}",
                           EXIT_BAD_KEY) from None
    except NoKeyError as exc:
        raise DecodeFailed(f"decrypt failed: {exc} (give --key)", EXIT_BAD_KEY) from None
    except MBusError as exc:
        raise DecodeFailed(f"{kind}: {exc}", EXIT_BAD_INPUT) from None


def run(args: argparse.Namespace) -> int:
    from ..protocols.mbus.compact import Formats
    hexes = args.hex if isinstance(args.hex, list) else [args.hex]
    frames = [_frame_bytes(h) for h in hexes]
    key = None
    if args.key:
        key = parse_hex(args.key, "key")
        if len(key) not in (8, 16):
            raise DecodeFailed(f"key must be 16 bytes (32 hex digits; 8 for DES), got "
                               f"{len(key)}")
    formats = Formats()
    if len(frames) == 1:
        t = decode(args.kind, frames[0], key, args.format, formats)
        if args.json:
            print_json(t.to_json())
        else:
            print_text(t)
        return 0
    code = 0
    out: list[Any] = []
    for i, data in enumerate(frames, start=1):
        try:
            t = decode(args.kind, data, key, args.format, formats)
        except DecodeFailed as exc:
            print(f"error: telegram {i}: {exc}", file=sys.stderr)
            code = code or exc.exit_code
            out.append({"error": str(exc)})
            continue
        if args.json:
            out.append(t.to_json())
        else:
            if i > 1:
                print()
            print(f"telegram {i}:")
            print_text(t)
    if args.json:
        print_json(out)
    return code


def print_text(t: Any, out: Any = None) -> None:
    out = out or sys.stdout
    flags = ", ".join(t.status_flags) or "ok"
    status = "-" if t.status is None else f"0x{t.status:02X} ({flags})"
    access = "-" if t.access_number is None else str(t.access_number)
    print(f"{t.manufacturer} {t.id}  version {t.version}  {t.device_type_name} "
          f"(0x{t.device_type:02X})", file=out)
    sec = {0: "none", 2: "mode 2 (DES-CBC)", 3: "mode 3 (DES-CBC, IV)", 5: "mode 5 (AES-CBC)",
           7: "mode 7 (AES-CBC, KDF, CMAC)"}.get(t.security_mode, str(t.security_mode))
    if "ell" in t.extra and t.extra["ell"].get("encryption") == 1:
        sec += ", ELL AES-CTR"
    if t.extra.get("not_encrypted"):
        sec += ", but the payload came in clear (readings flagged not_encrypted)"
    print(f"  {t.link}  CI 0x{t.ci:02X}  access {access}  status {status}  security {sec}",
          file=out)
    if t.extra.get("profile"):
        regs = " ".join(f"{k}={v}" for k, v in t.extra.get("registers", {}).items()
                        if v is not None)
        print(f"  profile {t.extra['profile']}" + (f": {regs}" if regs else ""), file=out)
    width = max((len(r.key) for r in t.records), default=0)
    for r in t.records:
        value = r.value_text()
        shown = f"{value} {r.unit}".rstrip() if value is not None else "-"
        note = f"  [{r.error}]" if r.error else ""
        print(f"  {r.key:<{width}}  {shown}{note}", file=out)
    if t.extra.get("compact"):
        print("  compact frame, decoded with the format of an earlier full frame", file=out)
    if t.manufacturer_data:
        print(f"  manufacturer data: {t.manufacturer_data.hex().upper()}", file=out)
    if t.extra.get("trailing_bytes"):
        print(f"  bytes after the frame's length: {t.extra['trailing_bytes']}", file=out)
    if t.more_records_follow:
        print("  more records follow in the next telegram", file=out)

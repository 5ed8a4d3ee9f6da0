"""`gateway decode hdlc HEX [--key K --auth-key A]` and `gateway decode iec62056-21 FILE|-`.

One module serves both kinds (registered twice in DECODE_MODULES); ``args.kind`` says which.
``--json`` prints one object whose ``readings`` are ``{"obis", "value", "unit"}`` with the
value as an exact decimal string.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from .decode_common import (EXIT_BAD_INPUT, EXIT_BAD_KEY, DecodeFailed, exact_str, parse_hex,
                     print_json)

HELP = "decode DLMS/HDLC frames or bare APDUs (Data-Notifications, plain or ciphered)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Decode HDLC frames (one or more, segmented or not) or a bare "
                          "APDU carrying a DLMS Data-Notification, plain or "
                          "general-glo-ciphered.")
    parser.add_argument("hex", metavar="HEX", help="the captured bytes in hex")
    parser.add_argument("--key", help="block cipher key (32 hex digits)")
    parser.add_argument("--auth-key", help="authentication key (32 hex digits); "
                                           "defaults to the block cipher key")
    parser.add_argument("--tz", default="UTC",
                        help="time zone of meter times without deviation (default UTC)")
    parser.add_argument("--scaler", action="append", default=[], metavar="OBIS=N",
                        help="scaler for a value sent without one (repeatable)")
    parser.add_argument("--positional", default="", metavar="OBIS,...",
                        help="OBIS codes of a list that carries bare values (Kaifa)")


def run(args: argparse.Namespace) -> int:
    return _run_hdlc(args)


# --------------------------------------------------------------------------- hdlc

def _key(text: str | None, what: str) -> bytes | None:
    if text is None:
        return None
    key = parse_hex(text, what)
    if len(key) != 16:
        raise DecodeFailed(f"{what} must be 16 bytes (32 hex digits), got {len(key)}")
    return key


def _run_hdlc(args: argparse.Namespace) -> int:
    from ..protocols.dlms import DlmsError
    from ..protocols.dlms.cipher import DecryptError
    from ..protocols.dlms.notification import NoKey, NoValidApdu, PushParser, notification_values
    data = parse_hex(args.hex, "HEX")
    key = _key(args.key, "--key")
    auth = _key(args.auth_key, "--auth-key") or key
    scalers = {}
    for item in args.scaler:
        obis, sep, n = item.partition("=")
        try:
            scalers[obis.strip()] = int(n)
        except ValueError:
            raise DecodeFailed(f"--scaler wants OBIS=N, got {item!r}") from None
    positional = tuple(p.strip() for p in args.positional.split(",") if p.strip())
    frames: list[dict[str, Any]] = []
    apdu = _one_apdu(data, frames)
    try:
        parser = PushParser(key, auth, args.tz)
    except Exception as exc:  # noqa: BLE001 - a bad --tz
        raise DecodeFailed(f"--tz: {exc}") from None
    try:
        n = parser.parse(apdu)
        values = notification_values(n, scalers, positional)
    except NoKey as exc:
        raise DecodeFailed(f"{exc}: give --key", EXIT_BAD_KEY) from None
    except NoValidApdu as exc:
        raise DecodeFailed(f"{exc} ({exc.why})", EXIT_BAD_KEY) from None
    except DecryptError as exc:
        raise DecodeFailed(f"decryption failed: {exc}", EXIT_BAD_KEY) from None
    except (DlmsError, ValueError) as exc:
        raise DecodeFailed(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - never a traceback for a field tech
        raise DecodeFailed(f"cannot decode: {type(exc).__name__}: {exc}") from None
    when = (dt.datetime.fromtimestamp(n.time_ms / 1000, dt.timezone.utc)
            .isoformat().replace("+00:00", "Z") if n.time_ms is not None else None)
    readings = [{"obis": v.obis, "value": exact_str(v.mantissa, v.exponent), "unit": v.unit}
                for v in values]
    p1 = n.telegram is not None
    out = {"kind": "hdlc", "frames": frames, "apdu": "p1-telegram" if p1 else "data-notification",
           "ciphered": n.ciphered,
           "system_title": n.system_title.hex().upper() if n.system_title else None,
           "invocation_counter": n.invocation_counter,
           "invoke_id": f"0x{n.invoke_id:08X}", "time": when,
           "body": _jsonable(n.body), "readings": readings}
    if args.json:
        print_json(out)
        return 0
    for i, f in enumerate(frames, 1):
        print(f"frame {i}: {f['kind']} {f['src']} -> {f['dest']} control {f['control']}"
              f"{' segmented' if f['segmented'] else ''}, {f['info_bytes']} info bytes")
    if n.ciphered:
        print(f"general-glo-ciphering: system title {out['system_title']}, "
              f"invocation counter {n.invocation_counter}: decrypted")
    if p1:
        print(f"P1 telegram ({len(n.telegram.values)} values, check {n.telegram.check})")
    else:
        print(f"Data-Notification invoke id {out['invoke_id']}, time {when or 'absent'}")
    for r in readings:
        print(f"  {r['obis']:<14} {r['value']} {r['unit']}".rstrip())
    if not readings:
        print("  (no OBIS values; body: " + repr(out["body"])[:200] + ")")
    return 0


def _one_apdu(data: bytes, frames: list[dict[str, Any]]) -> bytes:
    """The one complete APDU in the input: HDLC frames (segments joined, as the push
    driver does) or a bare APDU, and General-Block-Transfer blocks joined."""
    from ..protocols import hdlc
    from ..protocols.dlms.gbt import GbtAssembler, GbtError
    apdus: list[bytes] = []
    if data[:1] == bytes([hdlc.FLAG]):
        rest = data
        assembler = hdlc.Reassembler()
        while rest.strip(b"\x7e"):
            rest = rest if rest[:2] != b"\x7e\x7e" else rest[1:]
            try:
                frame, rest = hdlc.HdlcFrame.deserialize(rest)
                part = assembler.add(frame)
            except hdlc.HdlcError as exc:
                raise DecodeFailed(f"frame {len(frames) + 1}: {exc}") from None
            frames.append({"dest": str(frame.dest), "src": str(frame.src), "kind": frame.kind,
                           "control": f"{frame.control:02X}", "segmented": frame.segmented,
                           "info_bytes": len(frame.info)})
            if part is not None:
                apdus.append(part)
        if not apdus:
            raise DecodeFailed("the frames end inside a segmented APDU (last frame has S=1)")
    elif data[:1] == b"\x68" and data[3:4] == b"\x68":
        apdus = _mbus_apdus(data)  # Kaifa MA309 (Austria): DLMS in M-Bus long frames
    elif data[:2] == b"\x00\x01" and len(data) >= 8 and \
            int.from_bytes(data[6:8], "big") == len(data) - 8:
        apdus = [data[8:]]  # IEC 62056-47 wrapper (TCP/UDP push): version 1, ports, length
    else:
        apdus = [data]
    gbt = GbtAssembler()
    complete = []
    for a in apdus:
        try:
            whole = gbt.add(a)
        except GbtError as exc:
            raise DecodeFailed(str(exc)) from None
        if whole is not None:
            complete.append(whole)
    if not complete:
        raise DecodeFailed("general-block-transfer without its last block")
    if len(complete) > 1:
        raise DecodeFailed(f"{len(complete)} APDUs in the input: give one notification")
    return complete[0]


def _mbus_apdus(data: bytes) -> list[bytes]:
    from ..protocols import hdlc
    from ..protocols.dlms.mbus_link import MbusLinkDecoder, MbusLinkError
    link = MbusLinkDecoder()
    link.receive_data(data)
    apdus = []
    for _ in range(10_000):
        got = link.next_event()
        if got is hdlc.NEED_DATA:
            break
        if isinstance(got, MbusLinkError):
            raise DecodeFailed(str(got))
        apdus.append(got)
    if not apdus:
        raise DecodeFailed("no complete DLMS APDU in the M-Bus frames (a frame cut short, a bad "
                           "checksum, or no last segment)")
    return apdus


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex().upper()
    if hasattr(v, "raw") and isinstance(v.raw, bytes):  # a tagged date-time / date / time
        return v.raw.hex().upper()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return repr(v)
    try:
        return int(v)
    except (TypeError, ValueError):
        return str(v)

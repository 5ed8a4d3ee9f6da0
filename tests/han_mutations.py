"""Mutations of the corpus HAN frames that reach the parser: the plaintext APDU is
changed (bit flip, truncation, inserted or deleted byte), then ciphered again with the
frame's own key, system title and counter when it was ciphered, and framed in HDLC with
its length, HCS and FCS recomputed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gateway.protocols.dlms import cipher
from gateway.protocols.hdlc import LLC_RESPONSE, Address, HdlcFrame

ROOT = Path(__file__).resolve().parent.parent
CORPUS = json.loads((ROOT / "tests/corpus/han.json").read_text())["han"]


@dataclass(frozen=True)
class Sample:
    id: str
    plain: bytes             # the plaintext APDU
    glo: cipher.GloCiphered | None  # how it came ciphered (None: plain)
    key: bytes | None
    auth_key: bytes | None
    positional: tuple[str, ...]


def _apdu(entry: dict) -> bytes:
    from gateway.subcommands.decode_dlms import _one_apdu
    return _one_apdu(bytes.fromhex(entry["input_hex"]), [])


def samples() -> list[Sample]:
    out = []
    for e in CORPUS:
        apdu = _apdu(e)
        key = bytes.fromhex(e["key"]) if e.get("key") else None
        ak = bytes.fromhex(e["auth_key"]) if e.get("auth_key") else key
        args = e.get("cli_args", [])
        positional = tuple(args[args.index("--positional") + 1].split(",")) \
            if "--positional" in args else ()
        glo = None
        if apdu[:1] == b"\xdb":
            glo = cipher.parse_glo(apdu)
            apdu = cipher.decrypt(glo, key, ak)  # type: ignore[arg-type]
        out.append(Sample(e["id"], apdu, glo, key, ak, positional))
    return out


def mutate(plain: bytes, op: str, pos: int, arg: int) -> bytes:
    if not plain:
        return plain
    i = pos % len(plain)
    if op == "flip":
        return plain[:i] + bytes([plain[i] ^ (1 << (arg % 8))]) + plain[i + 1:]
    if op == "truncate":
        return plain[:i]
    if op == "insert":
        return plain[:i] + bytes([arg & 0xFF]) + plain[i:]
    if op == "delete":
        return plain[:i] + plain[i + 1:]
    if op == "set":
        return plain[:i] + bytes([arg & 0xFF]) + plain[i + 1:]
    raise ValueError(op)


OPS = ("flip", "truncate", "insert", "delete", "set")


def wire(s: Sample, plain: bytes, segment: int = 0) -> bytes:
    """The mutated plaintext as the meter would send it: ciphered like the original (so the
    tag verifies), in HDLC frames with consistent lengths and checksums."""
    apdu = plain
    if s.glo is not None:
        apdu = cipher.encrypt(plain, s.glo.system_title, s.glo.invocation_counter,
                              s.key, s.auth_key, s.glo.security_control).serialize()  # type: ignore[arg-type]
    info = LLC_RESPONSE + apdu
    parts = [info[i:i + segment] for i in range(0, len(info), segment)] if segment else [info]
    return b"".join(HdlcFrame(Address(16), Address.server(1, 17), 0x13, p,
                              segmented=i < len(parts) - 1).serialize()
                    for i, p in enumerate(parts))

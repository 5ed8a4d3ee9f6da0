"""Downlink commands: what a signed command says and whether the gateway may act on it.

Sans-I/O: bytes, the trusted keys, this gateway's id, the last accepted sequence number and
the current time go in; a :class:`Command` or a :class:`Rejected` with a stable reason comes
out. The handler persists the sequence and runs the command.

A command is a COSE_Sign1 (see :mod:`gateway.wire.cose`) over the CBOR map::

    {"v": 1, "id": "op-42", "seq": 1732000000123, "target": "gw-0001" | "*" | ["gw-1", ...],
     "iat": issued_ms, "exp": expiry_ms, "cmd": "diagnostics", "args": {...}}

``seq`` is strictly increasing per gateway across every head-end key and both topics (the
head-end tool uses the current time in ms, so independent operators never collide);
``exp`` bounds how long a captured command stays dangerous.

A seq may not run ahead: at most ``max_jump`` past the larger of the last accepted seq and
the gateway clock in ms (``fleet.max_seq_jump``), else one signed command with seq 2^63-1
would make every later one a replay. A time-based head-end stays far inside the bound; a
counter-based one too (its seqs are far below the clock).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..wire.cose import sign1, verify1
from ..wire.errors import WireError

FORMAT = 1
FLEET_TARGET = "*"
MAX_LIFETIME_MS = 7 * 24 * 3600 * 1000  # a command may not claim to stay valid longer
CLOCK_SKEW_MS = 5 * 60 * 1000  # issued-in-the-future tolerance (field clocks drift)
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_CMD = re.compile(r"[a-z][a-z0-9_]{0,31}")


class Rejected(Exception):
    """The command must not run. ``reason``: malformed, unknown_key, bad_signature,
    wrong_target, expired, replayed, seq_too_far."""

    def __init__(self, reason: str, message: str, command: dict[str, Any] | None = None):
        super().__init__(message)
        self.reason = reason
        self.command = command or {}  # id/seq/cmd when they could be read (for the report)


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    seq: int
    target: Any
    issued_ms: int
    expires_ms: int
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)
    key_id: str = ""

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "seq": self.seq, "cmd": self.cmd, "key_id": self.key_id}


def encode_command(key: Ed25519PrivateKey, *, id: str, seq: int, target: Any, cmd: str,
                   args: Mapping[str, Any] | None = None, issued_ms: int,
                   expires_ms: int) -> bytes:
    """Sign a command (head-end side). Raises ValueError on fields the gateway would refuse."""
    obj = {"v": FORMAT, "id": id, "seq": seq, "target": target, "iat": issued_ms,
           "exp": expires_ms, "cmd": cmd, "args": dict(args or {})}
    _check_fields(obj)
    return sign1(obj, key)


def verify_command(data: bytes, trusted: Mapping[bytes, Ed25519PublicKey], gateway_id: str,
                   last_seq: int, now_ms: int, max_jump: int | None = None,
                   not_before_ms: int = 0) -> Command:
    """Check signature, shape, target, expiry and sequence, in that order (nothing unsigned
    is believed). ``not_before_ms``: commands issued before it are refused as replays (set
    when an operator resets a locked sequence). Raises :class:`Rejected`."""
    try:
        kid, obj = verify1(data, trusted)
    except WireError as e:
        raise Rejected(e.reason, str(e)) from None
    seen = {k: obj.get(k) for k in ("id", "seq", "cmd")} if isinstance(obj, dict) else {}
    seen = {k: v for k, v in seen.items() if isinstance(v, (str, int)) and not isinstance(v, bool)}
    try:
        _check_fields(obj)
    except ValueError as e:
        raise Rejected("malformed", f"signed command is malformed: {e}", seen) from None
    target = obj["target"]
    if not _targets(target, gateway_id):
        raise Rejected("wrong_target", f"command {obj['id']} is for {target!r}, not "
                       f"{gateway_id!r}", seen)
    if now_ms >= obj["exp"]:
        raise Rejected("expired", f"command {obj['id']} expired {now_ms - obj['exp']} ms ago",
                       seen)
    if obj["iat"] > now_ms + CLOCK_SKEW_MS:
        raise Rejected("malformed", f"command {obj['id']} is issued in the future", seen)
    if obj["seq"] <= last_seq:
        raise Rejected("replayed", f"command {obj['id']} has seq {obj['seq']}, not above the "
                       f"last accepted {last_seq}", seen)
    if obj["iat"] < not_before_ms:
        raise Rejected("replayed", f"command {obj['id']} was issued before the downlink "
                       f"sequence was reset at {not_before_ms}", seen)
    if max_jump is not None:
        limit = max(last_seq, now_ms) + max_jump
        if obj["seq"] > limit:
            raise Rejected("seq_too_far", f"command {obj['id']} has seq {obj['seq']}, more than "
                           f"fleet.max_seq_jump ({max_jump}) past the larger of the last "
                           f"accepted seq ({last_seq}) and the gateway clock ({now_ms}); "
                           "refused so that one command cannot lock the downlink", seen)
    return Command(obj["id"], obj["seq"], target, obj["iat"], obj["exp"], obj["cmd"],
                   dict(obj["args"]), kid.hex())


def _targets(target: Any, gateway_id: str) -> bool:
    if isinstance(target, str):
        return target in (gateway_id, FLEET_TARGET)
    return gateway_id in target


def _check_fields(o: Any) -> None:
    if not isinstance(o, dict):
        raise ValueError("not a map")
    if o.get("v") != FORMAT:
        raise ValueError(f"unknown format {o.get('v')!r}")
    extra = set(o) - {"v", "id", "seq", "target", "iat", "exp", "cmd", "args"}
    if extra:
        raise ValueError(f"unknown fields {sorted(map(str, extra))}")
    if not (isinstance(o.get("id"), str) and _ID.fullmatch(o["id"])):
        raise ValueError("id must be 1-64 characters from A-Z a-z 0-9 . _ : -")
    for k in ("seq", "iat", "exp"):
        v = o.get(k)
        if type(v) is not int or not 0 < v < 2**63:
            raise ValueError(f"{k} must be a positive integer")
    if o["exp"] <= o["iat"] or o["exp"] - o["iat"] > MAX_LIFETIME_MS:
        raise ValueError("exp must be after iat and at most 7 days later")
    t = o.get("target")
    ok_list = (isinstance(t, list) and 0 < len(t) <= 10000
               and all(isinstance(x, str) and x for x in t))
    if not (isinstance(t, str) and t) and not ok_list:
        raise ValueError('target must be a gateway id, "*" or a list of gateway ids')
    if not (isinstance(o.get("cmd"), str) and _CMD.fullmatch(o["cmd"])):
        raise ValueError("cmd must be a lower-case command name")
    if not isinstance(o.get("args"), dict) or not all(isinstance(k, str) for k in o["args"]):
        raise ValueError("args must be a map with text keys")

"""Diehl Metering / Sappel / Hydrometer (DME, SAP, HYD, EWT, SPL) IZAR radio.

PRIOS (CI 0xA0-0xA7) payloads are scrambled with a 32-bit LFSR whose seed is a key XOR
three big-endian words of the frame header (M + A[0:2], A[2:6], CI + the next three
bytes); the manufacturer's default keys are public (published by Diehl for IZAR/PRIOS
integrations and used by open-source decoders). The first unscrambled byte is 0x4B; then
the volume (32-bit litres), the volume at the last due date and that date (type G). The
three bytes after the CI are not scrambled: battery life (half years) and alarm bits.
Non-Sappel PRIOS frames carry the id in A[2:6] and version/type in A[0:2].

Security modes 16-31 ("real data", CI 0x7A with bit 4 of the mode set): the same LFSR over
the data after the TPL header; the check is the byte sum AND 0xEF equal to the high byte
of the configuration word AND 0xEF. The result is EN 13757-3 records.
"""

from __future__ import annotations

from typing import Any

from ..errors import DecryptError, TruncatedError
from ..telegram import bcd_id
from .engine import ADDRESSES, Field, Profile, transform, unsupported

MANUFACTURERS = ("DME", "SAP", "HYD", "EWT", "SPL")


def _key(b: bytes) -> int:
    """The 32-bit LFSR key of a configured key: its first two 32-bit words XORed."""
    return int.from_bytes(b[:4], "big") ^ int.from_bytes(b[4:8], "big")


DEFAULT_KEYS = (_key(bytes.fromhex("39BC8A10E66D83F8")), _key(bytes.fromhex("51728910E66D83F8")))


def _keys(configured: bytes | None) -> tuple[int, ...]:
    """The meter's own key first (when one is configured), then the published defaults."""
    return ((_key(configured),) if configured and len(configured) >= 8 else ()) + DEFAULT_KEYS


def lfsr(frame: bytes, key: int, start: int = 15) -> bytes:
    """Unscramble ``frame[start:]`` (frame = L C M A CI ...)."""
    key ^= int.from_bytes(frame[2:6], "big")
    key ^= int.from_bytes(frame[6:10], "big")
    key ^= int.from_bytes(frame[10:14], "big")
    out = bytearray()
    for b in frame[start:]:
        for _ in range(8):
            bit = ((key >> 1) ^ (key >> 2) ^ (key >> 11) ^ (key >> 31)) & 1
            key = ((key << 1) | bit) & 0xFFFFFFFF
        out.append(b ^ (key & 0xFF))
    return bytes(out)


@transform("diehl-prios")
def _prios(payload: bytes, ctx: dict[str, Any]) -> bytes:
    frame = ctx.get("frame")
    if frame is None:
        raise DecryptError("PRIOS payload needs the radio link header to be unscrambled",
                           ctx.get("header"))
    if len(frame) < 16:
        raise TruncatedError("PRIOS payload shorter than its header", ctx.get("header"))
    for key in _keys(ctx.get("key")):
        plain = lfsr(frame, key)
        if plain[0] == 0x4B:
            return payload[:4] + plain
    raise DecryptError("decrypt failed: PRIOS check byte is not 0x4B with the "
                       + ("configured key or " if ctx.get("key") else "") + "default keys",
                       ctx.get("header"))


def _swapped(frame: bytes) -> tuple[str, int, int]:
    return bcd_id(frame[6:10]), frame[4], frame[5]


def _sappel(frame: bytes) -> tuple[str, int, int]:
    """Sappel PRIOS uses the version byte as a fifth id byte; the meter is a water meter."""
    return bcd_id(frame[4:8]), 0x00, 0x07


ADDRESSES["diehl-swapped"] = _swapped
ADDRESSES["sappel-prios"] = _sappel


def link_address(frame: bytes) -> tuple[str, int, int] | None:
    """The meter's own id of a "real data" frame (CI 0x7A, modes 16-31): it is swapped as
    in PRIOS frames."""
    if len(frame) >= 15 and frame[10] == 0x7A and frame[14] & 0x10:
        return _swapped(frame)
    return None


def security_mode(mode: int, data: bytes, origin: bytes | None, hdr: dict[str, Any],
                  key: bytes | None = None
                  ) -> tuple[bytes, dict[str, Any] | None, dict[str, Any]]:
    """Modes 16-31 of a Diehl meter: the LFSR "real data" scheme with the default keys.
    A capture stored already unscrambled (its own bytes pass the check) is read as it is
    and flagged ``not_encrypted``."""
    if origin is None or len(origin) < 16:
        raise unsupported(hdr, 0, f"security mode {mode} outside a radio short-header frame")
    check = origin[14] & 0xEF
    ident, version, dtype = _swapped(origin)
    own = {"id": ident, "version": version, "device_type": dtype}
    for k in _keys(key):
        plain = lfsr(origin, k)
        if plain and sum(plain) & 0xEF == check:
            return plain, own, {}
    if origin[15:] and sum(origin[15:]) & 0xEF == check:
        return bytes(origin[15:]), own, {"not_encrypted": True}
    raise DecryptError(f"decrypt failed: security mode {mode} (Diehl real data) checksum does "
                       "not match with the default keys", hdr)


_prios_fields = (
    Field("remaining_battery_years", 1, 1, "uint_le", quantity="Remaining battery life",
          unit="year", mask=0x1F, factor=5, exponent=-1),
    Field("leak", 1, 1, "bits", quantity="Alarm leak", shift=7, mask=1),
    Field("meter_blocked", 1, 1, "bits", quantity="Alarm meter blocked", shift=5, mask=1),
    Field("backflow", 2, 1, "bits", quantity="Alarm backflow", shift=7, mask=1),
    Field("tamper", 2, 1, "bits", quantity="Alarm fraud", shift=1, mask=0x05),
    Field("total_volume", 5, 4, quantity="Volume", unit="m3", exponent=-3),
    Field("due_date_volume", 9, 4, quantity="Volume", unit="m3", exponent=-3, storage=1,
          optional=True),
    Field("due_date", 13, 2, "date_g", storage=1, optional=True),
)

_PRIOS_CI = tuple(range(0xA0, 0xA8))
PROFILES = [
    Profile("diehl-izar-sappel", ("SAP",), _PRIOS_CI, transform="diehl-prios",
            address="sappel-prios", fields=_prios_fields, note="Sappel IZAR PRIOS water meter"),
    Profile("diehl-izar", ("DME", "HYD", "EWT", "SPL"), _PRIOS_CI, transform="diehl-prios",
            address="diehl-swapped", fields=_prios_fields,
            note="Diehl/Hydrometer IZAR PRIOS water meter"),
]

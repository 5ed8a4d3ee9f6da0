"""Meter profiles: manufacturer-specific wM-Bus payloads described as data.

One module per meter family (``techem``, ``qundis``, ...) holds a ``PROFILES`` list of
:class:`~.engine.Profile`; the engine reads them. The transport layer asks this package
three questions: which profile reads a manufacturer-CI payload (CI 0xA0-0xB7), which one
reads (or adds to) a standard telegram's payload, and how a security mode 16-31 payload is
made readable. Adding a family is adding a module here and its test vectors, e.g.

    PROFILES = [Profile("acme-water", ("ACM",), (0xA5,), versions=(0x01,),
                        fields=(Field("total_volume", 1, 4, "bcd", quantity="Volume",
                                      unit="m3", exponent=-3),))]

and naming the module in ``FAMILIES``. Registers use the names in ``engine.REGISTERS``.
"""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedFormatError
from ..records import DataRecord
from . import apator, bfw, bmeters, diehl, kamstrup, qundis, sontex, techem, zenner
from .engine import ADDRESSES, MFCT_DATA, PAYLOAD, RECORDS, Decoded, Profile, apply, unsupported

FAMILIES = (techem, qundis, apator, diehl, bfw, bmeters, sontex, kamstrup, zenner)
PROFILES: tuple[Profile, ...] = tuple(p for fam in FAMILIES for p in fam.PROFILES)
BY_NAME: dict[str, Profile] = {p.name: p for p in PROFILES}
# manufacturer -> its profiles, in order: a telegram of any other maker costs one lookup
BY_MANUFACTURER: dict[str, tuple[Profile, ...]] = {
    m: tuple(p for p in PROFILES if m in p.manufacturers)
    for m in {m for p in PROFILES for m in p.manufacturers}}
MANUFACTURER_CI = range(0xA0, 0xB8)


def find(hdr: dict[str, Any], ci: int, sources: tuple[str, ...],
         data: bytes | None) -> Profile | None:
    """The first profile of one of ``sources`` matching this meter and payload."""
    for p in BY_MANUFACTURER.get(hdr.get("manufacturer", ""), ()):
        kind = "vib" if p.source.startswith("vib:") else p.source
        if kind in sources and p.matches(hdr, ci, data if p.source == PAYLOAD else None):
            return p
    return None


def origin_frame(ctx: Any, ci: int, payload: bytes) -> bytes | None:
    """The link-layer frame as sent (L C M A CI payload), for schemes keyed on its header;
    None on a wired frame (no link layer)."""
    if ctx.m_field is None or ctx.a_field is None:
        return None
    body = b"\x44" + bytes(ctx.m_field) + bytes(ctx.a_field) + bytes((ci,)) + payload
    return bytes((len(body) & 0xFF,)) + body


def read_manufacturer_ci(ci: int, payload: bytes, ctx: Any) -> tuple[Profile, Decoded,
                                                                     dict[str, Any]]:
    """Decode a CI 0xA0-0xB7 payload -> (profile, what it read, header to report)."""
    h = ctx.header
    prof = find(h, ci, (PAYLOAD,), payload)
    if prof is None:
        raise unsupported(h, ci, "manufacturer-specific payload", bytes((ci,)) + payload)
    origin = origin_frame(ctx, ci, payload)
    dec = apply(prof, payload, {"frame": origin, "header": h, "key": ctx.key})
    header = dict(h)
    if prof.address is not None and origin is not None:
        ident, version, dtype = ADDRESSES[prof.address](origin)
        header.update(id=ident, version=version, device_type=dtype)
    return prof, dec, header


def payload_profile(hdr: dict[str, Any], ci: int, payload: bytes) -> Profile | None:
    """A profile that reads a standard-CI payload instead of EN 13757-3 records (BFW,
    Apator 16-2): their bytes after 2F2F are not records."""
    return find(hdr, ci, (PAYLOAD,), payload)


def augment(hdr: dict[str, Any], ci: int, records: list[DataRecord],
            mdata: bytes) -> tuple[Profile, Decoded] | None:
    """A profile that reads the manufacturer data (DIF 0x0F), a VIF 0x7F/0xFF record or
    names the standard records of this meter."""
    for prof in BY_MANUFACTURER.get(hdr.get("manufacturer", ""), ()):
        kind = "vib" if prof.source.startswith("vib:") else prof.source
        if kind not in (MFCT_DATA, "vib", RECORDS) or not prof.matches(hdr, ci, None, True):
            continue
        if prof.source == MFCT_DATA:
            src = mdata
        elif kind == "vib":
            vib = bytes.fromhex(prof.source[4:])
            rec = next((r for r in records if r.vib == vib and isinstance(r.value, bytes)),
                       None)
            src = b"" if rec is None else bytes(rec.raw)
        else:
            src = b""
        if kind != RECORDS and (not src or not prof.matches(hdr, ci, src)):
            continue  # this telegram does not carry the data, or not in this layout
        return prof, apply(prof, src, {"header": hdr}, records)
    return None


def security_mode(mode: int, ci: int, data: bytes, pos: int, ctx: Any,
                  ) -> tuple[bytes, dict[str, Any] | None, dict[str, Any]]:
    """Security modes 16-31 are manufacturer-specific: the family module of the meter's
    manufacturer makes the payload readable (-> plain payload, header to report, extra
    telegram details such as ``not_encrypted``)."""
    h = ctx.header
    for fam in FAMILIES:
        scheme = getattr(fam, "security_mode", None)
        if scheme is not None and h.get("manufacturer") in getattr(fam, "MANUFACTURERS", ()):
            origin = origin_frame(ctx, ci, bytes(data[pos - 4:])) if ci == 0x7A else None
            return scheme(mode, bytes(data[pos:]), origin, h, ctx.key)
    raise unsupported(h, ci, f"security mode {mode} (manufacturer-specific)",
                      bytes(data[pos - 5:]) if pos >= 5 else b"")


def compact_format(manufacturer: str, signature: int) -> bytes | None:
    """The DIF/VIF bytes of a compact frame's format signature a family publishes."""
    for fam in FAMILIES:
        known = getattr(fam, "COMPACT_FORMATS", {})
        if (manufacturer, signature) in known:
            return known[(manufacturer, signature)]
    return None


def identify(frame: bytes) -> str | None:
    """The profile a heard telegram would be read with, from its link header and CI alone
    (an installer's first look at a meter not yet configured): None when no profile is
    known for it (a standard meter or an unknown format), or the header is hidden."""
    if len(frame) < 11:
        return None
    from ..telegram import dll_header
    hdr = dll_header(frame)
    ci, pos = frame[10], 11
    if ci == 0x8C and len(frame) > 13:  # short ELL: the CI after it is in clear
        ci, pos = frame[13], 14
    for p in BY_MANUFACTURER.get(hdr["manufacturer"], ()):
        if p.matches(hdr, ci, None, header_only=True):
            return p.name
    return None


def meter_address(frame: bytes) -> dict[str, Any] | None:
    """The header a meter means when its profile codes the link address its own way
    (Diehl PRIOS: id in A[2:6]); None when the link header is the meter's."""
    if len(frame) < 16:
        return None
    from ..telegram import dll_header
    hdr = dll_header(frame)
    for p in BY_MANUFACTURER.get(hdr["manufacturer"], ()):
        if p.address is not None and p.matches(hdr, frame[10], None):
            ident, version, dtype = ADDRESSES[p.address](frame)
            return {**hdr, "id": ident, "version": version, "device_type": dtype}
    for fam in FAMILIES:
        own = getattr(fam, "link_address", None)
        if own is not None and hdr["manufacturer"] in getattr(fam, "MANUFACTURERS", ()):
            found = own(frame)
            if found is not None:
                return {**hdr, "id": found[0], "version": found[1], "device_type": found[2]}
    return None

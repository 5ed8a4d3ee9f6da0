"""Transport layer (EN 13757-7 TPL) and the decoded telegram shared by wired and wireless.

``decode_application(ci, data, pos, ctx)`` reads the TPL header the CI field announces
(none, short, long), decrypts security mode 5 or 7 (AES) or 2/3 (DES) when the
configuration word says so, checks the result, and parses the records: a full frame's
(whose format a session in ``ctx.formats`` learns), a compact frame's (CI 0x79/0x7B/0x73,
decoded with a learned format), or the wired fixed data structure (CI 0x73/0x77, see
:mod:`.fixed`). CI 0x70/0x6E/0x6F application errors raise ``ApplicationError``.

Without a key, a telegram whose security bits say encrypted but whose payload starts with
the 2F2F check bytes in clear is decoded and marked ``extra["not_encrypted"]``; with a key
it is decrypted as always (so a wrong key still fails). On wired frames, a configuration
word that is no defined security mode is the old "signature" field (``extra``).
"""

from __future__ import annotations

from typing import Any

from . import security
from .errors import (
    ApplicationError, AuthError, DecryptError, FrameError, MBusError, NoKeyError, TruncatedError,
    UnsupportedError, UnsupportedSecurityError,
)
from .compact import decode_compact, meter_key
from .records import DataRecord, parse_records
from .telegram import Afl, Context, Telegram, bcd_id  # re-exported: callers import them here
from .tables import (
    APPLICATION_ERRORS, CI_APPLICATION_ERROR, CI_APPLICATION_ERROR_LONG,
    CI_APPLICATION_ERROR_SHORT, CI_COMPACT, CI_COMPACT_LONG, CI_COMPACT_SHORT, CI_FIXED,
    CI_FIXED_MSB, CI_RSP_UD_LONG, CI_RSP_UD_LONG_MSB, CI_RSP_UD_NONE, CI_RSP_UD_SHORT,
    SECURITY_MODES, manufacturer_code,
)


def _need(data: bytes, pos: int, n: int, what: str, header: dict[str, Any]) -> None:
    if pos + n > len(data):
        raise TruncatedError(f"{what}: needs {n} bytes at offset {pos}, "
                             f"{max(0, len(data) - pos)} left", header)


def decode_application(ci: int, data: bytes, pos: int, ctx: Context, *,
                       link: str = "wired", c_field: int | None = None,
                       address: int | None = None) -> Telegram:
    """Decode from the byte after the CI field to the end of ``data``."""
    h = ctx.header
    ci_pos = pos - 1
    if link == "wired" and ci in (CI_FIXED, CI_FIXED_MSB):
        from .fixed import decode_fixed
        return decode_fixed(ci, data, pos, h, c_field=c_field, address=address)
    if ci in (CI_APPLICATION_ERROR, CI_APPLICATION_ERROR_SHORT, CI_APPLICATION_ERROR_LONG):
        raise _application_error(ci, data, pos, ctx)
    compact = ci in (CI_COMPACT, CI_COMPACT_SHORT, CI_COMPACT_LONG)
    if ci in (CI_RSP_UD_LONG, CI_COMPACT_LONG):
        _need(data, pos, 12, "long TPL header", h)
        ident = data[pos:pos + 4]
        mfr = data[pos + 4:pos + 6]
        h.update(manufacturer=manufacturer_code(int.from_bytes(mfr, "little")),
                 id=bcd_id(ident), version=data[pos + 6], device_type=data[pos + 7])
        iv_m, iv_a = bytes(mfr), bytes(data[pos:pos + 4]) + bytes(data[pos + 6:pos + 8])
        kdf_id = bytes(ident)
        pos += 8
    elif ci in (CI_RSP_UD_SHORT, CI_COMPACT_SHORT):
        _need(data, pos, 4, "short TPL header", h)
        iv_m, iv_a = ctx.m_field, ctx.a_field
        kdf_id = bytes(ctx.a_field[:4]) if ctx.a_field else None
    elif ci in (CI_RSP_UD_NONE, CI_COMPACT):
        records, mdata, more, found = _profiled_records(ci, data, pos, h, False, ctx, compact)
        t = Telegram(h.get("manufacturer", ""), h.get("id", ""), h.get("version", 0),
                     h.get("device_type", 0), None, None, records, ci,
                     manufacturer_data=mdata, more_records_follow=more, link=link,
                     c_field=c_field, address=address, extra=found)
        if compact:
            t.extra["compact"] = True
        return t
    elif ci == CI_RSP_UD_LONG_MSB:
        raise UnsupportedError("CI 0x76 (data sent most significant byte first)", h)
    elif 0xA0 <= ci <= 0xB7:
        return _manufacturer_ci(ci, data, pos, ctx, link, c_field, address)
    else:
        raise UnsupportedError(f"CI field 0x{ci:02X} is not an application data response", h,
                               payload=bytes(data[ci_pos:]))

    access, status = data[pos], data[pos + 1]
    config = int.from_bytes(data[pos + 2:pos + 4], "little")
    h.update(access_number=access)
    pos += 4
    mode = (config >> 8) & 0x1F
    extra: dict[str, Any] = {}
    if compact:
        extra["compact"] = True
    if link == "wired" and mode not in SECURITY_MODES:
        # EN 13757-3:2004 calls these two bytes the signature, and meters (Aquametro,
        # Itron) put values there that are no security mode: libmbus ignores them too.
        extra["signature"] = data[pos - 2:pos].hex().upper()
        mode = 0
    decrypted = False
    if mode == 0:
        apl, start = data, pos
    elif mode in (2, 3, 5, 7):
        cfe_len = 1 if mode == 7 else 0
        if ctx.key is None:
            if data[pos + cfe_len:pos + cfe_len + 2] == b"\x2f\x2f":
                # no key, encrypted by its bits but in clear: decode, and say so
                extra["not_encrypted"] = True
                apl, start = data, pos + cfe_len
                return _finish(ci, apl, start, ctx, h, access, status, config, mode, link,
                               c_field, address, extra, compact, False)
            raise NoKeyError(f"encrypted with security mode {mode} and no key is configured "
                             "for this meter", h)
        apl, start = _decrypt(mode, config, data, pos, ctx, kdf_id, iv_m, iv_a, ci_pos,
                              access, h), 0
        decrypted = True
    else:
        (apl, decrypted), start = _manufacturer_mode(mode, ci, data, pos, ctx, extra), 0
    return _finish(ci, apl, start, ctx, h, access, status, config, mode, link, c_field,
                   address, extra, compact, decrypted)


def _decrypt(mode: int, config: int, data: bytes, pos: int, ctx: Context,
             kdf_id: bytes | None, iv_m: bytes | None, iv_a: bytes | None, ci_pos: int,
             access: int, h: dict[str, Any]) -> bytes:
    """Security modes 2/3 (DES) and 5/7 (AES) with a key: the decrypted blocks, checked by
    their 2F2F, followed by what is sent in clear after them."""
    blocks = (config >> 4) & 0x0F
    if mode == 7 and len(ctx.key) != 16:
        raise DecryptError(f"decrypt failed: security mode 7 is AES-128 and needs a "
                           f"16-byte key, the configured key has {len(ctx.key)}", h)
    if mode == 7:
        _need(data, pos, 1, "mode 7 configuration field extension", h)
        cfe = data[pos]
        pos += 1
        key = _mode7_key(cfe, ctx, kdf_id, data, ci_pos, h)
        iv = b"\x00" * 16
    elif mode == 5:
        if iv_m is None or iv_a is None:
            raise UnsupportedSecurityError("mode 5 with a short header needs the link-layer "
                                           "address, which a wired frame does not carry", h)
        key = ctx.key
        if len(key) != 16:
            raise DecryptError(f"decrypt failed: security mode 5 is AES-128 and needs a "
                               f"16-byte key, the configured key has {len(key)}", h)
        iv = security.mode5_iv(iv_m, iv_a, access)
    else:
        key = ctx.key
        iv = b"\x00" * 8
        if mode == 3:
            if iv_m is None or iv_a is None:
                raise UnsupportedSecurityError("mode 3 with a short header needs the "
                                               "link-layer address", h)
            iv = security.des_iv(iv_m, iv_a)
    bsize = 8 if mode in (2, 3) else 16
    n = blocks * bsize
    if mode in (2, 3) and n == 0:
        n = (len(data) - pos) // 8 * 8  # no count: everything that fills whole blocks
    if n == 0:
        raise FrameError(f"security mode {mode} with zero encrypted blocks", h)
    _need(data, pos, n, f"{n // bsize} encrypted blocks", h)
    if mode in (2, 3):
        if len(key) != 8:
            raise DecryptError(f"decrypt failed: security mode {mode} is DES and needs "
                               f"an 8-byte key, the configured key has {len(key)}", h)
        plain = security.des_cbc_decrypt(key, iv, bytes(data[pos:pos + n]))
    else:
        plain = security.aes_cbc_decrypt(key, iv, bytes(data[pos:pos + n]))
    if plain[:2] != b"\x2f\x2f":
        raise DecryptError(f"decrypt failed: security mode {mode} check bytes are "
                           f"{plain[:2].hex().upper()}, not 2F2F (wrong key?)", h)
    return plain + bytes(data[pos + n:])


def _manufacturer_mode(mode: int, ci: int, data: bytes, pos: int, ctx: Context,
                      extra: dict[str, Any]) -> tuple[bytes, bool]:
    """Security modes 16-31 by the manufacturer's profile (the plain APL and whether it was
    decrypted); any other mode is not supported."""
    h = ctx.header
    if 16 <= mode <= 31:
        from .profiles import security_mode
        plain, override, more_extra = security_mode(mode, ci, data, pos, ctx)
        if override:
            h.update(override)
        extra.update(more_extra)
        return plain, not more_extra.get("not_encrypted")
    name = SECURITY_MODES.get(mode) or ("manufacturer specific" if mode >= 16 else "reserved")
    raise UnsupportedSecurityError(f"security mode {mode} ({name}) is not supported", h,
                                   payload=bytes(data[pos:]))


def _finish(ci: int, apl: bytes, start: int, ctx: Context, h: dict[str, Any], access: int,
            status: int, config: int, mode: int, link: str, c_field: int | None,
            address: int | None, extra: dict[str, Any], compact: bool,
            decrypted: bool) -> Telegram:
    if compact and (decrypted or extra.get("not_encrypted")) \
            and apl[start:start + 2] == b"\x2f\x2f":
        start += 2  # the 2F2F check bytes (verified); the format signature follows
    records, mdata, more, found = _profiled_records(ci, apl, start, h, decrypted, ctx, compact)
    extra.update(found)
    return Telegram(h.get("manufacturer", ""), h.get("id", ""), h.get("version", 0),
                    h.get("device_type", 0), access, status, records, ci, config, mode,
                    mdata, more, link, c_field, address, extra)


def _profiled_records(ci: int, apl: bytes, start: int, h: dict[str, Any], decrypted: bool,
                      ctx: Context | None, compact: bool,
                      ) -> tuple[list[DataRecord], bytes, bool, dict[str, Any]]:
    """The records of a telegram, read by a meter profile where one describes this meter's
    payload (instead of, or in addition to, the EN 13757-3 records)."""
    from . import profiles
    prof = None if compact else profiles.payload_profile(h, ci, bytes(apl[start:]))
    if prof is not None and prof.prefer_records:
        try:
            records, mdata, more = parse_records(apl, start)
        except MBusError:
            pass
        else:
            if not mdata and any(r.is_numeric for r in records):
                prof = None  # this meter sends standard records after all
    if prof is not None:
        dec = profiles.apply(prof, bytes(apl[start:]), {"header": h})
        return dec.records, b"", False, dec.extra()
    records, mdata, more = _records(apl, start, h, decrypted, ctx, compact)
    found = profiles.augment(h, ci, records, mdata)
    if found is None:
        return records, mdata, more, {}
    return records + found[1].records, mdata, more, found[1].extra()


def _manufacturer_ci(ci: int, data: bytes, pos: int, ctx: Context, link: str,
                     c_field: int | None, address: int | None) -> Telegram:
    """CI 0xA0-0xB7: the manufacturer's own payload, read by a meter profile."""
    from .profiles import read_manufacturer_ci
    prof, dec, hdr = read_manufacturer_ci(ci, bytes(data[pos:]), ctx)
    return Telegram(hdr.get("manufacturer", ""), hdr.get("id", ""), hdr.get("version", 0),
                    hdr.get("device_type", 0), None, None, dec.records, ci, link=link,
                    c_field=c_field, address=address, extra=dec.extra())


def _application_error(ci: int, data: bytes, pos: int, ctx: Context) -> ApplicationError:
    """CI 0x70 (no header), 0x6E (short) or 0x6F (long header): the meter's error code."""
    h = ctx.header
    if ci == CI_APPLICATION_ERROR_LONG:
        _need(data, pos, 12, "long TPL header", h)
        h.update(manufacturer=manufacturer_code(int.from_bytes(data[pos + 4:pos + 6], "little")),
                 id=bcd_id(data[pos:pos + 4]), version=data[pos + 6], device_type=data[pos + 7],
                 access_number=data[pos + 8])
        pos += 12
    elif ci == CI_APPLICATION_ERROR_SHORT:
        _need(data, pos, 4, "short TPL header", h)
        h.update(access_number=data[pos])
        pos += 4
    code = data[pos] if pos < len(data) else None
    reason = "unspecified error" if code is None else APPLICATION_ERRORS.get(code, "reserved")
    shown = "no code" if code is None else f"code {code}"
    return ApplicationError(f"application error ({shown}): {reason} (CI 0x{ci:02X})", h,
                            code=code, reason=reason)


def _records(data: bytes, pos: int, h: dict[str, Any], decrypted: bool,
             ctx: Context | None = None,
             compact: bool = False) -> tuple[list[DataRecord], bytes, bool]:
    """The records of a full frame (whose format is learned when ``ctx.formats`` is set),
    or of a compact frame (decoded with a learned format)."""
    formats = ctx.formats if ctx is not None else None
    try:
        if compact:
            return decode_compact(data, pos, h, formats)
        out = parse_records(data, pos)
        if formats is not None and h.get("id"):
            formats.learn(meter_key(h), out[0])
        return out
    except MBusError as exc:
        exc.header = exc.header or h
        if decrypted:
            exc.args = (f"{exc} (in the payload, which decrypted correctly: not EN 13757-3 "
                        "records, or manufacturer-specific)",)
        raise


def _mode7_key(cfe: int, ctx: Context, kdf_id: bytes | None, data: bytes, ci_pos: int,
               h: dict[str, Any]) -> bytes:
    """Derive Kenc (and check the AFL MAC with Kmac) for security mode 7."""
    kdf = (cfe >> 4) & 0x03
    if kdf != 1:
        raise UnsupportedSecurityError(f"mode 7 key derivation function {kdf} (only KDF-A, 1, "
                                       "is defined)", h)
    afl = ctx.afl
    if afl is None or afl.counter is None:
        raise UnsupportedSecurityError("mode 7 without an AFL message counter: the key "
                                       "cannot be derived", h)
    if kdf_id is None:
        raise UnsupportedSecurityError("mode 7 needs the meter id for key derivation", h)
    assert ctx.key is not None
    kenc = security.oms_kdf(ctx.key, security.KDF_ENC_FROM_METER, afl.counter, kdf_id)
    if afl.mac:
        kmac = security.oms_kdf(ctx.key, security.KDF_MAC_FROM_METER, afl.counter, kdf_id)
        msg = bytes((afl.mcl or 0,)) + afl.counter_raw + afl.ml + bytes(data[ci_pos:])
        if security.aes_cmac(kmac, msg)[:len(afl.mac)] != afl.mac:
            raise AuthError("decrypt failed: mode 7 AES-CMAC does not match (wrong key or "
                            "altered telegram)", h)
    return kenc

"""Wireless M-Bus (EN 13757-4) link layer, ELL and AFL, sans-I/O.

    L C M(2) A(6: id(4) version type) CI ...

Dongles usually deliver frames with the block CRCs removed (then L = length - 1); a frame
that still carries them is recognised by its length (format A) or by its CRC (format B:
block 2 is the CI field and 115 bytes, its CRC at offset 126) and checked. Bytes after the
L field's length are reported as ``trailing_bytes``, not a reason to refuse. After the
DLL: an optional extended link layer (CI 0x8C-0x8F, AES-CTR when its session number says
so), an optional authentication and fragmentation layer (CI 0x90, mode 7 counter and
MAC), then the transport layer decoded by :mod:`.transport`.

Encoding helpers at the end build telegrams for the simulators and tests.
"""

from __future__ import annotations

from typing import Any, Callable, Union

from . import security
from .crc import crc_en13757
from .errors import ChecksumError, DecryptError, FrameError, NoKeyError, TruncatedError, \
    UnsupportedError, UnsupportedSecurityError, guarded
from .tables import (
    AFL_MAC_LENGTH, CI_AFL, CI_ELL_LONG, CI_ELL_LONG_ADDR, CI_ELL_SHORT_ADDR,
    ELL_HEADER_LEN, manufacturer_code, manufacturer_value,
)
from .telegram import Afl, Context, Telegram, bcd_id, dll_header
from .transport import decode_application

KeyLookup = Union[bytes, Callable[[dict[str, Any]], "bytes | None"], None]

# C field values a meter sends (EN 13757-4 Table 10)
C_SND_NR = 0x44
C_SND_IR = 0x46
C_RSP_UD = 0x08

BLOCK1 = 10          # L C M A
BLOCK = 16           # format A data block
FORMAT_B_BLOCK2 = 116  # format B: block 2 = the CI field and 115 bytes, then its CRC


# --------------------------------------------------------------------------- block CRCs

def _format_a_length(l_field: int) -> int:
    data_after_block1 = l_field - 9
    blocks = 1 + (data_after_block1 + BLOCK - 1) // BLOCK
    return 1 + l_field + 2 * blocks


def _strip_format_a(f: bytes) -> bytes:
    out = bytearray()
    pos = 0
    chunk = BLOCK1
    while pos < len(f):
        block = f[pos:pos + chunk]
        crc = f[pos + chunk:pos + chunk + 2]
        if len(crc) != 2:
            raise TruncatedError("format A: last block without its CRC")
        if crc_en13757(block) != int.from_bytes(crc, "big"):
            raise ChecksumError(f"format A: CRC of block at offset {pos} does not match")
        out += block
        pos += chunk + 2
        remaining = len(f) - pos
        chunk = min(BLOCK, remaining - 2)
    out[0] = len(out) - 1
    return bytes(out)


def _strip_format_b(f: bytes) -> bytes:
    """Format B: L counts the CRCs; block 2 = the CI field and up to 115 bytes after block
    1, then the CRC over blocks 1 and 2 (at offset 126 in a long frame); block 3 (if any) =
    the rest, then its own CRC."""
    total = len(f)
    end2 = min(total - 2, BLOCK1 + FORMAT_B_BLOCK2)
    if crc_en13757(f[:end2]) != int.from_bytes(f[end2:end2 + 2], "big"):
        raise ChecksumError("format B: CRC of block 2 does not match")
    out = bytearray(f[:end2])
    if end2 + 2 < total:
        b3 = f[end2 + 2:total - 2]
        if crc_en13757(b3) != int.from_bytes(f[total - 2:], "big"):
            raise ChecksumError("format B: CRC of block 3 does not match")
        out += b3
    out[0] = len(out) - 1
    return bytes(out)


def split_trailing(frame: bytes, fmt: str = "auto") -> tuple[bytes, bytes]:
    """-> (the frame as long as its L field says, the bytes after it).

    Receivers append bytes (RSSI, a CRC, padding) or deliver one byte too many; the
    telegram is still whole, so the extra bytes are reported, not a reason to refuse it.
    """
    f = bytes(frame)
    if len(f) < BLOCK1 + 1:
        return f, b""
    lf = f[0]
    a_len = _format_a_length(lf)
    if fmt == "A" or (fmt == "auto" and len(f) >= a_len):
        if fmt == "auto" and len(f) > a_len:
            try:
                _strip_format_a(f[:a_len])
            except FrameError:
                return f[:lf + 1], f[lf + 1:]
        return f[:a_len], f[a_len:]
    return f[:lf + 1], f[lf + 1:]


def strip_crc(frame: bytes, fmt: str = "auto") -> tuple[bytes, str]:
    """-> (frame without block CRCs and with L = length - 1, "A" | "B" | "none").

    ``fmt`` "auto" tells the three apart by length (format A adds 2 bytes per block; a
    stripped frame and a format B frame both have L = length - 1, and a format B frame is
    recognised by a matching CRC). Bytes after the L field's length: see
    :func:`split_trailing`.
    """
    f = bytes(frame)
    if len(f) < BLOCK1 + 1:
        raise TruncatedError(f"a wM-Bus frame needs at least 11 bytes, got {len(f)}")
    lf = f[0]
    if lf < BLOCK1:
        raise FrameError(f"L field {lf} is too small for a wM-Bus frame")
    if fmt == "none":
        if len(f) < lf + 1:
            raise TruncatedError(f"L field says {lf + 1} bytes, got {len(f)}")
        if len(f) > lf + 1:
            raise FrameError(f"{len(f) - lf - 1} bytes after the frame's L field length")
        return f, "none"
    if fmt == "A" or (fmt == "auto" and len(f) == _format_a_length(lf)):
        if len(f) != _format_a_length(lf):
            if len(f) < _format_a_length(lf):
                raise TruncatedError(f"format A: L={lf} needs {_format_a_length(lf)} bytes, "
                                     f"got {len(f)}")
            raise FrameError(f"format A: L={lf} needs {_format_a_length(lf)} bytes, got {len(f)}")
        return _strip_format_a(f), "A"
    if fmt == "B":
        if len(f) != lf + 1:
            raise (TruncatedError if len(f) < lf + 1 else FrameError)(
                f"format B: L field says {lf + 1} bytes, got {len(f)}")
        return _strip_format_b(f), "B"
    if fmt != "auto":
        raise ValueError(f"frame format is auto, A, B or none, not {fmt!r}")
    if len(f) < lf + 1:
        raise TruncatedError(f"L field says {lf + 1} bytes, got {len(f)} (truncated telegram)")
    if len(f) > lf + 1:
        raise FrameError(f"{len(f) - lf - 1} bytes more than the L field says")
    try:
        return _strip_format_b(f), "B"
    except ChecksumError:
        pass
    # Some receivers strip every block CRC but the last one (and count it in L).
    body = f[:-2]
    last = BLOCK1 + ((len(body) - BLOCK1 - 1) // BLOCK) * BLOCK if len(body) > BLOCK1 else 0
    if last and crc_en13757(body[last:]) == int.from_bytes(f[-2:], "big"):
        return bytes((len(body) - 1,)) + body[1:], "A-last"
    return f, "none"


# --------------------------------------------------------------------------- decoding

def _ell_payload(buf: bytes, pos: int, k: bytes | None, m_field: bytes, a_field: bytes,
                 cc: int, ell: dict[str, Any], header: dict[str, Any],
                 extra: dict[str, Any]) -> tuple[bytes, int]:
    """A long ELL's session number and payload: decrypted (AES-CTR) when it says so and its
    CRC checked; returns the payload and the offset of its CI field."""
    sn = buf[pos - 4:pos]
    sn_value = int.from_bytes(sn, "little")
    enc = sn_value >> 29
    ell["session"] = sn_value & 0x1FFFFFFF
    ell["encryption"] = enc
    if pos + 2 > len(buf):
        raise TruncatedError("ELL payload CRC missing", header)
    if enc == 0:
        payload = buf[pos:]
    elif enc == 1:
        if k is None:
            clear = bytes(buf[pos:])
            if int.from_bytes(clear[:2], "little") != crc_en13757(clear[2:]):
                raise NoKeyError("ELL payload is AES-CTR encrypted and no key is "
                                 "configured for this meter", header)
            # its CRC holds in clear: stored already decrypted
            payload = clear
            extra["not_encrypted"] = True
        elif len(k) != 16:
            raise DecryptError("decrypt failed: the ELL is AES-128 and needs a "
                               f"16-byte key, the configured key has {len(k)}", header)
        else:
            iv = security.ell_iv(m_field, a_field, cc, sn)
            payload = security.aes_ctr(k, iv, bytes(buf[pos:]))
    else:
        raise UnsupportedSecurityError(f"ELL encryption {enc} is not supported", header)
    crc = int.from_bytes(payload[:2], "little")
    if crc != crc_en13757(payload[2:]):
        if enc and k is not None:
            raise DecryptError("decrypt failed: ELL payload CRC does not match after "
                               "AES-CTR (wrong key?)", header)
        raise ChecksumError("ELL payload CRC does not match", header)
    return payload, 2


@guarded
def decode_wmbus(frame: bytes, key: KeyLookup = None, *, fmt: str = "auto",
                 formats: Any = None) -> Telegram:
    """Decode one wM-Bus frame as a dongle delivers it (starting with the L field).

    ``key``: the meter's AES key, or a function from the DLL header dict (manufacturer,
    id, version, device_type) to its key or None. ``formats``: the listening session's
    :class:`.compact.Formats` (full frames teach it, compact frames use it), or None.
    """
    raw, trailing = split_trailing(bytes(frame), fmt)
    try:
        f, used = strip_crc(raw, fmt)
    except (FrameError, TruncatedError) as exc:
        exc.header = dll_header(raw) if len(raw) >= BLOCK1 else {}
        raise
    header = dll_header(f)
    dll_id, dll_mfr = header["id"], header["manufacturer"]
    c_field = f[1]
    k = key(dict(header)) if callable(key) else key
    m_field, a_field = f[2:4], f[4:10]
    extra: dict[str, Any] = {"frame_format": used}
    if trailing:
        extra["trailing_bytes"] = trailing.hex().upper()
    buf, pos = f, BLOCK1
    if pos >= len(buf):
        raise TruncatedError("no CI field after the link-layer header", header)
    ci = buf[pos]
    pos += 1
    ell_acc = None
    if ci in ELL_HEADER_LEN:
        n = ELL_HEADER_LEN[ci]
        if pos + n > len(buf):
            raise TruncatedError(f"ELL 0x{ci:02X} needs {n} bytes", header)
        cc, ell_acc = buf[pos], buf[pos + 1]
        ell: dict[str, Any] = {"ci": f"0x{ci:02X}", "cc": f"0x{cc:02X}", "acc": ell_acc}
        if ci in (CI_ELL_SHORT_ADDR, CI_ELL_LONG_ADDR):
            ell["receiver"] = {**dll_header(b"\x00\x00" + buf[pos + 2:pos + 10])}
        pos += n
        if ci in (CI_ELL_LONG, CI_ELL_LONG_ADDR):
            buf, pos = _ell_payload(buf, pos, k, m_field, a_field, cc, ell, header, extra)
        extra["ell"] = ell
        if pos >= len(buf):
            raise TruncatedError("no CI field after the ELL", header)
        ci = buf[pos]
        pos += 1
    afl = None
    if ci == CI_AFL:
        afl, pos = _parse_afl(buf, pos, header)
        extra["afl"] = {"fcl": f"0x{afl.fcl:04X}", "counter": afl.counter}
        if pos >= len(buf):
            raise TruncatedError("no CI field after the AFL", header)
        ci = buf[pos]
        pos += 1
    ctx = Context(header=header, m_field=bytes(m_field), a_field=bytes(a_field), key=k,
                  afl=afl, formats=formats)
    t = decode_application(ci, buf, pos, ctx, link="wireless", c_field=c_field)
    if t.access_number is None and ell_acc is not None:
        t.access_number = ell_acc
    if dll_id != t.id or dll_mfr != t.manufacturer:
        extra["dll"] = dll_header(f)
    t.extra.update(extra)
    return t


def decode_session(frames: list[bytes], key: KeyLookup = None, *, fmt: str = "auto",
                   formats: Any = None) -> list[Any]:
    """Telegrams in the order heard, as one listening session: a compact frame after its
    meter's full frame decodes. Each item is a Telegram or the MBusError it raised."""
    from .compact import Formats
    from .errors import MBusError
    formats = Formats() if formats is None else formats
    out: list[Any] = []
    for f in frames:
        try:
            out.append(decode_wmbus(f, key, fmt=fmt, formats=formats))
        except MBusError as exc:
            out.append(exc)
    return out


def _parse_afl(buf: bytes, pos: int, header: dict[str, Any]) -> tuple[Afl, int]:
    """AFL (EN 13757-7 6): length, FCL, then MCL, KI, MCR, MAC, ML as FCL announces."""
    if pos + 3 > len(buf):
        raise TruncatedError("AFL header truncated", header)
    afll = buf[pos]
    end = pos + 1 + afll
    if end > len(buf):
        raise TruncatedError(f"AFL length {afll} runs past the frame", header)
    fcl = int.from_bytes(buf[pos + 1:pos + 3], "little")
    p = pos + 3
    afl = Afl(fcl)
    if fcl & 0x4000 or (fcl & 0xFF) > 1:
        raise UnsupportedError("fragmented messages (AFL more-fragments) are not supported",
                               header)

    def take(n: int, what: str) -> bytes:
        nonlocal p
        if p + n > end:
            raise TruncatedError(f"AFL {what} runs past the AFL length", header)
        v = bytes(buf[p:p + n])
        p += n
        return v

    if fcl & 0x2000:
        afl.mcl = take(1, "MCL")[0]
    if fcl & 0x0200:
        afl.ki = int.from_bytes(take(2, "KI"), "little")
    if fcl & 0x0800:
        afl.counter_raw = take(4, "MCR")
        afl.counter = int.from_bytes(afl.counter_raw, "little")
    if fcl & 0x0400:
        at = (afl.mcl or 0) & 0x0F
        n = AFL_MAC_LENGTH.get(at)
        if n is None:
            raise UnsupportedSecurityError(f"AFL authentication type {at} is not supported",
                                           header)
        afl.mac = take(n, "MAC")
    if fcl & 0x1000:
        afl.ml = take(2, "ML")
    return afl, end


# --------------------------------------------------------------------------- encoding

def dll(c: int, manufacturer: str, ident: str, version: int, device_type: int) -> bytes:
    """C M A of a link-layer header (the L field is added by :func:`finish`)."""
    return (bytes((c,)) + manufacturer_value(manufacturer).to_bytes(2, "little")
            + bytes.fromhex(ident)[::-1] + bytes((version, device_type)))


def finish(body: bytes) -> bytes:
    """Prefix the L field: a CRC-stripped frame as dongles deliver it."""
    if len(body) > 255:
        raise ValueError("wM-Bus frame longer than 255 bytes")
    return bytes((len(body),)) + body


def tpl_short(access: int, status: int, config: int) -> bytes:
    return bytes((0x7A, access, status)) + config.to_bytes(2, "little")


def encrypt_mode5(key: bytes, m_field: bytes, a_field: bytes, access: int,
                  apl: bytes) -> tuple[int, bytes]:
    """-> (configuration word, encrypted payload) for security mode 5 (2F2F + fill)."""
    plain = b"\x2f\x2f" + apl
    plain += b"\x2f" * (-len(plain) % 16)
    blocks = len(plain) // 16
    if blocks > 15:
        raise ValueError("mode 5 encrypts at most 15 blocks")
    cw = (5 << 8) | (blocks << 4)
    return cw, security.aes_cbc_encrypt(key, security.mode5_iv(m_field, a_field, access), plain)


def encode_wmbus(manufacturer: str, ident: str, version: int, device_type: int, apl: bytes,
                 *, access: int = 0, status: int = 0, key: bytes | None = None, mode: int = 0,
                 counter: int = 0, c: int = C_SND_NR) -> bytes:
    """A CRC-stripped SND_NR with a short TPL header, security mode 0, 5 or 7."""
    head = dll(c, manufacturer, ident, version, device_type)
    m_field, a_field = head[1:3], head[3:9]
    if mode == 0:
        return finish(head + tpl_short(access, status, 0) + apl)
    if key is None:
        raise ValueError("an encrypted telegram needs a key")
    if mode == 5:
        cw, enc = encrypt_mode5(key, m_field, a_field, access, apl)
        return finish(head + tpl_short(access, status, cw) + enc)
    if mode == 7:
        plain = b"\x2f\x2f" + apl
        plain += b"\x2f" * (-len(plain) % 16)
        blocks = len(plain) // 16
        kenc = security.oms_kdf(key, security.KDF_ENC_FROM_METER, counter, a_field[:4])
        kmac = security.oms_kdf(key, security.KDF_MAC_FROM_METER, counter, a_field[:4])
        tpl = tpl_short(access, status, (7 << 8) | (blocks << 4)) + bytes((0x10,))  # KDF-A
        tpl += security.aes_cbc_encrypt(kenc, b"\x00" * 16, plain)
        mcl = 0x25  # AT=5 (CMAC, 8 bytes), message counter present
        counter_raw = counter.to_bytes(4, "little")
        mac = security.aes_cmac(kmac, bytes((mcl,)) + counter_raw + tpl)[:8]
        fcl = 0x2000 | 0x0800 | 0x0400
        afl_body = fcl.to_bytes(2, "little") + bytes((mcl,)) + counter_raw + mac
        return finish(head + bytes((CI_AFL, len(afl_body))) + afl_body + tpl)
    raise ValueError(f"cannot encode security mode {mode}")


def encode_ell_ctr(manufacturer: str, ident: str, version: int, device_type: int,
                   payload: bytes, *, key: bytes, cc: int = 0x20, acc: int = 0,
                   session: int = 0, c: int = C_SND_NR) -> bytes:
    """A CI 0x8D telegram whose ``payload`` (starting with its own CI) is AES-CTR encrypted."""
    head = dll(c, manufacturer, ident, version, device_type)
    sn = ((1 << 29) | (session & 0x1FFFFFFF)).to_bytes(4, "little")
    plain = crc_en13757(payload).to_bytes(2, "little") + payload
    enc = security.aes_ctr(key, security.ell_iv(head[1:3], head[3:9], cc, sn), plain)
    return finish(head + bytes((CI_ELL_LONG, cc, acc)) + sn + enc)


def add_crc(frame: bytes, fmt: str = "A") -> bytes:
    """Insert block CRCs into a CRC-stripped frame, as the radio sends it."""
    f = bytes(frame)
    if fmt == "A":
        out = bytearray((len(f) - 1,)) + f[1:BLOCK1]
        out += crc_en13757(bytes(out)).to_bytes(2, "big")
        for i in range(BLOCK1, len(f), BLOCK):
            block = f[i:i + BLOCK]
            out += block + crc_en13757(block).to_bytes(2, "big")
        return bytes(out)
    if fmt == "B":
        body = bytearray(f)
        n = len(body)
        if n <= BLOCK1 + FORMAT_B_BLOCK2:
            body[0] = n - 1 + 2
            return bytes(body) + crc_en13757(bytes(body)).to_bytes(2, "big")
        body[0] = n - 1 + 4
        b12 = bytes(body[:BLOCK1 + FORMAT_B_BLOCK2])
        b3 = bytes(body[BLOCK1 + FORMAT_B_BLOCK2:])
        return (b12 + crc_en13757(b12).to_bytes(2, "big") + b3
                + crc_en13757(b3).to_bytes(2, "big"))
    raise ValueError(f"frame format A or B, not {fmt!r}")

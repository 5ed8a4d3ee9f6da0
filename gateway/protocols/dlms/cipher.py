"""general-glo-ciphering (DLMS Green Book §9.2.7, security suite 0: AES-GCM-128), done
with the ``cryptography`` package.

gurux's own GCM is pure Python (≈570 notifications/s here); OpenSSL's is two orders of
magnitude faster, so push decoding decrypts here and hands gurux only the plaintext.

    DB | len(ST)=08 | system title (8) | length | SC | IC (4, big endian) | ciphertext | tag (12)

IV = system title || invocation counter. SC bit 4 = authenticated, bit 5 = encrypted; for
authenticated modes the AAD is SC || authentication key (|| plaintext when only
authenticated). The tag is truncated to 12 bytes.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.exceptions import InvalidTag

from . import DecryptError, DlmsError

GENERAL_GLO_CIPHERING: Final = 0xDB
GENERAL_DED_CIPHERING: Final = 0xDC
SC_AUTHENTICATED: Final = 0x10
SC_ENCRYPTED: Final = 0x20
SC_BROADCAST: Final = 0x40
SC_COMPRESSED: Final = 0x80
TAG_LEN: Final = 12


@dataclass(frozen=True, slots=True)
class GloCiphered:
    """A parsed general-glo-ciphering APDU (still encrypted)."""

    system_title: bytes
    security_control: int
    invocation_counter: int
    payload: bytes  # ciphertext || tag (or plaintext || tag, or plaintext)

    @property
    def suite(self) -> int:
        return self.security_control & 0x0F

    def serialize(self) -> bytes:
        content = bytes([self.security_control]) + self.invocation_counter.to_bytes(4, "big") \
            + self.payload
        return bytes([GENERAL_GLO_CIPHERING, len(self.system_title)]) + self.system_title \
            + encode_length(len(content)) + content


def encode_length(n: int) -> bytes:
    """A-XDR length: one byte below 128, else 0x81/0x82/0x84 + big-endian length."""
    if n < 0x80:
        return bytes([n])
    for size, tag in ((1, 0x81), (2, 0x82), (4, 0x84)):
        if n < 1 << (8 * size):
            return bytes([tag]) + n.to_bytes(size, "big")
    raise ValueError(f"length {n} too large")


def decode_length(data: bytes, pos: int) -> tuple[int, int]:
    """(length, position after it) of an A-XDR length at ``pos``."""
    if pos >= len(data):
        raise DlmsError("APDU truncated in a length field")
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    size = first & 0x7F
    if size not in (1, 2, 4) or pos + 1 + size > len(data):
        raise DlmsError(f"bad A-XDR length prefix {first:02X}")
    return int.from_bytes(data[pos + 1:pos + 1 + size], "big"), pos + 1 + size


def parse_glo(apdu: bytes) -> GloCiphered:
    """Parse (not decrypt) a general-glo-ciphering APDU. Raises DlmsError."""
    apdu = bytes(apdu)
    if not apdu or apdu[0] != GENERAL_GLO_CIPHERING:
        raise DlmsError(f"not a general-glo-ciphering APDU (tag {apdu[:1].hex() or 'none'})")
    if len(apdu) < 2:
        raise DlmsError("general-glo-ciphering APDU truncated")
    st_len = apdu[1]
    if st_len != 8 or len(apdu) < 2 + st_len:
        raise DlmsError(f"system title must be 8 bytes, got {st_len}")
    st = apdu[2:2 + st_len]
    n, pos = decode_length(apdu, 2 + st_len)
    if pos + n != len(apdu):
        raise DlmsError(f"ciphered content length {n} does not match the {len(apdu) - pos} "
                        "bytes present")
    if n < 5:
        raise DlmsError("ciphered content shorter than security control + invocation counter")
    sc = apdu[pos]
    if sc & SC_COMPRESSED:
        raise DlmsError("compressed ciphered APDUs are not supported")
    if sc & 0x0F:
        raise DlmsError(f"security suite {sc & 0x0F} is not supported (only suite 0)")
    ic = int.from_bytes(apdu[pos + 1:pos + 5], "big")
    payload = apdu[pos + 5:]
    if sc & SC_AUTHENTICATED and len(payload) < TAG_LEN:
        raise DlmsError("authenticated APDU shorter than its 12-byte tag")
    return GloCiphered(st, sc, ic, payload)


def _iv(system_title: bytes, ic: int) -> bytes:
    return system_title + ic.to_bytes(4, "big")


def decrypt(g: GloCiphered, block_key: bytes, auth_key: bytes | None = None) -> bytes:
    """The plaintext APDU. Raises DecryptError if the tag does not verify."""
    sc = g.security_control & 0x30
    if len(block_key) != 16:
        raise ValueError("block cipher key must be 16 bytes (suite 0)")
    iv = _iv(g.system_title, g.invocation_counter)
    aad_head = bytes([g.security_control]) + (auth_key or b"")
    if sc == SC_AUTHENTICATED | SC_ENCRYPTED:
        ct, tag = g.payload[:-TAG_LEN], g.payload[-TAG_LEN:]
        dec = Cipher(algorithms.AES(block_key), modes.GCM(iv, tag, min_tag_length=TAG_LEN)).decryptor()
        dec.authenticate_additional_data(aad_head)
        try:
            return dec.update(ct) + dec.finalize()
        except InvalidTag:
            raise DecryptError("authentication tag mismatch: wrong key or system title, "
                               "or the frame was altered") from None
    if sc == SC_ENCRYPTED:
        # GCM without a tag is AES-CTR starting at counter block IV || 00000002.
        dec = Cipher(algorithms.AES(block_key), modes.CTR(iv + b"\x00\x00\x00\x02")).decryptor()
        return dec.update(g.payload) + dec.finalize()
    if sc == SC_AUTHENTICATED:
        pt, tag = g.payload[:-TAG_LEN], g.payload[-TAG_LEN:]
        if not hmac.compare_digest(_gmac(block_key, iv, aad_head + pt), tag):
            raise DecryptError("authentication tag mismatch: wrong key or system title, "
                               "or the frame was altered")
        return pt
    return g.payload


def encrypt(plaintext: bytes, system_title: bytes, invocation_counter: int, block_key: bytes,
            auth_key: bytes | None = None, security_control: int = 0x30) -> GloCiphered:
    """Cipher ``plaintext`` (used by the push simulator and the tests)."""
    iv = _iv(system_title, invocation_counter)
    aad_head = bytes([security_control]) + (auth_key or b"")
    sc = security_control & 0x30
    if sc == SC_AUTHENTICATED | SC_ENCRYPTED:
        enc = Cipher(algorithms.AES(block_key), modes.GCM(iv)).encryptor()
        enc.authenticate_additional_data(aad_head)
        payload = enc.update(plaintext) + enc.finalize() + enc.tag[:TAG_LEN]
    elif sc == SC_ENCRYPTED:
        enc = Cipher(algorithms.AES(block_key), modes.CTR(iv + b"\x00\x00\x00\x02")).encryptor()
        payload = enc.update(plaintext) + enc.finalize()
    elif sc == SC_AUTHENTICATED:
        payload = plaintext + _gmac(block_key, iv, aad_head + plaintext)
    else:
        payload = plaintext
    return GloCiphered(system_title, security_control, invocation_counter, payload)


def _gmac(key: bytes, iv: bytes, aad: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(aad)
    enc.finalize()
    return enc.tag[:TAG_LEN]

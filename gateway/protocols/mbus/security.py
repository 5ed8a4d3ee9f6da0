"""AES for wM-Bus/OMS: TPL security modes 5 and 7, the ELL's AES-CTR, OMS key derivation
and AES-CMAC. Thin wrappers over ``cryptography``; nothing here knows about frames.

Mode 5 (EN 13757-7 9.4.4): AES-128-CBC, IV = M(2) | A(6) | 8 x access number.
Mode 7 (EN 13757-7 9.4.5, OMS Vol. 2 9.5): AES-128-CBC with a zero IV, under an ephemeral
key Kenc = CMAC(K, 0x00 | counter(4, LE) | meter id(4) | 0x07 x 7); the AFL MAC uses
Kmac = the same with 0x01, and is CMAC(Kmac, MCL | counter | [ML] | TPL..end) truncated.
ELL (EN 13757-4 13.2.6): AES-128-CTR, IV = M | A | CC | SN(4) | FN(2)=0 | BC=0.
Modes 2/3 (EN 13757-3:2004, deprecated): DES-CBC of older meters, mode 2 with a zero IV,
mode 3 with IV = M(2) | A(6); an 8-byte key (single DES as TripleDES with the key thrice).
"""

from __future__ import annotations

import threading
from typing import Any

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KDF_ENC_FROM_METER = 0x00
KDF_MAC_FROM_METER = 0x01


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 16:
        raise ValueError("an AES-128 key is 16 bytes")


_local = threading.local()


def _ecb_decryptor(key: bytes) -> Any:
    """One AES-ECB decryption context per key and thread, reused across telegrams: a meter
    sends with the same key for years, and building a cipher costs more than decrypting."""
    cache = getattr(_local, "ecb", None)
    if cache is None:
        cache = _local.ecb = {}
    ctx = cache.get(key)
    if ctx is None:
        _check_key(key)
        if len(cache) >= 1024:
            cache.clear()
        ctx = cache[key] = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    return ctx


def aes_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """CBC decryption as ECB of every block XOR the previous ciphertext block (or IV)."""
    if len(data) % 16 or len(iv) != 16:
        raise ValueError("CBC works on whole 16-byte blocks with a 16-byte IV")
    plain = _ecb_decryptor(bytes(key)).update(data)
    chain = bytes(iv) + data[:-16]
    return (int.from_bytes(plain, "big") ^ int.from_bytes(chain, "big")).to_bytes(len(data), "big")


def aes_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    _check_key(key)
    e = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return e.update(data) + e.finalize()


def aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """CTR is its own inverse: encrypts and decrypts."""
    _check_key(key)
    c = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return c.update(data) + c.finalize()


def aes_cmac(key: bytes, data: bytes) -> bytes:
    _check_key(key)
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def _triple_des() -> Any:
    try:  # cryptography >= 43 keeps the old ciphers in "decrepit"
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # pragma: no cover - older cryptography
        TripleDES = algorithms.TripleDES  # type: ignore[attr-defined]
    return TripleDES


def _des_key(key: bytes) -> bytes:
    if len(key) != 8:
        raise ValueError("a DES key is 8 bytes")
    return bytes(key) * 3  # K1 = K2 = K3: single DES


def des_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    if len(data) % 8 or len(iv) != 8:
        raise ValueError("DES-CBC works on whole 8-byte blocks with an 8-byte IV")
    d = Cipher(_triple_des()(_des_key(key)), modes.CBC(bytes(iv))).decryptor()
    return d.update(bytes(data)) + d.finalize()


def des_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    e = Cipher(_triple_des()(_des_key(key)), modes.CBC(bytes(iv))).encryptor()
    return e.update(bytes(data)) + e.finalize()


def des_iv(m_field: bytes, a_field: bytes) -> bytes:
    return bytes(m_field) + bytes(a_field)


def mode5_iv(m_field: bytes, a_field: bytes, access_number: int) -> bytes:
    return bytes(m_field) + bytes(a_field) + bytes((access_number,)) * 8


def ell_iv(m_field: bytes, a_field: bytes, cc: int, sn: bytes) -> bytes:
    return bytes(m_field) + bytes(a_field) + bytes((cc,)) + bytes(sn) + b"\x00\x00\x00"


def oms_kdf(key: bytes, constant: int, counter: int, meter_id: bytes) -> bytes:
    """OMS KDF-A: CMAC(K, DC | C(4, LE) | ID(4) | 0x07 * 7)."""
    if len(meter_id) != 4:
        raise ValueError("the KDF takes the 4-byte meter id")
    msg = bytes((constant,)) + counter.to_bytes(4, "little") + bytes(meter_id) + b"\x07" * 7
    return aes_cmac(key, msg)

"""Generic COSE_Sign1 (RFC 9052) with EdDSA/Ed25519 over a CBOR payload, for downlink
commands and release manifests.

The byte layout is the uplink envelope's (same helpers, imported from it), so one COSE
implementation is audited, not two::

    18([ h'A10127' ({1: -8}), {4: kid}, payload bstr, signature bstr ])

Here ``kid`` is a key fingerprint, not a gateway id: the first 8 bytes of the SHA-256 of the
raw 32-byte public key. Config files then just list public key files; nothing needs naming.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.uplink.envelope import (  # the shared COSE_Sign1 primitives
    COSE_PROTECTED,
    SIG1_PREFIX,
    COSE_SIGN1_TAG,
    bstr_head,
    loads_exact,
    split_cose,
)

MAX_MESSAGE = 64 * 1024  # a command or manifest is small; refuse to parse anything bigger


class CoseError(ValueError):
    """Base of every verification failure; ``reason`` is a stable machine-readable word."""

    reason = "malformed"


class Malformed(CoseError):
    reason = "malformed"


class UnknownKey(CoseError):
    reason = "unknown_key"


class BadSignature(CoseError):
    reason = "bad_signature"


def key_id(pub: Ed25519PublicKey) -> bytes:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:8]


def keyring(keys: Iterable[Ed25519PublicKey]) -> dict[bytes, Ed25519PublicKey]:
    return {key_id(k): k for k in keys}


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM, DER or the raw 32 bytes."""
    data = Path(path).read_bytes()
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    key = (serialization.load_pem_public_key(data) if data.lstrip().startswith(b"-----")
           else serialization.load_der_public_key(data))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def sign1(payload_obj: Any, key: Ed25519PrivateKey) -> bytes:
    """COSE_Sign1 of ``cbor(payload_obj)`` with kid = the key's fingerprint."""
    payload = cbor2.dumps(payload_obj, canonical=True)
    signature = key.sign(SIG1_PREFIX + bstr_head(len(payload)) + payload)
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [
        COSE_PROTECTED, {4: key_id(key.public_key())}, payload, signature]))


def verify1(data: bytes, trusted: Mapping[bytes, Ed25519PublicKey]) -> tuple[bytes, Any]:
    """Verify and return (kid, decoded payload). Raises only CoseError, whatever the input."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_MESSAGE:
        raise Malformed(f"not a signed message of at most {MAX_MESSAGE} bytes")
    try:
        protected, unprotected, payload, signature = split_cose(bytes(data))
        kid = unprotected.get(4)
        if protected != COSE_PROTECTED:
            raise Malformed("unsupported protected header; need alg EdDSA")
        if type(kid) is not bytes:
            raise Malformed("missing kid")
    except CoseError:
        raise
    except Exception as e:  # noqa: BLE001 - random input may raise anything (EnvelopeError too)
        raise Malformed(f"not a COSE_Sign1 message: {e}") from None
    pub = trusted.get(kid)
    if pub is None:
        raise UnknownKey(f"no trusted key with id {kid.hex()}")
    try:
        pub.verify(signature, SIG1_PREFIX + bstr_head(len(payload)) + payload)
    except InvalidSignature:
        raise BadSignature(f"signature by key {kid.hex()} does not verify") from None
    try:
        return kid, loads_exact(payload)
    except Exception as e:  # noqa: BLE001
        raise Malformed(f"signed payload is not CBOR: {e}") from None

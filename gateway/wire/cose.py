"""COSE_Sign1 (RFC 9052) with EdDSA/Ed25519: the one implementation of the signed-message
layout, for the uplink envelope and for the fleet's commands and release manifests::

    18([ h'A10127' ({1: -8}), {4: kid}, payload bstr, signature bstr ])

signed over ``["Signature1", protected, h'', payload]``. :func:`sign` writes it,
:func:`parse` reads its structure and :meth:`Sign1.verified_by` checks its signature; what a
kid names is the caller's: the envelope's kid is the gateway id (UTF-8,
:mod:`gateway.wire.envelope`), the fleet's is a key fingerprint (:func:`sign1`/:func:`verify1`
here: the first 8 bytes of the SHA-256 of the raw public key, so config files just list public
key files and nothing needs naming).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .cbor import bstr_head, loads_exact
from .errors import BadSignature, MalformedEnvelope, UnknownSigner

COSE_SIGN1_TAG = 18
COSE_PROTECTED = cbor2.dumps({1: -8})  # alg: EdDSA
SIG1_PREFIX = b"\x84\x6aSignature1" + cbor2.dumps(COSE_PROTECTED) + b"\x40"  # array(4), ctx, prot, aad
MAX_MESSAGE = 64 * 1024  # a command or manifest is small; refuse to parse anything bigger


def to_be_signed(payload: bytes) -> bytes:
    """The Sig_structure over ``payload`` (what the signature covers)."""
    return SIG1_PREFIX + bstr_head(len(payload)) + payload


def sign(payload: bytes, kid: bytes, key: Ed25519PrivateKey) -> bytes:
    """The COSE_Sign1 of ``payload`` (already encoded) under ``kid``; built from cached
    pieces, byte for byte what cbor2 would encode."""
    signature = key.sign(to_be_signed(payload))
    return b"".join((_head(kid), bstr_head(len(payload)), payload,
                     bstr_head(len(signature)), signature))


@functools.lru_cache(maxsize=16)
def _head(kid: bytes) -> bytes:
    """Tag 18, array(4), the protected and unprotected headers: the same for every message."""
    return b"\xd2\x84" + cbor2.dumps(COSE_PROTECTED) + cbor2.dumps({4: kid})


@dataclass(frozen=True, slots=True)
class Sign1:
    """A structurally sound COSE_Sign1, not verified yet."""

    protected: bytes
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes

    @property
    def kid(self) -> Any:
        """The raw kid header (any CBOR value: the caller checks its type)."""
        return self.unprotected.get(4)

    @property
    def eddsa(self) -> bool:
        """The protected header is exactly alg EdDSA (the only one accepted)."""
        return self.protected == COSE_PROTECTED

    def verified_by(self, pub: Ed25519PublicKey) -> bool:
        try:
            pub.verify(self.signature, to_be_signed(self.payload))
        except InvalidSignature:
            return False
        return True


def parse(data: bytes) -> Sign1:
    """The four members of a tagged COSE_Sign1. Raises MalformedEnvelope on a wrong
    structure; undecodable CBOR may raise anything (callers wrap it with their context)."""
    obj = loads_exact(data)
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != COSE_SIGN1_TAG:
        raise MalformedEnvelope("not a tagged COSE_Sign1")
    v = obj.value
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise MalformedEnvelope("COSE_Sign1 must be an array of 4")
    protected, unprotected, payload, signature = v
    if not (type(protected) is bytes and isinstance(unprotected, Mapping)
            and type(payload) is bytes and type(signature) is bytes):
        raise MalformedEnvelope("COSE_Sign1 member types")
    return Sign1(protected, unprotected, payload, signature)


# ------------------------------------------------------- keys named by their fingerprint


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
    return sign(cbor2.dumps(payload_obj, canonical=True), key_id(key.public_key()), key)


def verify1(data: bytes, trusted: Mapping[bytes, Ed25519PublicKey]) -> tuple[bytes, Any]:
    """Verify a fingerprint-kid message and return (kid, decoded payload). Raises only
    WireError (``reason``: malformed, unknown_key, bad_signature), whatever the input."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_MESSAGE:
        raise MalformedEnvelope(f"not a signed message of at most {MAX_MESSAGE} bytes")
    try:
        msg = parse(bytes(data))
        kid = msg.kid
    except Exception as e:  # noqa: BLE001 - random input may raise anything
        raise MalformedEnvelope(f"not a COSE_Sign1 message: {e}") from None
    if not msg.eddsa:
        raise MalformedEnvelope("unsupported protected header; need alg EdDSA")
    if type(kid) is not bytes:
        raise MalformedEnvelope("missing kid")
    pub = trusted.get(kid)
    if pub is None:
        raise UnknownSigner(f"no trusted key with id {kid.hex()}")
    if not msg.verified_by(pub):
        raise BadSignature(f"signature by key {kid.hex()} does not verify")
    try:
        return kid, loads_exact(msg.payload)
    except Exception as e:  # noqa: BLE001
        raise MalformedEnvelope(f"signed payload is not CBOR: {e}") from None


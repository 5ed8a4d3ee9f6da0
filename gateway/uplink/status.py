"""Signed status documents: the retained birth, the shutdown notice and the LWT.

The status stays a JSON object a person (or ``mosquitto_sub``) can read, with the fields the
README names (``state``, ``gateway``, ``ts_ms``, ``firmware``, ``epoch``, ``config_hash``,
``board``, ``reason``), plus ``sig``: the base64url (no padding) Ed25519 signature, by the
gateway's envelope signing key, of::

    b"meter-gateway status v1\\0" + canonical JSON of the object without "sig"

where canonical JSON is keys sorted, no whitespace (``","`` and ``":"``), UTF-8, non-ASCII
not escaped. The signer is named by the signed ``gateway`` field, so :func:`verify_status`
needs the same trusted-key map as :func:`~gateway.wire.envelope.decode_envelope`; it raises
only :class:`~gateway.wire.errors.WireError` subclasses.

The LWT is signed when the connection is made (the broker publishes it later, unchanged): its
``ts_ms`` is that of the connect, not of the loss. A signature proves who wrote a status,
not that it is fresh: the broker ACL (only the gateway's own certificate may publish on its
status topic) keeps others from replaying an old one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..wire.envelope import WILDCARD
from ..wire.errors import BadSignature, MalformedEnvelope, UnknownSigner

STATUS_CONTEXT = b"meter-gateway status v1\x00"
_MAX_STATUS = 64 * 1024


def canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def sign_status(doc: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The payload to publish: doc (which must name its ``gateway``) with its ``sig``."""
    if type(doc.get("gateway")) is not str or "sig" in doc:
        raise ValueError("a status names its gateway and has no sig of its own")
    sig = key.sign(STATUS_CONTEXT + canonical(doc))
    return canonical({**doc, "sig": base64.urlsafe_b64encode(sig).rstrip(b"=").decode()})


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:  # two readings of one document: refuse rather than pick one
            raise MalformedEnvelope(f"status: duplicate key {k!r}")
        out[k] = v
    return out


def verify_status(payload: bytes, trusted: Mapping[str, Ed25519PublicKey],
                  gateway_id: str | None = None) -> dict[str, Any]:
    """Check a status payload and return its fields (without ``sig``).

    ``gateway_id``, when given (the id in the topic it came on), must be the signer.
    Raises MalformedEnvelope, UnknownSigner or BadSignature, whatever the input."""
    if type(payload) is not bytes or len(payload) > _MAX_STATUS:
        raise MalformedEnvelope("status: not bytes, or too large")
    try:
        doc = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_refuse_constant)
    except MalformedEnvelope:
        raise
    except (ValueError, RecursionError) as exc:
        raise MalformedEnvelope(f"status: not JSON: {exc}") from None
    if type(doc) is not dict:
        raise MalformedEnvelope("status: not a JSON object")
    sig_text = doc.pop("sig", None)
    gw = doc.get("gateway")
    if type(gw) is not str or not gw:
        raise MalformedEnvelope("status: no gateway field")
    if type(sig_text) is not str:
        raise BadSignature(f"status of {gw!r} is not signed")
    try:
        sig = base64.urlsafe_b64decode(sig_text + "=" * (-len(sig_text) % 4))
    except (binascii.Error, ValueError):
        raise BadSignature(f"status of {gw!r}: sig is not base64url") from None
    pub = trusted.get(gw)
    if pub is None:
        pub = trusted.get(WILDCARD)
        if pub is None:
            raise UnknownSigner(f"no trusted key for gateway {gw!r}")
    try:
        body = canonical(doc)
    except (ValueError, TypeError) as exc:
        raise MalformedEnvelope(f"status: {exc}") from None
    try:
        pub.verify(sig, STATUS_CONTEXT + body)
    except InvalidSignature:
        raise BadSignature(f"status signature of gateway {gw!r} does not verify") from None
    if gateway_id is not None and gateway_id != gw:
        raise BadSignature(f"status signed by {gw!r} came as {gateway_id!r}")
    return doc


def _refuse_constant(name: str) -> Any:
    raise MalformedEnvelope(f"status: {name} is not JSON")

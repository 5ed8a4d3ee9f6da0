"""One set of errors for the wire format (stdlib only: drivers import ``KeyFileError``).

Every failure to trust a message is a :class:`WireError` whose ``reason`` is a stable word
(the fleet reports it). The class names are the head-end's words too: it shows
``type(e).__name__`` in its outcomes, so they are kept as the envelope named them.
"""

from __future__ import annotations


class WireError(ValueError):
    """Base of every error raised on bytes that cannot be trusted (envelope, command,
    manifest). ``reason`` is a stable machine-readable word."""

    reason = "malformed"


class MalformedEnvelope(WireError):
    """Not a well-formed message (bad CBOR, wrong structure, wrong types)."""

    reason = "malformed"


class UnknownSigner(WireError):
    """No trusted key for the message's kid."""

    reason = "unknown_key"


class BadSignature(WireError):
    """The signature does not verify, or the signed content claims another signer."""

    reason = "bad_signature"


class KeyFileError(ValueError):
    """A key or certificate file that cannot be used: unreadable, world-readable, the wrong
    kind of key, or not the certificate it should be. Local (our files), not wire bytes."""

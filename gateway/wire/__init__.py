"""The wire format between gateway and head-end, in one place (sans-I/O, no clock).

* :mod:`.errors`   one set of errors for untrusted bytes (and the one ``KeyFileError``)
* :mod:`.cbor`     the two CBOR helpers every layer below needs (exact decoding, bstr heads)
* :mod:`.cose`     COSE_Sign1 with EdDSA: the one implementation of signing and verifying,
                   used by the envelope and by the fleet's commands and release manifests
* :mod:`.body`     the chunk body codec: what the store keeps per chunk row
* :mod:`.envelope` the signed uplink message around chunk bodies

The store, the uplink, the fleet and the head-end import from here; nothing here imports them
(layer 1 in docs/architecture.md). This ``__init__`` imports nothing, so a module that needs
only the errors does not load cbor2 or cryptography.
"""

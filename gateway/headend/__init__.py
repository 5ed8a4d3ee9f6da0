"""The head-end: verifies the gateways' signed envelopes and keeps the books.

``verifier`` is the pure in-memory accounting, ``client``/``verify_cli`` the live verifier
(``python -m tools.headend``), and ``gateway-headend`` (:mod:`gateway.headend.cli`) the
durable service: ``ingest`` workers writing exactly once into PostgreSQL or SQLite,
``report``, ``profile`` and ``groups``.
"""

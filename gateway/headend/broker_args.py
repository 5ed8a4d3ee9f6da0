"""The broker and trust options every head-end command shares (``ingest`` and the live
``verify``): where the broker is, the head-end's TLS identity, and which gateway keys are
trusted. One definition, so the flags and their meaning cannot drift between commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.headend.client import load_public_key
from gateway.wire.envelope import WILDCARD


def add_broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--pki", metavar="DIR",
                   help="dev PKI: DIR/ca.pem, DIR/headend.pem/.key, trust DIR/gateway-sign.pub")
    p.add_argument("--ca", help="CA bundle for the broker (overrides --pki)")
    p.add_argument("--cert", help="head-end client certificate (overrides --pki)")
    p.add_argument("--key", help="head-end client key (overrides --pki)")
    p.add_argument("--trust", action="append", default=[], metavar="GWID=PUBFILE",
                   help="trust PUBFILE for gateway GWID (repeatable; GWID '*' = any gateway)")
    p.add_argument("--gateway-id", action="append", default=[], metavar="GWID",
                   help="with --pki: trust gateway-sign.pub only for these ids (default: any)")


def broker_identity(a: argparse.Namespace) -> tuple[str, str, str, dict[str, Any]]:
    pki = Path(a.pki) if a.pki else None
    ca = a.ca or (pki and str(pki / "ca.pem"))
    cert = a.cert or (pki and str(pki / "headend.pem"))
    key = a.key or (pki and str(pki / "headend.key"))
    if not (ca and cert and key):
        raise ValueError("need --pki DIR or all of --ca, --cert and --key")
    trusted: dict[str, Any] = {}
    if pki is not None:
        pub = load_public_key(pki / "gateway-sign.pub")
        for gid in a.gateway_id or [WILDCARD]:
            trusted[gid] = pub
    for spec in a.trust:
        gid, sep, path = spec.partition("=")
        if not sep or not gid or not path:
            raise ValueError(f"--trust wants GWID=PUBFILE, got {spec!r}")
        trusted[gid] = load_public_key(path)
    if not trusted:
        raise ValueError("no trusted gateway key: use --pki or --trust GWID=PUBFILE")
    return ca, cert, key, trusted

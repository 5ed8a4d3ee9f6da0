"""Build, sign and verify OTA update bundles.

    python -m tools.ota keygen release.key [--pub release.pub]
    python -m tools.ota build --src . --version 0.2.0 --security-version 1 \
        [--min-version 0.1.0] --out dist/release-0.2.0.tar.gz
    python -m tools.ota sign --key release.key dist/release-0.2.0.tar.gz -o dist/gateway-0.2.0.ota
    python -m tools.ota verify --trust release.pub dist/gateway-0.2.0.ota \
        [--installed-version 0.1.0 --installed-security 0]

``build`` writes the release tarball and, next to it, ``NAME.manifest.json`` (unsigned);
``sign`` checks the tarball still matches it and produces the bundle; ``verify`` runs the
gateway's own checks and prints the manifest as JSON (exit 0), or the reason (exit 1).
Keep the release key offline: only its public half goes on gateways (fleet.release_keys).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.fleet.bundle import (BundleError, Manifest, build_release, check_upgrade,
                                  make_manifest, read_manifest, sign_bundle)
from gateway.wire.cose import key_id, keyring, load_private_key, load_public_key
from gateway.fleet.keys import write_private, write_public

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def keygen(key_path: str | os.PathLike[str], pub_path: str | os.PathLike[str] | None = None
           ) -> tuple[Path, Path]:
    """A new Ed25519 key (PKCS8 PEM, mode 0600) and its public key (PEM)."""
    key = Ed25519PrivateKey.generate()
    key_path = Path(key_path)
    pub = Path(pub_path) if pub_path else key_path.with_suffix(".pub")
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    write_public(pub, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub


def manifest_path(tarball: str | os.PathLike[str]) -> Path:
    return Path(f"{tarball}.manifest.json")


def build(src: str, version: str, security_version: int, min_version: str, out: str) -> Manifest:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    build_release(src, version, out, security_version)
    m = make_manifest(out, version, security_version, min_version)
    manifest_path(out).write_text(json.dumps(asdict(m), indent=1, sort_keys=True) + "\n")
    return m


def sign(tarball: str, key_file: str, out: str) -> Manifest:
    fields = json.loads(manifest_path(tarball).read_text())
    m = Manifest(**fields)
    fresh = make_manifest(tarball, m.version, m.security_version, m.min_version)
    if (fresh.sha256, fresh.size) != (m.sha256, m.size):
        raise BundleError("digest_mismatch", f"{tarball} changed since it was built")
    sign_bundle(m, tarball, load_private_key(key_file), out)
    return m


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.ota", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen", help="new Ed25519 release (or command) key, mode 0600")
    k.add_argument("key")
    k.add_argument("--pub", help="public key file (default: KEY with .pub)")
    b = sub.add_parser("build", help="release tarball + unsigned manifest")
    b.add_argument("--src", default=".", help="tree holding the gateway package (and boards/)")
    b.add_argument("--version", required=True)
    b.add_argument("--security-version", type=int, required=True,
                   help="raise it with every security fix: gateways refuse lower ones")
    b.add_argument("--min-version", default="0", help="oldest release this may upgrade")
    b.add_argument("--out", required=True, help="release tarball to write (.tar.gz)")
    s = sub.add_parser("sign", help="sign a built release into a bundle")
    s.add_argument("tarball")
    s.add_argument("--key", required=True, help="release private key (PEM)")
    s.add_argument("-o", "--out", required=True, help="bundle to write (.ota)")
    v = sub.add_parser("verify", help="check a bundle as a gateway would")
    v.add_argument("bundle")
    v.add_argument("--trust", action="append", required=True, metavar="PUB",
                   help="trusted release public key (repeatable)")
    v.add_argument("--installed-version", help="also apply the upgrade rules against this")
    v.add_argument("--installed-security", type=int, default=0)
    a = p.parse_args(argv)
    try:
        if a.cmd == "keygen":
            key, pub = keygen(a.key, a.pub)
            kid = key_id(load_public_key(pub)).hex()
            print(json.dumps({"key": str(key), "pub": str(pub), "key_id": kid}))
        elif a.cmd == "build":
            m = build(a.src, a.version, a.security_version, a.min_version, a.out)
            print(json.dumps(asdict(m), sort_keys=True))
        elif a.cmd == "sign":
            m = sign(a.tarball, a.key, a.out)
            print(json.dumps({"bundle": a.out, **asdict(m)}, sort_keys=True))
        else:
            trusted = keyring(load_public_key(t) for t in a.trust)
            m = read_manifest(a.bundle, trusted)
            if a.installed_version:
                check_upgrade(m, a.installed_version, a.installed_security)
            print(json.dumps({"ok": True, **asdict(m)}, sort_keys=True))
    except BundleError as e:
        print(json.dumps({"ok": False, "reason": e.reason, "error": str(e)}))
        print(f"ota: {e.reason}: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"ota: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

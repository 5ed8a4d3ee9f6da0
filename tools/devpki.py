"""Development PKI for the gateway's MQTT/TLS uplink.

Creates a throw-away CA plus the certificates a test or demo setup needs:
a broker server cert, one client cert per gateway, a head-end client cert and
the Ed25519 key the gateway signs its envelopes with.  Never use in production:
the CA key sits unencrypted next to the certificates.

    python -m tools.devpki OUTDIR [--days N] [--gateway-id ID] [--force]
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DAYS = 825
CA_MIN_DAYS = 3650  # the CA outlives every leaf it may re-issue later
DEFAULT_GATEWAY_ID = "gw-0001"
CLOCK_SKEW = dt.timedelta(minutes=5)  # Pis boot with a wrong clock until NTP syncs

Log = Callable[[str], None]
PathLike = str | os.PathLike


def _quiet(_msg: str) -> None:
    """Default logger: library callers get no output."""


# --------------------------------------------------------------------------- io

def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file created with `mode`, then rename.

    The key material is never readable by others, not even for an instant,
    and an interrupted run never leaves a half-written PEM behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_key(path: Path, key) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# ------------------------------------------------------------------- building

def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meter-gateway dev PKI"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _builder(subject: x509.Name, issuer: x509.Name, pub, days: int) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )


def _new_tls_key() -> ec.EllipticCurvePrivateKey:
    """P-256: cheap ECDHE/ECDSA handshakes on a Raspberry Pi."""
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(outdir: PathLike, days: int = CA_MIN_DAYS, cn: str = "meter-gateway dev CA",
            stem: str = "ca") -> tuple[Path, Path]:
    """Create a fresh self-signed CA as `{stem}.pem`/`{stem}.key` (always new).

    Tests call this directly to get a second, untrusted CA.
    """
    out = Path(outdir)
    key = _new_tls_key()
    name = _name(cn)
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem, key_path = out / f"{stem}.pem", out / f"{stem}.key"
    _write_key(key_path, key)
    _write_cert(pem, cert)
    return pem, key_path


def _issue(ca_pem: Path, ca_key: Path, cn: str, eku, sans: Sequence[x509.GeneralName],
           days: int, pem: Path, key_path: Path) -> tuple[Path, Path]:
    """Sign a new leaf (EC P-256) with the CA and write it as pem/key_path."""
    ca_cert, ca_priv = _load_cert(ca_pem), _load_key(ca_key)
    key = _new_tls_key()
    builder = (
        _builder(_name(cn), ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_priv.public_key()),
                       critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    _write_key(key_path, key)
    _write_cert(pem, builder.sign(ca_priv, hashes.SHA256()))
    return pem, key_path


def _server_sans() -> list[x509.GeneralName]:
    return [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]


def issue_client_cert(pki_dir: PathLike, name: str, days: int = DEFAULT_DAYS,
                      cn: str | None = None, stem: str | None = None) -> tuple[Path, Path]:
    """Issue `{stem or name}.pem/.key` (CN=cn or name, EKU clientAuth) from pki_dir's CA.

    Always writes a new pair; the broker maps the CN to the MQTT username.
    """
    d = Path(pki_dir)
    stem = stem or name
    return _issue(d / "ca.pem", d / "ca.key", cn or name, ExtendedKeyUsageOID.CLIENT_AUTH,
                  [], days, d / f"{stem}.pem", d / f"{stem}.key")


def issue_server_cert(pki_dir: PathLike, name: str = "broker",
                      days: int = DEFAULT_DAYS) -> tuple[Path, Path]:
    """Issue `{name}.pem/.key` for a loopback broker (SAN localhost/127.0.0.1/::1)."""
    d = Path(pki_dir)
    return _issue(d / "ca.pem", d / "ca.key", "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                  _server_sans(), days, d / f"{name}.pem", d / f"{name}.key")


def make_signing_key(key_path: PathLike, pub_path: PathLike) -> tuple[Path, Path]:
    """Write a new Ed25519 envelope signing key (PKCS8) and its SubjectPublicKeyInfo."""
    key = ed25519.Ed25519PrivateKey.generate()
    key_path, pub_path = Path(key_path), Path(pub_path)
    _write_key(key_path, key)
    _write_pub(pub_path, key)
    return key_path, pub_path


def _write_pub(pub_path: Path, key: ed25519.Ed25519PrivateKey) -> None:
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_atomic(pub_path, pub, 0o644)


# ----------------------------------------------------------------- validation

def _ca_ok(pem: Path, key_path: Path) -> bool:
    """True if the CA pair exists, matches and has not expired."""
    try:
        cert, key = _load_cert(pem), _load_key(key_path)
    except (OSError, ValueError):
        return False
    return _same_key(cert, key) and cert.not_valid_after_utc > _now()


def _same_key(cert: x509.Certificate, key) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, spki) == key.public_key().public_bytes(enc, spki)


def _leaf_ok(pem: Path, key_path: Path, ca_pem: Path, cn: str) -> bool:
    """True if an existing leaf can be kept: issued by *this* CA, right CN, key matches, valid."""
    try:
        cert, key, ca = _load_cert(pem), _load_key(key_path), _load_cert(ca_pem)
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (bool(cns) and cns[0].value == cn and _same_key(cert, key)
            and cert.not_valid_after_utc > _now())


def _signing_ok(key_path: Path, pub_path: Path) -> bool:
    try:
        key = _load_key(key_path)
        pub = serialization.load_pem_public_key(pub_path.read_bytes())
    except (OSError, ValueError):
        return False
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return (isinstance(key, ed25519.Ed25519PrivateKey)
            and key.public_key().public_bytes(*raw) == pub.public_bytes(*raw))


# ----------------------------------------------------------------- make_pki

def _gateway_stems(gateway_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(stem, cn) pairs: the first gateway is `gateway.*`, extra ones `{id}.*`."""
    return [("gateway" if i == 0 else gid, gid) for i, gid in enumerate(gateway_ids)]


def make_pki(outdir: PathLike, gateway_ids: Iterable[str] = (DEFAULT_GATEWAY_ID,),
             days: int = DEFAULT_DAYS, force: bool = False, log: Log = _quiet) -> dict[str, Path]:
    """Create (or complete) a dev PKI in outdir and return every file path.

    Existing files are kept when still valid for the current CA unless force;
    a new CA therefore re-issues every leaf so the set stays consistent.
    Keys in the result: ca, ca_key, broker, broker_key, gateway, gateway_key,
    headend, headend_key, sign_key, sign_pub, plus `{id}`/`{id}_key` for extra
    gateway ids.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    ids = list(gateway_ids) or [DEFAULT_GATEWAY_ID]
    paths: dict[str, Path] = {"ca": out / "ca.pem", "ca_key": out / "ca.key"}

    if force or not _ca_ok(paths["ca"], paths["ca_key"]):
        make_ca(out, days=max(days, CA_MIN_DAYS))
        log(f"created  {paths['ca']}")
    else:
        log(f"kept     {paths['ca']}")

    leaves = [("broker", "localhost", lambda: issue_server_cert(out, "broker", days))]
    leaves += [(stem, cn, _client_issuer(out, cn, stem, days)) for stem, cn in _gateway_stems(ids)]
    leaves.append(("headend", "headend", _client_issuer(out, "headend", "headend", days)))
    for stem, cn, issue in leaves:
        pem, key = out / f"{stem}.pem", out / f"{stem}.key"
        if force or not _leaf_ok(pem, key, paths["ca"], cn):
            issue()
            log(f"created  {pem} (CN={cn})")
        else:
            log(f"kept     {pem} (CN={cn})")
        paths[stem], paths[f"{stem}_key"] = pem, key

    paths["sign_key"], paths["sign_pub"] = _ensure_signing_key(out, force, log)
    return paths


def _client_issuer(out: Path, cn: str, stem: str, days: int) -> Callable[[], tuple[Path, Path]]:
    return lambda: issue_client_cert(out, cn, days, stem=stem)


def _ensure_signing_key(out: Path, force: bool, log: Log) -> tuple[Path, Path]:
    """Keep a matching Ed25519 pair; re-derive a lost .pub rather than rotate the key."""
    key_path, pub_path = out / "gateway-sign.key", out / "gateway-sign.pub"
    if not force and _signing_ok(key_path, pub_path):
        log(f"kept     {key_path}")
        return key_path, pub_path
    if not force and key_path.exists():
        try:
            key = _load_key(key_path)
        except ValueError:
            key = None
        if isinstance(key, ed25519.Ed25519PrivateKey):
            _write_pub(pub_path, key)
            log(f"kept     {key_path}; rewrote {pub_path}")
            return key_path, pub_path
    make_signing_key(key_path, pub_path)
    log(f"created  {key_path}")
    return key_path, pub_path


# ----------------------------------------------------------------------- CLI

def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.devpki", description=__doc__.splitlines()[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--days", type=int, default=DEFAULT_DAYS,
                   help="leaf certificate validity in days (default %(default)s)")
    p.add_argument("--gateway-id", action="append", dest="gateway_ids",
                   help=f"gateway client cert CN (default {DEFAULT_GATEWAY_ID}); repeat for more")
    p.add_argument("--force", action="store_true", help="regenerate everything")
    args = p.parse_args(argv)
    if args.days < 1:
        p.error("--days must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    paths = make_pki(args.outdir, args.gateway_ids or (DEFAULT_GATEWAY_ID,), args.days,
                     args.force, log=print)
    gw = _load_cert(paths["gateway"]).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    print(f"dev PKI in {args.outdir.resolve()}: CA ca.pem, broker broker.pem, "
          f"gateway gateway.pem (CN={gw}), headend headend.pem, signing gateway-sign.pub")
    print(f"run a broker:  python -m tools.broker {args.outdir} --port 8883")
    return 0


if __name__ == "__main__":
    sys.exit(main())

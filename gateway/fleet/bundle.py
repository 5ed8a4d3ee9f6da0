"""OTA update bundles: a signed manifest and the release tarball it vouches for.

A bundle is a plain (uncompressed) tar with exactly two members, in this order::

    manifest.cose     COSE_Sign1/Ed25519 by a release key over the CBOR manifest
    release.tar.gz    the release: the ``gateway`` package and RELEASE.json

    manifest = {"v": 1, "name": "meter-gateway", "version": "0.2.0", "security_version": 3,
                "min_version": "0.1.0", "sha256": hex of release.tar.gz, "size": bytes,
                "created_ms": ...}

Verification order: signature (nothing unsigned is believed), then the tarball's size and
SHA-256 against the manifest, then the anti-rollback and minimum-version rules against what
is installed. The tar container means ``tar tvf bundle.ota`` shows what is inside.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..wire.cose import sign1, verify1
from ..wire.errors import WireError

FORMAT = 1
PRODUCT = "meter-gateway"
MANIFEST_NAME = "manifest.cose"
TARBALL_NAME = "release.tar.gz"
RELEASE_INFO = "RELEASE.json"
MAX_MANIFEST = 16 * 1024
MAX_RELEASE_BYTES = 256 * 1024 * 1024  # unpacked; a release is a few MB of Python
MAX_RELEASE_FILES = 10_000
_VERSION = re.compile(r"\d{1,9}(\.\d{1,9}){0,3}")


class BundleError(ValueError):
    """The bundle must not be installed. ``reason``: malformed, truncated, unknown_key,
    bad_signature, digest_mismatch, downgrade, too_old, wrong_product."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Manifest:
    version: str
    security_version: int
    min_version: str
    sha256: str
    size: int
    created_ms: int
    name: str = PRODUCT

    def to_obj(self) -> dict[str, Any]:
        return {"v": FORMAT, **asdict(self)}

    @classmethod
    def from_obj(cls, o: Any) -> "Manifest":
        if not isinstance(o, dict) or o.get("v") != FORMAT:
            raise BundleError("malformed", "manifest: unknown format")
        try:
            m = cls(o["version"], o["security_version"], o["min_version"], o["sha256"],
                    o["size"], o["created_ms"], o["name"])
        except KeyError as e:
            raise BundleError("malformed", f"manifest: missing {e}") from None
        if set(o) - {"v", *asdict(m)}:
            raise BundleError("malformed", "manifest: unknown fields")
        if not (isinstance(m.version, str) and _VERSION.fullmatch(m.version)
                and isinstance(m.min_version, str) and _VERSION.fullmatch(m.min_version)
                and type(m.security_version) is int and 0 <= m.security_version < 2**31
                and isinstance(m.sha256, str) and re.fullmatch(r"[0-9a-f]{64}", m.sha256)
                and type(m.size) is int and 0 < m.size <= MAX_RELEASE_BYTES
                and type(m.created_ms) is int and isinstance(m.name, str)):
            raise BundleError("malformed", "manifest: bad field types or values")
        return m


def parse_version(v: str) -> tuple[int, ...]:
    """"0.2.10" -> (0, 2, 10); plain dotted numbers only, so comparison is unambiguous."""
    if not isinstance(v, str) or not _VERSION.fullmatch(v):
        raise ValueError(f"not a version (dotted numbers such as 1.4.2): {v!r}")
    return tuple(int(x) for x in v.split("."))


# --------------------------------------------------------------------------- building

def build_release(src: str | os.PathLike[str], version: str, out: str | os.PathLike[str],
                  security_version: int = 0) -> tuple[str, int]:
    """Tar+gzip the ``gateway`` package (and ``boards/*.yaml``) found in ``src`` as a release;
    returns (sha256, size).

    Reproducible: sorted names, fixed mtimes and owners. ``__version__`` in
    ``gateway/__init__.py`` is set to ``version`` so the running code reports it.
    """
    parse_version(version)
    root = Path(src)
    pkg = root / "gateway"
    if not (pkg / "__init__.py").is_file():
        raise ValueError(f"{root}: no gateway package here")
    buf = io.BytesIO()
    gz = gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0)  # no timestamp
    with gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))

        boards = sorted((root / "boards").glob("*.yaml")) if (root / "boards").is_dir() else []
        for path in sorted(pkg.rglob("*")) + boards:
            rel = path.relative_to(root).as_posix()
            if "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo") or path.is_dir():
                continue
            data = path.read_bytes()
            if rel == "gateway/__init__.py":
                data = re.sub(rb'(?m)^__version__ = ".*"$',
                              b'__version__ = "' + version.encode() + b'"', data)
            add(rel, data)
        add(RELEASE_INFO, json.dumps({"name": PRODUCT, "version": version,
                                      "security_version": security_version}).encode())
    data = buf.getvalue()
    Path(out).write_bytes(data)
    return hashlib.sha256(data).hexdigest(), len(data)


def make_manifest(tarball: str | os.PathLike[str], version: str, security_version: int,
                  min_version: str = "0") -> Manifest:
    data = Path(tarball).read_bytes()
    m = Manifest(version, security_version, min_version, hashlib.sha256(data).hexdigest(),
                 len(data), time.time_ns() // 1_000_000)
    Manifest.from_obj(m.to_obj())  # same checks as the gateway
    return m


def sign_bundle(manifest: Manifest, tarball: str | os.PathLike[str], key: Ed25519PrivateKey,
                out: str | os.PathLike[str]) -> None:
    signed = sign1(manifest.to_obj(), key)
    tmp = Path(f"{out}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size, info.mode = len(signed), 0o644
        tar.addfile(info, io.BytesIO(signed))
        with open(tarball, "rb") as f:
            info = tar.gettarinfo(fileobj=f, arcname=TARBALL_NAME)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, f)
    os.replace(tmp, out)


# --------------------------------------------------------------------------- verifying

def read_manifest(path: str | os.PathLike[str],
                  trusted: Mapping[bytes, Ed25519PublicKey]) -> Manifest:
    """Verify the bundle completely: signature, size and SHA-256 of the release tarball."""
    try:
        with tarfile.open(path, "r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME or not first.isreg() \
                    or first.size > MAX_MANIFEST:
                raise BundleError("malformed", f"first member must be {MANIFEST_NAME}")
            signed = _read_member(tar, first)
            try:
                _, obj = verify1(signed, trusted)
            except WireError as e:
                raise BundleError(e.reason, f"manifest: {e}") from None
            m = Manifest.from_obj(obj)
            if m.name != PRODUCT:
                raise BundleError("wrong_product", f"bundle is for {m.name!r}, not {PRODUCT!r}")
            second = tar.next()
            if second is None or second.name != TARBALL_NAME or not second.isreg():
                raise BundleError("truncated" if second is None else "malformed",
                                  f"second member must be {TARBALL_NAME}")
            if second.size != m.size:
                raise BundleError("digest_mismatch", f"release is {second.size} bytes, the "
                                  f"manifest says {m.size}")
            digest = hashlib.sha256()
            f = tar.extractfile(second)
            assert f is not None
            got = 0
            while chunk := f.read(1 << 16):
                digest.update(chunk)
                got += len(chunk)
            if got != m.size:
                raise BundleError("truncated", f"release is truncated ({got} of {m.size} bytes)")
            if digest.hexdigest() != m.sha256:
                raise BundleError("digest_mismatch", "release tarball SHA-256 does not match "
                                  "the signed manifest (tampered or corrupted)")
            if tar.next() is not None:
                raise BundleError("malformed", "unexpected third member")
    except BundleError:
        raise
    except (tarfile.TarError, EOFError) as e:
        raise BundleError("truncated" if "EOF" in str(e) or "unexpected end" in str(e)
                          else "malformed", f"not a readable bundle: {e}") from None
    except OSError as e:
        raise BundleError("malformed", f"cannot read bundle: {e}") from None
    return m


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(info)
    data = f.read() if f is not None else b""
    if len(data) != info.size:
        raise BundleError("truncated", f"{info.name} is truncated")
    return data


def check_upgrade(m: Manifest, installed_version: str, installed_security: int) -> None:
    """Anti-rollback and upgrade-path rules. Raises BundleError (downgrade, too_old)."""
    if m.security_version < installed_security:
        raise BundleError("downgrade", f"security version {m.security_version} is below the "
                          f"installed {installed_security}: refused (anti-rollback)")
    try:
        too_old = parse_version(installed_version) < parse_version(m.min_version)
    except ValueError:
        too_old = True
    if too_old:
        raise BundleError("too_old", f"release {m.version} upgrades only from "
                          f"{m.min_version} or later; installed is {installed_version}")


def extract_release(path: str | os.PathLike[str], m: Manifest,
                    dest: str | os.PathLike[str]) -> None:
    """Unpack the (already verified) release into ``dest``, which must not exist.

    tarfile's 'data' filter refuses absolute paths, ``..``, links out of the tree and
    device files; sizes and counts are bounded. Unpacks into a temp dir, fsyncs and renames.
    """
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".unpack")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(path, "r:") as outer:
            outer.next()
            inner_info = outer.next()
            assert inner_info is not None
            inner = outer.extractfile(inner_info)
            with tarfile.open(fileobj=inner, mode="r:gz") as tar:
                total = count = 0
                for member in tar:
                    count += 1
                    total += member.size
                    if count > MAX_RELEASE_FILES or total > MAX_RELEASE_BYTES:
                        raise BundleError("malformed", "release too large")
                    if not (member.isreg() or member.isdir()):
                        raise BundleError("malformed", f"{member.name}: only files and "
                                          "directories may be in a release")
                    tar.extract(member, tmp, filter="data")
        (tmp / "MANIFEST.json").write_text(json.dumps(m.to_obj(), sort_keys=True))
        _fsync_tree(tmp)
        os.replace(tmp, dest)
    except (tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError("malformed", f"cannot unpack the release: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

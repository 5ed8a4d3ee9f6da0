"""OTA bundles: build -> sign -> verify, and every way a bundle must be refused: tampered,
truncated, wrong key, downgrade, too old, hostile tarball paths. Plus `python -m tools.ota`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.fleet.bundle import (BundleError, Manifest, build_release, check_upgrade,
                                  extract_release, make_manifest, read_manifest, sign_bundle)
from gateway.wire.cose import keyring

ROOT = Path(__file__).resolve().parent.parent
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
TRUSTED = keyring([KEY.public_key()])


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "release.tar.gz"
    build_release(ROOT, "0.2.0", out, security_version=2)
    return out


def bundle(tmp: Path, release: Path, key=KEY, **kw) -> Path:
    m = make_manifest(release, kw.pop("version", "0.2.0"), kw.pop("security_version", 2),
                      kw.pop("min_version", "0.1.0"))
    out = tmp / "b.ota"
    sign_bundle(m, release, key, out)
    return out


def refused(path: Path) -> str:
    with pytest.raises(BundleError) as e:
        read_manifest(path, TRUSTED)
    return e.value.reason


def test_good_bundle_verifies_and_unpacks(tmp_path, release):
    b = bundle(tmp_path, release)
    m = read_manifest(b, TRUSTED)
    assert (m.version, m.security_version, m.min_version) == ("0.2.0", 2, "0.1.0")
    check_upgrade(m, "0.1.0", 2)
    extract_release(b, m, tmp_path / "slot")
    init = (tmp_path / "slot" / "gateway" / "__init__.py").read_text()
    assert '__version__ = "0.2.0"' in init
    assert (tmp_path / "slot" / "boards" / "raspberry-pi.yaml").is_file()
    assert json.loads((tmp_path / "slot" / "MANIFEST.json").read_text())["version"] == "0.2.0"
    assert not list((tmp_path / "slot").rglob("__pycache__"))


def test_release_build_is_reproducible(tmp_path, release):
    again = tmp_path / "again.tar.gz"
    build_release(ROOT, "0.2.0", again, security_version=2)
    assert again.read_bytes() == release.read_bytes()


def test_tampered_release_is_refused(tmp_path, release):
    b = bundle(tmp_path, release)
    data = bytearray(b.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside release.tar.gz
    b.write_bytes(bytes(data))
    assert refused(b) == "digest_mismatch"


def test_tampered_manifest_is_refused(tmp_path, release):
    b = bundle(tmp_path, release)
    data = bytearray(b.read_bytes())
    i = data.index(b"0.2.0")  # the version inside the signed manifest
    data[i:i + 5] = b"9.9.9"
    b.write_bytes(bytes(data))
    assert refused(b) == "bad_signature"


def test_truncated_bundle_is_refused(tmp_path, release):
    b = bundle(tmp_path, release)
    full = b.read_bytes()
    data_end = len(full.rstrip(b"\0"))  # tar pads with zero blocks: cut real data
    for n in (0, 100, 600, len(full) // 2, data_end - 1):
        b.write_bytes(full[:n])
        assert refused(b) in ("truncated", "malformed"), n


def test_wrong_key_is_refused(tmp_path, release):
    assert refused(bundle(tmp_path, release, key=OTHER)) == "unknown_key"


def test_downgrade_and_too_old_are_refused(tmp_path, release):
    m = read_manifest(bundle(tmp_path, release), TRUSTED)
    with pytest.raises(BundleError) as e:
        check_upgrade(m, "0.1.5", 3)
    assert e.value.reason == "downgrade"
    with pytest.raises(BundleError) as e:
        check_upgrade(m, "0.0.9", 0)
    assert e.value.reason == "too_old"
    check_upgrade(m, "0.1.0", 2)  # same security version: allowed (re-install, fixes)


def test_hostile_release_paths_are_refused_even_if_signed(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for name in ("gateway/__init__.py", "../../etc/cron.d/evil"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"x=1"))
    m = make_manifest(evil, "0.3.0", 3)
    sign_bundle(m, evil, KEY, tmp_path / "evil.ota")
    m = read_manifest(tmp_path / "evil.ota", TRUSTED)  # validly signed...
    with pytest.raises(BundleError):  # ...but never unpacked outside the slot
        extract_release(tmp_path / "evil.ota", m, tmp_path / "slot")
    assert not (tmp_path / "slot").exists()
    assert not list(tmp_path.parent.rglob("cron.d"))


def test_manifest_validation():
    with pytest.raises(BundleError):
        Manifest.from_obj({"v": 1, "version": "1.x"})
    good = Manifest("1.0", 1, "0", "a" * 64, 10, 0).to_obj()
    assert Manifest.from_obj(good).version == "1.0"
    with pytest.raises(BundleError):
        Manifest.from_obj({**good, "extra": 1})


def test_tools_ota_cli(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tools.ota", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    assert run("keygen", tmp_path / "rel.key").returncode == 0
    assert (tmp_path / "rel.key").stat().st_mode & 0o777 == 0o600
    r = run("build", "--src", ROOT, "--version", "0.3.0", "--security-version", "1",
            "--min-version", "0.1.0", "--out", tmp_path / "r.tar.gz")
    assert r.returncode == 0, r.stderr
    r = run("sign", tmp_path / "r.tar.gz", "--key", tmp_path / "rel.key", "-o", tmp_path / "b.ota")
    assert r.returncode == 0, r.stderr
    r = run("verify", "--trust", tmp_path / "rel.pub", tmp_path / "b.ota",
            "--installed-version", "0.2.0")
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == "0.3.0"
    r = run("verify", "--trust", tmp_path / "rel.pub", tmp_path / "b.ota",
            "--installed-version", "0.2.0", "--installed-security", "4")
    assert r.returncode == 1 and json.loads(r.stdout)["reason"] == "downgrade"
    run("keygen", tmp_path / "other.key")
    r = run("verify", "--trust", tmp_path / "other.pub", tmp_path / "b.ota")
    assert r.returncode == 1 and json.loads(r.stdout)["reason"] == "unknown_key"


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(data=st.binary(max_size=3000))
def test_random_files_only_raise_bundle_errors(tmp_path, data):
    p = tmp_path / "r.ota"
    p.write_bytes(data)
    with pytest.raises(BundleError):
        read_manifest(p, TRUSTED)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(pos=st.integers(0, 10**9), value=st.integers(0, 255))
def test_any_byte_change_in_the_signed_parts_is_caught(tmp_path, release, pos, value):
    b = bundle(tmp_path, release)
    with tarfile.open(b) as tar:
        originals = [tar.extractfile(m).read() for m in tar.getmembers()]
    data = bytearray(b.read_bytes())
    end = len(bytes(data).rstrip(b"\0"))
    pos %= end
    if data[pos] == value:
        return
    data[pos] = value
    b.write_bytes(bytes(data))
    try:
        read_manifest(b, TRUSTED)
    except BundleError:
        return
    # Only tar header fields that carry no meaning for us (mtime, owner, checksum-neutral
    # padding) may change without being caught; the content never.
    with tarfile.open(b) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["manifest.cose", "release.tar.gz"]
        assert [tar.extractfile(m).read() for m in members] == originals

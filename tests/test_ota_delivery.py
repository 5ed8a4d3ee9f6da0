"""Bundle delivery: HTTPS verified with the uplink's CA and resumed with Range after a cut
connection; retained MQTT chunks through the real broker, resumed from the chunks on disk."""

from __future__ import annotations

import hashlib
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.fleet.delivery import (DeliveryError, chunk_count, chunk_topic, fetch_https,
                                    fetch_mqtt, https_context, sha256_file)
from tools.devpki import make_ca

DATA = os.urandom(300_000)


class Server:
    """HTTPS with Range support; the first ``cut_once`` response is cut after that many bytes."""

    def __init__(self, pki: Path, cut_once: int | None = None, data: bytes = DATA) -> None:
        self.requests: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut, outer.cut = outer.cut, None
                self.wfile.write(body[:cut] if cut else body)
                if cut:
                    self.wfile.flush()
                    self.connection.shutdown(2)

        self.cut = cut_once
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pki / "broker.pem", pki / "broker.key")
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://localhost:{self.httpd.server_address[1]}/b.ota"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_https_download_resumes_after_a_cut(tmp_path, pki):
    srv = Server(pki, cut_once=100_000)
    try:
        dest = tmp_path / "b.ota"
        ctx = https_context(str(pki / "ca.pem"))
        with pytest.raises(DeliveryError):
            fetch_https(srv.url, dest, len(DATA), ctx, threading.Event())
        assert (tmp_path / "b.ota.part").stat().st_size == 100_000
        fetch_https(srv.url, dest, len(DATA), ctx, threading.Event())
        assert srv.requests == [None, "bytes=100000-"]
        assert dest.read_bytes() == DATA and not (tmp_path / "b.ota.part").exists()
    finally:
        srv.close()


def test_https_server_from_another_ca_is_refused(tmp_path, pki):
    other_ca, _ = make_ca(tmp_path, stem="other-ca")
    srv = Server(pki)
    try:
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
            fetch_https(srv.url, tmp_path / "b.ota", len(DATA),
                        https_context(str(other_ca)), threading.Event())
        with pytest.raises(DeliveryError, match="https"):
            fetch_https(srv.url.replace("https", "http"), tmp_path / "b.ota", len(DATA),
                        https_context(str(pki / "ca.pem")), threading.Event())
    finally:
        srv.close()


def test_mqtt_chunks_resume_from_disk(tmp_path, pki, broker, mqtt_client_factory):
    size, chunk = len(DATA), 32 * 1024
    sha = hashlib.sha256(DATA).hexdigest()
    total = chunk_count(size, chunk)
    pub = mqtt_client_factory("headend", client_id="chunk-publisher")

    def publish(indexes: range) -> None:
        for i in indexes:
            pub.publish(chunk_topic("meters", sha, i), DATA[i * chunk:(i + 1) * chunk], qos=1,
                        retain=True).wait_for_publish(10)

    kw = dict(host="localhost", port=broker.port,
              ctx=https_context(str(pki / "ca.pem"), str(pki / "gateway.pem"),
                                str(pki / "gateway.key")),
              client_id="gw-0001-ota", prefix="meters", sha256=sha, size=size,
              chunk_size=chunk, chunk_dir=tmp_path / "chunks", dest=tmp_path / "b.ota",
              stop=threading.Event())
    publish(range(total // 2))
    with pytest.raises(DeliveryError, match="still missing"):
        fetch_mqtt(**kw, idle_timeout_s=1.0)
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "chunks").iterdir()}
    assert len(first) == total // 2
    publish(range(total // 2, total))
    seen: list[tuple[int, int]] = []
    fetch_mqtt(**kw, idle_timeout_s=20.0, progress=lambda d, t: seen.append((d, t)))
    assert sha256_file(tmp_path / "b.ota") == sha
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "chunks").iterdir()}
    assert all(after[n] == m for n, m in first.items()), "chunks already on disk are kept"
    assert seen[-1] == (total, total)


def test_ota_job_over_https_installs_into_the_inactive_slot(tmp_path, pki):
    """The gateway's OTA job with HTTPS delivery, without a process: download (cut once and
    resumed), verify, unpack into B, record the trial, switch current, ask for a restart."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.fleet.bundle import build_release, make_manifest, sign_bundle
    from gateway.fleet.command import Command
    from gateway.wire.cose import keyring
    from gateway.fleet.launcher import load_trial
    from gateway.fleet.ota import OtaManager, OtaSettings
    from gateway.fleet.slots import Layout

    root = Path(__file__).resolve().parent.parent
    key = Ed25519PrivateKey.generate()
    build_release(root, "0.5.0", tmp_path / "r.tar.gz", 4)
    sign_bundle(make_manifest(tmp_path / "r.tar.gz", "0.5.0", 4, "0.1.0"), tmp_path / "r.tar.gz",
                key, tmp_path / "b.ota")
    data = (tmp_path / "b.ota").read_bytes()
    opt = tmp_path / "opt"
    (opt / "releases" / "A").mkdir(parents=True)
    (opt / "releases" / "A" / "RELEASE.json").write_text('{"version": "0.4.0", '
                                                         '"security_version": 3}')
    os.symlink("releases/A", opt / "current")
    events, restarts = [], []
    mgr = OtaManager(OtaSettings(
        layout=Layout(opt), state_dir=tmp_path / "state", release_keys=keyring([key.public_key()]),
        gateway_id="gw-0001", topic_prefix="meters", host="localhost", port=1,
        ca=str(pki / "ca.pem"), cert=str(pki / "gateway.pem"), key=str(pki / "gateway.key"),
        deadline_s=30, max_attempts=2, retry_min_s=0.05), emit=events.append,
        restart=restarts.append)
    (tmp_path / "state").mkdir()
    srv = Server(pki, cut_once=len(data) // 3, data=data)
    try:
        res = mgr.command(Command("u-1", 5, "gw-0001", 0, 1, "ota", {
            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "url": srv.url}))
        assert res["status"] == "started" and res["installed"]["security_version"] == 3
        mgr._thread.join(60)
    finally:
        srv.close()
    kinds = [e.kind for e in events]
    assert kinds[0] == "ota.downloading" and "ota.retrying" in kinds, kinds
    assert kinds[-2:] == ["ota.verified", "ota.installed"], [e.detail for e in events]
    assert len(srv.requests) == 2 and srv.requests[1].startswith("bytes=")
    assert os.readlink(opt / "current") == "releases/B" and len(restarts) == 1
    assert '__version__ = "0.5.0"' in (opt / "releases/B/gateway/__init__.py").read_text()
    trial = load_trial(tmp_path / "state")
    assert trial["kind"] == "ota" and trial["undo"][0]["target"] == "releases/A"
    assert not (tmp_path / "state" / "ota-job.json").exists()

"""Getting a bundle onto the gateway: HTTPS download or retained MQTT chunks, both resumable.

* HTTPS: the server is verified with the uplink's CA (and the gateway presents its client
  certificate); an interrupted download continues with a ``Range`` request from the bytes
  already in ``NAME.part``.
* MQTT: the head-end publishes the bundle ONCE for the whole fleet as retained messages
  ``{prefix}/fleet/ota/{sha256}/{index}`` (raw bytes, ``chunk_size`` each). A gateway
  subscribes with its own short-lived TLS connection, writes every chunk to its own file
  (atomically) and, after a disconnect or a reboot, only still needs the ones it lacks.

Either way the caller checks the SHA-256 of the whole bundle against the signed command
before anything else looks inside it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("gateway.fleet.ota")

Progress = Callable[[int, int], None]  # (bytes or chunks done, total)


class DeliveryError(Exception):
    """The bundle could not be fetched (yet); the message says why."""


def https_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


def fetch_https(url: str, dest: Path, size: int, ctx: ssl.SSLContext,
                stop: threading.Event, progress: Progress | None = None,
                timeout_s: float = 30.0) -> None:
    """Download ``url`` to ``dest`` (exactly ``size`` bytes), resuming ``dest.part``."""
    if not url.startswith("https://"):
        raise DeliveryError(f"only https:// URLs are accepted, got {url[:60]!r}")
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have < size:
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout_s) as resp:
                if have and resp.status != 206:
                    have = 0  # the server ignored the range: start over
                mode = "ab" if have else "wb"
                with open(part, mode) as f:
                    last_sync = time.monotonic()
                    while not stop.is_set():
                        block = resp.read(1 << 16)
                        if not block:
                            break
                        have += len(block)
                        if have > size:
                            raise DeliveryError(f"server sent more than the {size} bytes "
                                                "announced")
                        f.write(block)
                        if time.monotonic() - last_sync > 1.0:
                            f.flush()
                            os.fsync(f.fileno())
                            last_sync = time.monotonic()
                            if progress:
                                progress(have, size)
                    f.flush()
                    os.fsync(f.fileno())
        except urllib.error.HTTPError as e:
            raise DeliveryError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DeliveryError(f"{url}: {reason}") from None
    if stop.is_set():
        raise DeliveryError("stopped")
    if have != size:
        raise DeliveryError(f"{url}: got {have} of {size} bytes; will resume")
    if progress:
        progress(have, size)
    os.replace(part, dest)


def chunk_topic(prefix: str, sha256: str, index: int | str = "+") -> str:
    return f"{prefix}/fleet/ota/{sha256}/{index}"


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def missing_chunks(chunk_dir: Path, total: int) -> list[int]:
    return [i for i in range(total) if not (chunk_dir / f"{i:06d}").exists()]


def fetch_mqtt(*, host: str, port: int, ctx: ssl.SSLContext, client_id: str, prefix: str,
               sha256: str, size: int, chunk_size: int, chunk_dir: Path, dest: Path,
               stop: threading.Event, progress: Progress | None = None,
               idle_timeout_s: float = 60.0) -> None:
    """Collect every chunk into ``chunk_dir`` (kept across restarts), then join them into
    ``dest``. Raises DeliveryError when the broker is unreachable or chunks stop coming."""
    import paho.mqtt.client as mqtt  # only the fleet's download needs a second client

    total = chunk_count(size, chunk_size)
    chunk_dir.mkdir(parents=True, exist_ok=True)
    need = set(missing_chunks(chunk_dir, total))
    lock = threading.Lock()
    changed = threading.Event()
    last = [time.monotonic()]
    errors: list[str] = []

    def on_connect(client, _u, _f, reason, _p):  # type: ignore[no-untyped-def]
        if reason.is_failure:
            errors.append(f"broker refused the download connection: {reason}")
            changed.set()
            return
        client.subscribe(chunk_topic(prefix, sha256), qos=1)

    def on_message(_c, _u, msg):  # type: ignore[no-untyped-def]
        try:
            index = int(msg.topic.rsplit("/", 1)[1])
        except ValueError:
            return
        if index not in need:
            return
        expected = min(chunk_size, size - index * chunk_size)
        if len(msg.payload) != expected:
            log.warning("ota: chunk %d has %d bytes, expected %d; ignored", index,
                        len(msg.payload), expected)
            return
        _write_durably(chunk_dir / f"{index:06d}", [msg.payload])
        with lock:
            need.discard(index)
            last[0] = time.monotonic()
        changed.set()

    if need:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.tls_set_context(ctx)
        client.on_connect = on_connect
        client.on_message = on_message
        try:
            client.connect(host, port, keepalive=30)
        except (OSError, ValueError) as e:
            raise DeliveryError(f"cannot reach the broker {host}:{port} for the download: "
                                f"{e}") from None
        client.loop_start()
        try:
            while not stop.is_set():
                changed.wait(0.5)
                changed.clear()
                if errors:
                    raise DeliveryError(errors[0])
                with lock:
                    left = len(need)
                    idle = time.monotonic() - last[0]
                if progress:
                    progress(total - left, total)
                if not left:
                    break
                if idle > idle_timeout_s:
                    raise DeliveryError(f"no chunk for {idle_timeout_s:.0f} s; {left} of "
                                        f"{total} still missing; will resume")
        finally:
            client.disconnect()
            client.loop_stop()
        if stop.is_set():
            raise DeliveryError("stopped")
    _write_durably(dest, ((chunk_dir / f"{i:06d}").read_bytes() for i in range(total)))


def _write_durably(path: Path, parts: Iterable[bytes]) -> None:
    """Write beside ``path``, fsync, then rename: after a power cut ``path`` is either
    absent or complete, never a torn file (a chunk is only counted once it is on disk)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        for part in parts:
            out.write(part)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 16):
            h.update(block)
    return h.hexdigest()

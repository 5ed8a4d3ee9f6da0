"""The OTA job: fetch -> check SHA-256 -> verify the signed manifest -> anti-rollback ->
unpack into the inactive slot -> record the trial -> switch ``current`` -> restart.

The job is persisted (``STATE_DIR/ota-job.json``) before anything is fetched, so a reboot in
the middle resumes it at the next start with the chunks or bytes already on disk. The trial
is recorded BEFORE the symlink switch: whatever happens next, the next start either runs the
new release on trial or finds an interrupted install it rolls back.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import __version__
from ..model import Event, now_ms
from .bundle import BundleError, check_upgrade, extract_release, read_manifest
from .command import Command
from .delivery import (DeliveryError, chunk_count, fetch_https, fetch_mqtt, https_context,
                       sha256_file)
from .handler import CommandFailed
from .launcher import read_json, save_trial, switch_symlink, write_json_atomic
from .slots import Layout, LayoutError
from .. import events as kinds

log = logging.getLogger("gateway.fleet.ota")

JOB_FILE = "ota-job.json"
INSTALLED_FILE = "installed.json"
DEFAULT_CHUNK = 32 * 1024
MAX_TRIES = 8


@dataclass
class OtaSettings:
    layout: Layout | None
    state_dir: Path
    release_keys: dict[bytes, Ed25519PublicKey]
    gateway_id: str
    topic_prefix: str
    host: str
    port: int
    ca: str
    cert: str
    key: str
    deadline_s: float
    max_attempts: int
    idle_timeout_s: float = 60.0
    retry_min_s: float = 2.0


class OtaManager:
    def __init__(self, s: OtaSettings, emit: Callable[[Event], None],
                 restart: Callable[[str], None]) -> None:
        self.s = s
        self.emit = emit
        self.restart = restart
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._job: dict[str, Any] | None = None

    # ------------------------------------------------------------------ state
    def installed(self) -> dict[str, Any]:
        """Version and security version the anti-rollback rule compares against."""
        got = read_json(self.s.state_dir / INSTALLED_FILE, None)
        if isinstance(got, dict) and "security_version" in got:
            return got
        info: dict[str, Any] = {}
        if self.s.layout is not None:
            try:
                info = self.s.layout.release_info(self.s.layout.active_slot())
            except LayoutError:
                pass
        return {"version": info.get("version", __version__),
                "security_version": int(info.get("security_version", 0))}

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---------------------------------------------------------------- command
    def command(self, cmd: Command) -> dict[str, Any]:
        """The ``ota`` command: validate, persist the job, start it in the background."""
        if self.s.layout is None:
            raise CommandFailed("OTA is disabled: fleet.releases_dir is not configured")
        try:
            self.s.layout.inactive_slot()
        except LayoutError as e:
            raise CommandFailed(str(e)) from None
        if not self.s.release_keys:
            raise CommandFailed("OTA is disabled: no fleet.release_keys configured")
        a = cmd.args
        sha, size = a.get("sha256"), a.get("size")
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise CommandFailed("args.sha256 must be the bundle's SHA-256 in lower-case hex")
        if type(size) is not int or not 0 < size <= 512 * 1024 * 1024:
            raise CommandFailed("args.size must be the bundle size in bytes")
        url = a.get("url")
        chunk = a.get("chunk_size", DEFAULT_CHUNK)
        if url is not None and not (isinstance(url, str) and url.startswith("https://")):
            raise CommandFailed("args.url must be an https:// URL (or absent for MQTT chunks)")
        if type(chunk) is not int or not 1024 <= chunk <= 256 * 1024:
            raise CommandFailed("args.chunk_size must be 1024-262144")
        if self.busy:
            if self._job and self._job.get("sha256") == sha:
                return {"status": "already in progress"}
            raise CommandFailed("another update is in progress")
        job = {"id": cmd.id, "sha256": sha, "size": size, "url": url, "chunk_size": chunk,
               "created_ms": now_ms()}
        write_json_atomic(self.s.state_dir / JOB_FILE, job)
        self._start(job)
        return {"status": "started", "via": "https" if url else "mqtt",
                "installed": self.installed()}

    def resume(self) -> None:
        """At start: continue a job a restart interrupted."""
        job = read_json(self.s.state_dir / JOB_FILE, None)
        if isinstance(job, dict) and "sha256" in job:
            log.info("ota: resuming update %s (bundle %s)", job.get("id"), job["sha256"][:12])
            self._event(kinds.OTA_RESUMED, job)
            self._start(job)

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(15)

    def _start(self, job: dict[str, Any]) -> None:
        self._job = job
        self._thread = threading.Thread(target=self._run, args=(job,), name="fleet-ota",
                                        daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------- job
    def _event(self, kind: str, job: dict[str, Any], severity: str = "info", **detail: Any) -> None:
        self.emit(Event(kind, now_ms(), "fleet", severity=severity, detail={
            "id": job.get("id", ""), "sha256": job.get("sha256", ""), **detail}))

    def _run(self, job: dict[str, Any]) -> None:
        try:
            self._work(job)
        except BundleError as e:
            self._fail(job, e.reason, str(e))
        except CommandFailed as e:
            self._fail(job, "refused", str(e))
        except Exception as e:  # noqa: BLE001 - reported, the runtime goes on
            log.exception("ota: update failed")
            self._fail(job, "error", f"{type(e).__name__}: {e}")

    def _fail(self, job: dict[str, Any], reason: str, message: str) -> None:
        if reason == "stopped":
            return  # the job file stays: the next start resumes it
        log.error("ota: update %s failed (%s): %s", job.get("id"), reason, message)
        self._event(kinds.OTA_FAILED, job, "error", reason=reason, error=message)
        if reason == "download_failed":  # keep what arrived: a new command resumes from it
            (self.s.state_dir / JOB_FILE).unlink(missing_ok=True)
        else:
            self._cleanup(job)

    def _cleanup(self, job: dict[str, Any]) -> None:
        downloads = self.s.state_dir / "downloads"
        shutil.rmtree(downloads / job["sha256"], ignore_errors=True)
        for p in downloads.glob(job["sha256"] + "*"):
            p.unlink(missing_ok=True)
        (self.s.state_dir / JOB_FILE).unlink(missing_ok=True)

    def _work(self, job: dict[str, Any]) -> None:
        s = self.s
        sha, size = job["sha256"], job["size"]
        downloads = s.state_dir / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        bundle = downloads / f"{sha}.bundle"
        self._event(kinds.OTA_DOWNLOADING, job, size=size, via="https" if job["url"] else "mqtt")
        self._download(job, bundle)
        got = sha256_file(bundle)
        if got != sha:
            raise BundleError("digest_mismatch", f"downloaded bundle has SHA-256 {got[:16]}..., "
                              f"the command says {sha[:16]}...")
        m = read_manifest(bundle, s.release_keys)
        inst = self.installed()
        check_upgrade(m, str(inst["version"]), int(inst["security_version"]))
        self._event(kinds.OTA_VERIFIED, job, version=m.version, security_version=m.security_version,
                    installed=inst)
        assert s.layout is not None
        old, new = s.layout.active_slot(), s.layout.inactive_slot()
        target = s.layout.slot_dir(new)
        shutil.rmtree(target, ignore_errors=True)
        extract_release(bundle, m, target)
        trial = {
            "kind": "ota", "id": job["id"], "created_ms": now_ms(), "attempts": 0,
            "max_attempts": s.max_attempts, "deadline_s": s.deadline_s,
            "expect_root": str(target),
            "undo": [{"op": "symlink", "link": str(s.layout.current),
                      "target": s.layout.link_target(old)}],
            "commit": [{"op": "write_json", "path": str(s.state_dir / INSTALLED_FILE),
                        "data": {"version": m.version, "security_version": m.security_version,
                                 "slot": new}}],
            "info": {"from_version": inst["version"], "to_version": m.version,
                     "security_version": m.security_version, "slot": new, "previous_slot": old},
        }
        save_trial(s.state_dir, trial)
        switch_symlink(s.layout.current, s.layout.link_target(new))
        self._cleanup(job)
        log.info("ota: release %s installed in slot %s; restarting into it", m.version, new)
        self._event(kinds.OTA_INSTALLED, job, version=m.version, slot=new, previous_slot=old)
        self.restart(f"OTA: restarting into release {m.version} (slot {new})")

    def _download(self, job: dict[str, Any], bundle: Path) -> None:
        s = self.s
        if bundle.exists() and bundle.stat().st_size == job["size"]:
            return
        delay = s.retry_min_s
        last_pct = [-1]

        def progress(done: int, total: int) -> None:
            pct = done * 100 // max(total, 1)
            if pct // 25 != last_pct[0] // 25 and pct < 100:
                last_pct[0] = pct
                self._event(kinds.OTA_PROGRESS, job, done=done, total=total, percent=pct)

        for attempt in range(1, MAX_TRIES + 1):
            try:
                if job["url"]:
                    ctx = https_context(s.ca, s.cert, s.key)
                    fetch_https(job["url"], bundle, job["size"], ctx, self.stopping, progress)
                else:
                    ctx = https_context(s.ca, s.cert, s.key)
                    fetch_mqtt(host=s.host, port=s.port, ctx=ctx,
                               client_id=f"{s.gateway_id}-ota", prefix=s.topic_prefix,
                               sha256=job["sha256"], size=job["size"],
                               chunk_size=job["chunk_size"],
                               chunk_dir=bundle.parent / job["sha256"], dest=bundle,
                               stop=self.stopping, progress=progress,
                               idle_timeout_s=s.idle_timeout_s)
                return
            except DeliveryError as e:
                if self.stopping.is_set():
                    raise BundleError("stopped", "stopped") from None
                if attempt == MAX_TRIES:
                    raise BundleError("download_failed", str(e)) from None
                log.warning("ota: download attempt %d failed: %s; retrying in %.0f s",
                            attempt, e, delay)
                self._event(kinds.OTA_RETRYING, job, "warning", attempt=attempt, error=str(e))
                if self.stopping.wait(delay):
                    raise BundleError("stopped", "stopped") from None
                delay = min(delay * 2, 120)

    @staticmethod
    def total_chunks(size: int, chunk_size: int) -> int:
        return chunk_count(size, chunk_size)

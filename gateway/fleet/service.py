"""The fleet side of the runtime: command handler, executors, OTA, trials, watchdog.

The runtime creates one :class:`Fleet` after opening the store, hands its ``on_command`` to
the uplink (which subscribes to the command topics) and calls :meth:`Fleet.started` once the
drivers run. The runtime is only used through the small :class:`FleetHost` surface below.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Protocol

from .. import __version__, driverset
from ..control.reload import plan_reload
from ..health import HealthSnapshot
from ..model import Event, now_ms
from ..wire.cose import keyring, load_public_key
from . import keys
from .command import Command
from .handler import CommandFailed, CommandHandler
from .health import TrialMonitor, wait_healthy
from .launcher import drop_outcomes, finish_trial, load_trial, read_outcomes, save_trial
from .ota import OtaManager, OtaSettings
from .slots import Layout, LayoutError
from .watchdog import Watchdog, notify
from .. import events as kinds

log = logging.getLogger("gateway.fleet")

OUTCOME_EVENTS = {True: "committed", False: "rolled_back"}


def _restart_needed(old: Any, new: Any) -> bool:
    """Sections the console's hot reload cannot apply (anything but drivers and logging)."""
    return bool(plan_reload(old, new).restart_needed)


class FleetHost(Protocol):
    config: Any
    store: Any
    uplink: Any
    drivers: Iterable[Any]

    def health(self) -> HealthSnapshot: ...
    def emit_event(self, event: Event) -> None: ...
    def request_restart(self, reason: str) -> None: ...


def command_topics(prefix: str, gateway_id: str, fleet_topic: str | None) -> list[str]:
    return [f"{prefix}/{gateway_id}/down/cmd", fleet_topic or f"{prefix}/fleet/down/cmd"]


class Fleet:
    def __init__(self, host: FleetHost) -> None:
        self.host = host
        c = host.config
        f = c.fleet
        self.gateway_id = c.gateway.id
        self.started_mono = time.monotonic()
        self.state_dir = Path(f.state_dir or Path(c.store.path).parent / "fleet")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        trusted = keyring(load_public_key(p) for p in f.command_keys)
        self.layout = Layout(Path(f.releases_dir)) if f.releases_dir else None
        u = c.uplink
        self.ota = OtaManager(OtaSettings(
            layout=self.layout, state_dir=self.state_dir,
            release_keys=keyring(load_public_key(p) for p in f.release_keys),
            gateway_id=self.gateway_id, topic_prefix=u.topic_prefix, host=u.host, port=u.port,
            ca=u.ca, cert=u.cert, key=u.key, deadline_s=f.health_deadline_s,
            max_attempts=f.max_start_attempts), emit=self._emit_durably,
            restart=host.request_restart)
        self.topics = command_topics(u.topic_prefix, self.gateway_id, f.topic) if trusted else []
        self.handler = CommandHandler(self.gateway_id, trusted, host.store, {
            "diagnostics": self.cmd_diagnostics, "read_now": self.cmd_read_now,
            "reboot": self.cmd_reboot, "set_config": self.cmd_set_config,
            "rotate_cert": self.cmd_rotate_cert, "install_cert": self.cmd_install_cert,
            "rotate_key": self.cmd_rotate_key, "activate_key": self.cmd_activate_key,
            "ota": self.ota.command,
        }, max_seq_jump=f.max_seq_jump)
        self.monitor: TrialMonitor | None = None
        self.watchdog = Watchdog(self.dead_threads)
        if not trusted:
            log.info("fleet: no fleet.command_keys configured: downlink commands disabled")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """After the store opened, before the uplink connects."""
        self.report_outcomes()
        trial = load_trial(self.state_dir)
        if trial is not None:
            log.info("fleet: on trial: new %s (%s), attempt %s of %s, deadline %s s",
                     trial.get("kind"), trial.get("id"), trial.get("attempts"),
                     trial.get("max_attempts"), trial.get("deadline_s"))
            self.host.emit_event(Event(f"{trial.get('kind', 'trial')}.trial_started", now_ms(),
                                       "fleet", detail={"id": trial.get("id", ""),
                                                        "attempt": trial.get("attempts", 0),
                                                        **trial.get("info", {})}))
        if self.topics:
            self.handler.start()

    def started(self) -> None:
        """After the drivers and the uplink started: health monitor, OTA resume, systemd."""
        trial = load_trial(self.state_dir)
        if trial is not None:
            self.monitor = TrialMonitor(
                self.state_dir, trial, broker_reached=self._broker_reached,
                drivers=lambda: [(d.bus, d.is_alive()) for d in self.host.drivers],
                on_done=self._trial_done, settle_s=self.host.config.fleet.health_settle_s)
            self.monitor.start()
        else:
            self.ota.resume()
        notify(f"READY=1\nSTATUS=gateway {self.gateway_id} running")
        if self.watchdog.enabled:
            self.watchdog.start()

    def stop(self) -> None:
        notify("STOPPING=1")
        self.watchdog.stop()
        if self.monitor is not None:
            self.monitor.stopping.set()
        self.ota.stop()
        self.handler.stop()

    def on_command(self, topic: str, payload: bytes) -> None:
        self.handler.on_command(topic, payload)

    def dead_threads(self, snap: HealthSnapshot | None = None) -> list[str]:
        dead = (snap or self.host.health()).dead_threads()
        if self.topics and not self.handler.thread.is_alive():
            dead.append(self.handler.thread.name)
        if not threading.main_thread().is_alive():
            dead.append("main")
        return dead

    # ------------------------------------------------------------------ trials
    def _broker_reached(self) -> bool:
        st = getattr(self.host.uplink, "state", None)
        return bool(st and (st.connected or st.messages_acked))

    def _trial_done(self, ok: bool, reason: str) -> None:
        self.report_outcomes()
        if not ok:
            self.host.request_restart(f"trial failed: {reason}")

    def report_outcomes(self) -> None:
        """Publish the outcome of finished trials (durably) and only then forget them."""
        outcomes = read_outcomes(self.state_dir)
        if not outcomes:
            return
        events = [Event(f"{o.get('kind', 'trial')}.{OUTCOME_EVENTS[bool(o.get('ok'))]}",
                        int(o.get("ts_ms", now_ms())), "fleet",
                        severity="info" if o.get("ok") else "error",
                        detail={"id": o.get("id", ""), "reason": o.get("reason", ""),
                                "attempts": o.get("attempts", 0), **o.get("info", {})})
                  for o in outcomes]
        self.host.store.append(events)
        drop_outcomes(self.state_dir, {o.get("id") for o in outcomes})

    def _emit_durably(self, event: Event) -> None:
        self.host.store.append([event])

    def _new_trial(self, kind: str, cmd: Command, undo: list[dict[str, Any]],
                   info: dict[str, Any], commit: list[dict[str, Any]] | None = None) -> None:
        if load_trial(self.state_dir) is not None:
            raise CommandFailed("another change is still on trial; try again later")
        f = self.host.config.fleet
        save_trial(self.state_dir, {
            "kind": kind, "id": cmd.id, "created_ms": now_ms(), "attempts": 0,
            "max_attempts": f.max_start_attempts, "deadline_s": f.health_deadline_s,
            "undo": undo, "commit": commit or [], "info": info})

    def _restart_after_result(self, reason: str) -> None:
        """Restart once the command's result is durably stored (the handler calls us back)."""
        self.handler.defer(lambda: self.host.request_restart(reason))

    # ------------------------------------------------------------------ commands
    def cmd_diagnostics(self, cmd: Command) -> dict[str, Any]:
        h = self.host
        snap = h.health()
        st, u = snap.store, snap.uplink
        out: dict[str, Any] = {
            "firmware": __version__, "uptime_s": int(time.monotonic() - self.started_mono),
            "pid": os.getpid(), "config_hash": snap.config_hash,
            "store": {"depth": st["depth"], "bytes": st["bytes"], "last_seq": st["last_seq"],
                      "evicted": st["evicted_records"], "full_errors": st["full_errors"]},
            "uplink": {} if not u else {
                "connected": u["connected"], "connect_failures": u["connect_failures"],
                "messages_acked": u["messages_acked"], "last_error": u["last_error"] or ""},
            "drivers": {b.name: {"alive": b.alive, "meters": len(b.meters)}
                        for b in snap.buses.values()},
            "fleet": dict(self.handler.counters), "ota": self.ota.installed(),
            "dead_threads": self.dead_threads(snap),
        }
        control = getattr(h, "control", None)
        if control is not None:
            out["audit"] = control.audit.head()  # the console audit chain head
        if self.layout is not None:
            try:
                out["slot"] = self.layout.active_slot()
            except LayoutError:
                pass
        board = getattr(h.config, "board", None)
        temp_path = (board or {}).get("temperature", {}) if isinstance(board, dict) else {}
        if temp_path and temp_path.get("path"):
            try:
                raw = Path(temp_path["path"]).read_text().strip()
                out["temperature_c"] = int(raw) / float(temp_path.get("scale", 1000))
            except (OSError, ValueError):
                out["temperature_c"] = None
        try:
            out["load"] = list(os.getloadavg())
            fs = os.statvfs(Path(h.config.store.path).parent)
            out["disk_free_bytes"] = fs.f_bavail * fs.f_frsize
        except OSError:
            pass
        return out

    def cmd_read_now(self, cmd: Command) -> dict[str, Any]:
        """Read meters now through the drivers' ``read_now(meter_id)`` (the console's
        ``read ID``); the readings are stored and delivered as usual.
        args: ``meters`` (ids; default all), ``drivers`` (bus names; default all)."""
        meters, buses = cmd.args.get("meters"), cmd.args.get("drivers")
        read: dict[str, int] = {}
        failed: dict[str, str] = {}
        unsupported: list[str] = []
        for d in self.host.drivers:
            if buses and d.bus not in buses:
                continue
            if not callable(getattr(d, "read_now", None)) or \
                    not callable(getattr(d, "meter_stats", None)):
                unsupported.append(d.bus)
                continue
            for mid in list(driverset.meter_stats(d))[:1000]:
                if meters and mid not in meters:
                    continue
                try:
                    read[mid] = len(driverset.read_now(d, mid))
                except Exception as e:  # noqa: BLE001 - one meter's failure is reported
                    failed[mid] = f"{type(e).__name__}: {e}"
        if not read and not failed:
            raise CommandFailed("no meter could be read on demand" + (
                f" (drivers without read_now: {', '.join(unsupported)})" if unsupported else ""))
        return {"read": read, "failed": failed, "unsupported": unsupported}

    def cmd_reboot(self, cmd: Command) -> dict[str, Any]:
        mode = cmd.args.get("mode", "service")
        if mode == "service":
            self._restart_after_result("reboot command: restarting the service")
            return {"mode": "service"}
        if mode != "system":
            raise CommandFailed('args.mode must be "service" or "system"')
        argv = list(self.host.config.fleet.reboot_command)

        def later() -> None:
            try:
                subprocess.run(argv, check=True, timeout=60)
            except (OSError, subprocess.SubprocessError) as e:
                log.error("fleet: reboot command %s failed: %s", argv, e)
                self.host.emit_event(Event(kinds.FLEET_REBOOT_FAILED, now_ms(), "fleet",
                                           severity="error", detail={"error": str(e)}))
        self.handler.defer(later)
        return {"mode": "system", "command": argv}

    def cmd_set_config(self, cmd: Command) -> dict[str, Any]:
        """Validate like ``gateway check-config``; apply like the console's ``config apply``
        (hot, drivers only) or, when other sections change, by a restart. Either way the new
        config is on trial: failing health checks restore the previous file (and drivers)."""
        from ..config import ConfigError, load_config
        text = cmd.args.get("config")
        if not isinstance(text, str) or not text.strip():
            raise CommandFailed("args.config must be the new config file's YAML text")
        old = self.host.config
        path = Path(old.source_path)
        candidate = path.with_name(f".{path.name}.candidate")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     os.stat(path).st_mode & 0o777)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            new = load_config(candidate)
        except ConfigError as e:
            candidate.unlink(missing_ok=True)
            problems = [str(i).replace(str(candidate), path.name) for i in e.issues[:10]]
            raise CommandFailed("new config refused: " + "; ".join(problems)) from None
        if new.gateway.id != self.gateway_id:
            candidate.unlink(missing_ok=True)
            raise CommandFailed(f"new config is for gateway {new.gateway.id!r}, not "
                                f"{self.gateway_id!r}")
        new = dataclasses.replace(new, source_path=str(path))
        backup = path.with_name(path.name + ".prev")
        keys.write_public(backup, path.read_bytes())
        os.chmod(backup, os.stat(path).st_mode & 0o777)
        info = {"config_hash": new.config_hash, "previous_hash": old.config_hash}
        self._new_trial("config", cmd, undo=[{"op": "restore", "path": str(path),
                                              "backup": str(backup)}], info=info)
        os.replace(candidate, path)
        result = {**info, "warnings": [str(w) for w in new.warnings[:10]]}
        apply = getattr(self.host, "apply_config", None)
        if apply is None or _restart_needed(old, new):
            self._restart_after_result("set_config: restarting with the new config")
            return {**result, "applied": "restart"}
        trial = load_trial(self.state_dir) or {}
        try:
            result["reload"] = apply(new)
        except Exception as e:  # noqa: BLE001 - ReloadRefused or a driver that cannot start
            finish_trial(self.state_dir, trial, False, f"hot reload refused: {e}")
            self.report_outcomes()
            raise CommandFailed(f"new config not applied: {e}") from None
        f = new.fleet
        got = wait_healthy(f.health_deadline_s, f.health_settle_s, self._broker_reached,
                           lambda: [(d.bus, d.is_alive()) for d in self.host.drivers],
                           threading.Event())
        ok, reason = got or (False, "interrupted")
        if not ok:
            try:
                apply(old)
            except Exception as e:  # noqa: BLE001
                log.error("fleet: restoring the previous drivers failed: %s", e)
                self._restart_after_result("set_config rollback: restarting")
        finish_trial(self.state_dir, trial, ok, reason if ok else reason + "; rolled back")
        self.report_outcomes()
        if not ok:
            raise CommandFailed(f"new config failed its health checks ({reason}); the previous "
                                "config is back")
        return {**result, "applied": "hot"}

    def cmd_rotate_cert(self, cmd: Command) -> dict[str, Any]:
        u = self.host.config.uplink
        csr = keys.new_tls_key_and_csr(u.key + ".new", self.gateway_id)
        return {"csr": csr.decode(), "key": "generated on the gateway; never leaves it"}

    def cmd_install_cert(self, cmd: Command) -> dict[str, Any]:
        u = self.host.config.uplink
        pem = cmd.args.get("cert")
        pending = Path(u.key + ".new")
        if not isinstance(pem, str):
            raise CommandFailed("args.cert must be the PEM certificate")
        if not pending.exists():
            raise CommandFailed("no pending key: send rotate_cert first")
        try:
            cert = keys.check_new_cert(pem.encode(), pending, u.ca, self.gateway_id)
        except keys.KeyFileError as e:
            raise CommandFailed(str(e)) from None
        keys.write_private(u.key + ".prev", Path(u.key).read_bytes())
        keys.write_public(u.cert + ".prev", Path(u.cert).read_bytes())
        self._new_trial("credentials", cmd, undo=[
            {"op": "restore", "path": u.cert, "backup": u.cert + ".prev"},
            {"op": "restore", "path": u.key, "backup": u.key + ".prev"}],
            info={"what": "client_cert", "serial": format(cert.serial_number, "x")})
        keys.write_public(u.cert, pem.encode())
        os.replace(pending, u.key)
        self._restart_after_result("install_cert: reconnecting with the new certificate")
        return {"serial": format(cert.serial_number, "x"),
                "not_after": cert.not_valid_after_utc.isoformat()}

    def cmd_rotate_key(self, cmd: Command) -> dict[str, Any]:
        kid, pub = keys.new_signing_key(self.host.config.uplink.signing_key + ".new")
        return {"key_id": kid, "public_key": pub.decode(),
                "next": "register the public key at the head-end, then send activate_key"}

    def cmd_activate_key(self, cmd: Command) -> dict[str, Any]:
        path = self.host.config.uplink.signing_key
        pending = Path(path + ".new")
        if not pending.exists():
            raise CommandFailed("no pending signing key: send rotate_key first")
        kid = keys.signing_key_id(pending)
        if cmd.args.get("key_id") != kid:
            raise CommandFailed(f"args.key_id must name the pending key {kid}")
        keys.write_private(path + ".prev", Path(path).read_bytes())
        self._new_trial("credentials", cmd, undo=[{"op": "restore", "path": path,
                                                   "backup": path + ".prev"}],
                        info={"what": "signing_key", "key_id": kid})
        os.replace(pending, path)
        self._restart_after_result("activate_key: restarting with the new signing key")
        return {"key_id": kid}

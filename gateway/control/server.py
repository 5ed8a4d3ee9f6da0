"""The control socket: a Unix-domain stream socket, one thread per connected console.

Access is the file system's: the socket is mode 0660 and owned by ``control.group``, and the
server checks the peer's credentials (SO_PEERCRED: uid, gid, and the supplementary groups from
/proc) once more, so a permission slip on the socket's directory is not a hole. There is no
TCP listener: remote access is SSH plus this socket.

Nothing a console does can stall the runtime: every connection has its own thread; sends
time out (a console that stops reading is dropped after SEND_TIMEOUT_S); a request must
arrive whole within FRAME_TIMEOUT_S of its first byte; at most MAX_CONSOLES connections.
Drivers only ever hand records to the monitor's bounded queues without waiting.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import select
import socket
import stat
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from .audit import AuditLog, Peer, audit_args
from . import handlers  # noqa: F401 - registers the request handlers
from .requests import REQUESTS, ROLES, Context, ControlHost, RequestError, role_at_least
from .protocol import (PROTOCOL_VERSION, PeerClosed, ProtocolError, error_reply, ok_reply,
                       recv_message, send_message)

if TYPE_CHECKING:
    from ..config import ControlConfig

log = logging.getLogger("gateway.control")

MAX_CONSOLES = 8
IDLE_TIMEOUT_S = 4 * 3600.0   # an interactive console may sit at its prompt for hours
FRAME_TIMEOUT_S = 10.0        # ... but a request, once started, must arrive promptly
SEND_TIMEOUT_S = 10.0         # a console that stops reading is dropped after this
MAX_SUN_PATH = 107            # sockaddr_un.sun_path minus the terminating NUL


class ControlError(Exception):
    """The control socket cannot be served; the message says why and what to check."""


def peer_credentials(conn: socket.socket) -> Peer:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return Peer(pid, uid, gid, user, _groups_of(pid))


def _groups_of(pid: int) -> tuple[int, ...]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


class ControlServer:
    def __init__(self, runtime: ControlHost, cfg: "ControlConfig") -> None:
        self.runtime = runtime
        self.cfg = cfg
        self.path = cfg.socket
        audit_path = cfg.audit_log or os.path.join(os.path.dirname(runtime.config.store.path),
                                                   "audit.log")
        self.audit = AuditLog(audit_path, cfg.audit_max_bytes, cfg.audit_backups,
                              emit=runtime.emit_event)
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._gid = -1
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, Peer] = {}
        self._accept_thread = threading.Thread(target=self._accept_loop, name="control",
                                               daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._sock = self._bind()
        self._accept_thread.start()
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        log.info("control: console socket %s (mode %04o, group %s); audit log %s", self.path,
                 mode, _group_name(self._gid), self.audit.path)
        for group, role in (self.cfg.roles or {}).items():
            try:
                grp.getgrnam(group)
            except KeyError:
                log.warning("control: control.roles names group %r (%s), which does not "
                            "exist: nobody gets that role", group, role)

    def _bind(self) -> socket.socket:
        path = self.path
        if len(os.fsencode(path)) > MAX_SUN_PATH:
            raise ControlError(f"socket path {path} is longer than {MAX_SUN_PATH} bytes; "
                               "choose a shorter control.socket")
        gid = -1
        if self.cfg.group:
            try:
                gid = grp.getgrnam(self.cfg.group).gr_gid
            except KeyError:
                raise ControlError(f"control.group {self.cfg.group!r} does not exist; create "
                                   "it (groupadd) or fix the config") from None
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        self._remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o660)  # before listen(): nobody can connect in between
            if gid >= 0:
                os.chown(path, -1, gid)
            sock.listen(MAX_CONSOLES)
            sock.settimeout(0.5)
        except OSError:
            sock.close()
            raise
        st = os.stat(path)
        self._inode = (st.st_dev, st.st_ino)
        self._gid = st.st_gid
        return sock

    @staticmethod
    def _remove_stale(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{path} exists and is not a socket; remove it or choose another "
                               "control.socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody answers: left over from a crash
            return
        finally:
            probe.close()
        raise ControlError(f"another gateway is serving {path}; is one already running?")

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            self._sock.close()
        self._accept_thread.join(2) if self._accept_thread.ident else None
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def connection_count(self) -> int:
        with self._lock:
            return len(self._conns)

    # ------------------------------------------------------------------ connections
    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                log.error("control: accept failed: %s", exc)
                time.sleep(0.5)
                continue
            try:
                self._admit(conn)
            except Exception:
                log.exception("control: could not serve a console")
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        conn.settimeout(SEND_TIMEOUT_S)
        peer = peer_credentials(conn)
        if not self._allowed(peer):
            log.warning("control: refused console of uid %d (%s): not root, not the gateway "
                        "user, not in group %s", peer.uid, peer.user, _group_name(self._gid))
            self._say_and_close(conn, error_reply(None, "permission_denied",
                                f"user {peer.user} is not in group {_group_name(self._gid)}"))
            self.audit.record(peer, "(connect)", {}, False, "refused: not in group "
                              f"{_group_name(self._gid)}")
            return
        with self._lock:
            full = len(self._conns) >= MAX_CONSOLES
            if not full:
                self._conns[conn] = peer
        if full:
            self._say_and_close(conn, error_reply(None, "busy", f"{MAX_CONSOLES} consoles are "
                                                  "already connected; try again later"))
            return
        threading.Thread(target=self._serve, args=(conn, peer), daemon=True,
                         name=f"console-{peer.user}-{peer.pid}").start()

    def _allowed(self, peer: Peer) -> bool:
        """Root, the gateway user, the socket's group; or a group given a role (the socket's
        mode still has the last word on who can connect at all)."""
        have = {peer.gid, *peer.groups}
        return (peer.uid in (0, os.geteuid()) or self._gid in have
                or bool(have & set(_gids(self.cfg.roles or {}))))

    def role_of(self, peer: Peer) -> str:
        """The peer's console role: the highest that ``control.roles`` gives any of its
        groups (primary and supplementary, from SO_PEERCRED and /proc). Root and the gateway
        user are admin; with no roles configured, so is everyone let in; a console user in
        none of the configured groups is a viewer."""
        roles = self.cfg.roles or {}
        if not roles or peer.uid in (0, os.geteuid()):
            return "admin"
        have = {peer.gid, *peer.groups}
        best = "viewer"
        for group, role in roles.items():
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                continue
            if gid in have and ROLES.index(role) > ROLES.index(best):
                best = role
        return best

    @staticmethod
    def _say_and_close(conn: socket.socket, msg: dict[str, Any]) -> None:
        try:
            send_message(conn, msg)
        except OSError:
            pass
        conn.close()

    def _serve(self, conn: socket.socket, peer: Peer) -> None:
        log.info("control: console connected: %s (uid %d, pid %d)", peer.user, peer.uid, peer.pid)
        why = "closed"
        try:
            while not self._stopping.is_set():
                try:
                    msg = recv_message(conn, IDLE_TIMEOUT_S, FRAME_TIMEOUT_S)
                except PeerClosed:
                    break
                except ProtocolError as exc:
                    why = f"protocol error: {exc}"
                    conn.settimeout(SEND_TIMEOUT_S)
                    send_message(conn, error_reply(None, "protocol_error", str(exc)))
                    break
                conn.settimeout(SEND_TIMEOUT_S)
                if not self._handle(conn, peer, msg):
                    break
        except (TimeoutError, socket.timeout):
            why = "timed out (console stopped reading or stalled mid-request)"
        except OSError as exc:
            why = f"connection lost ({exc.strerror or exc})"
        except Exception:
            log.exception("control: console handler failed")
            why = "internal error"
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            conn.close()
            log.info("control: console of %s (pid %d) %s", peer.user, peer.pid, why)

    def _handle(self, conn: socket.socket, peer: Peer, msg: dict[str, Any]) -> bool:
        """Serve one request; False when the connection should close."""
        req_id = msg.get("id")
        if msg.get("v") != PROTOCOL_VERSION:
            send_message(conn, error_reply(req_id, "unsupported_version",
                                           f"this gateway speaks control protocol version "
                                           f"{PROTOCOL_VERSION}, the console sent {msg.get('v')!r}",
                                           supported=[PROTOCOL_VERSION]))
            return False
        name = msg.get("cmd")
        if name == "cancel":
            return True  # a cancel that raced with the end of its stream
        cmd = REQUESTS.get(name) if isinstance(name, str) else None
        if cmd is None:
            self._audit(None, peer, {}, False, "unknown command")
            send_message(conn, error_reply(req_id, "unknown_command", f"unknown command {name!r}"))
            return True
        args = msg.get("args") or {}
        try:
            if not isinstance(args, dict):
                args = {}
                raise RequestError("bad_request", "args must be an object")
            cmd.check_args(args)
            role = self.role_of(peer)
            if not role_at_least(role, cmd.role):
                raise RequestError("permission_denied", f"permission denied: needs {cmd.role}",
                                   role=role, needs=cmd.role)
        except RequestError as exc:
            self._audit(cmd, peer, args, False, str(exc), forward=True)
            send_message(conn, error_reply(req_id, exc.code, str(exc), **exc.extra))
            return True
        gone = [False]

        def send_item(item: dict[str, Any]) -> None:
            send_message(conn, {"v": PROTOCOL_VERSION, "id": req_id, "item": item})

        def cancelled() -> bool:
            if gone[0]:
                return True
            try:
                readable, _, _ = select.select([conn], [], [], 0)
            except (OSError, ValueError):
                gone[0] = True
                return True
            if readable:
                try:
                    recv_message(conn, FRAME_TIMEOUT_S, FRAME_TIMEOUT_S)  # a cancel, or EOF
                except (PeerClosed, ProtocolError, OSError):
                    pass
                finally:
                    conn.settimeout(SEND_TIMEOUT_S)
                gone[0] = True
            return gone[0] or self._stopping.is_set()

        ctx = Context(self.runtime, self, peer, send_item, cancelled)
        try:
            result = cmd.run(ctx, args)
        except RequestError as exc:
            self._audit(cmd, peer, args, False, str(exc))
            send_message(conn, error_reply(req_id, exc.code, str(exc), **exc.extra))
            return True
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF) or \
                    isinstance(exc, (TimeoutError, socket.timeout)):
                self._audit(cmd, peer, args, False, "console went away")
                raise
            self._audit(cmd, peer, args, False, f"failed: {exc}")
            send_message(conn, error_reply(req_id, "os_error", str(exc)))
            return True
        except Exception as exc:
            log.exception("control: %s failed", name)
            self._audit(cmd, peer, args, False, f"internal error: {exc}")
            send_message(conn, error_reply(req_id, "internal", f"internal error: {exc}"))
            return True
        self._audit(cmd, peer, args, True, _result_line(result))
        send_message(conn, ok_reply(req_id, result))
        return True

    def _audit(self, cmd: Any, peer: Peer, args: dict[str, Any], ok: bool, result: str,
               forward: bool = False) -> None:
        """Every console command goes into the audit log (hello aside: it is the handshake),
        with only its declared, non-secret arguments; state-changing ones, and refusals,
        also go up as control.audit events."""
        if cmd is not None and cmd.name == "hello":
            return
        name = cmd.name if cmd is not None else "(unknown)"
        safe = audit_args(args, cmd.declared()) if cmd is not None else {}
        mid = safe.get("meter_id") if isinstance(safe.get("meter_id"), str) else None
        up = forward or (cmd is not None and cmd.audited)
        entry = self.audit.record(peer, name, safe, ok, result, mid, forward=up)
        log.log(logging.INFO if up else logging.DEBUG, "control: audit: %s by %s (uid %d): %s",
                name, peer.user, peer.uid, "ok" if ok else "failed: " + entry["result"])


def _result_line(result: Any) -> str:
    if isinstance(result, dict):
        if "message" in result:
            return str(result["message"])
        parts = [f"{k} {', '.join(map(str, result[k]))}" for k in ("added", "removed", "changed")
                 if result.get(k)]
        if parts:
            return "; ".join(parts)
    return "ok"


def _gids(groups: Any) -> list[int]:
    out = []
    for g in groups:
        try:
            out.append(grp.getgrnam(g).gr_gid)
        except KeyError:
            continue
    return out


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return str(gid)


def start_control(runtime: ControlHost) -> ControlServer | None:
    """Serve the console if possible. Never fatal: collecting readings matters more than the
    console, so a bad socket path is a clear error in the log and the runtime goes on."""
    server = ControlServer(runtime, runtime.config.control)
    try:
        server.start()
    except (ControlError, OSError) as exc:
        log.error("control: the console is unavailable: cannot serve %s: %s", server.path,
                  getattr(exc, "strerror", None) or exc)
        return None
    return server


__all__ = ["ControlServer", "ControlError", "start_control"]

"""The console's end of the control socket: connect, say hello, call commands, follow streams."""

from __future__ import annotations

import grp
import itertools
import os
import pwd
import socket
import stat
from typing import Any, Callable, Iterator

from ..control.protocol import (PROTOCOL_VERSION, PeerClosed, ProtocolError, recv_message,
                                send_message)

REPLY_TIMEOUT_S = 180.0   # longest wait for a reply (a slow meter read is bounded by 60 s)
FRAME_TIMEOUT_S = 30.0


class ConsoleError(Exception):
    """Shown as one line; ``exit_code`` for one-shot use."""

    def __init__(self, message: str, exit_code: int = 1, code: str = "", reply: Any = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code
        self.reply = reply or {}


class CannotConnect(ConsoleError):
    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=3, code="cannot_connect")


def explain_connect_error(path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return (f"no control socket at {path}: is the gateway running? (the path is "
                "control.socket in its config; give it with -c CONFIG or --socket PATH)")
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing is listening on {path}: the gateway stopped or crashed"
    if isinstance(exc, PermissionError):
        try:
            st = os.stat(path)
            group = _name(grp.getgrgid, st.st_gid)
            owner = _name(pwd.getpwuid, st.st_uid)
            mode = f"{stat.S_IMODE(st.st_mode):04o}"
            return (f"permission denied on {path} (owner {owner}, group {group}, mode {mode}): "
                    f"ask for your user to be added to group {group}, or use sudo")
        except OSError:
            return (f"permission denied on {path}: you may not enter its directory; "
                    "ask for access to the console group, or use sudo")
    return f"cannot connect to {path}: {exc.strerror or exc}"


def _name(fn: Callable[[int], Any], ident: int) -> str:
    try:
        return fn(ident)[0]
    except KeyError:
        return str(ident)


class ControlClient:
    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.hello: dict[str, Any] = {}
        self._ids = itertools.count(1)

    def connect(self) -> dict[str, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise CannotConnect(explain_connect_error(self.path, exc)) from None
        self.sock = sock
        self.hello = self.call("hello")
        return self.hello

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def _send(self, msg: dict[str, Any]) -> None:
        assert self.sock is not None, "not connected"
        self.sock.settimeout(10)
        try:
            send_message(self.sock, msg)
        except OSError as exc:
            said = self._parting_words()
            self.close()
            if said is not None:
                self._final(said)  # e.g. "user X is not in group Y", said before closing
            raise ConsoleError(f"connection to the gateway lost: {exc.strerror or exc}",
                               exit_code=3, code="connection_lost") from None

    def _parting_words(self) -> dict[str, Any] | None:
        """The error the gateway sent before it hung up on us, if it did."""
        try:
            return recv_message(self.sock, 1, 1) if self.sock is not None else None
        except (OSError, ProtocolError, ValueError):
            return None

    def _recv(self, timeout: float | None) -> dict[str, Any]:
        assert self.sock is not None, "not connected"
        try:
            return recv_message(self.sock, timeout, FRAME_TIMEOUT_S)
        except (PeerClosed, ProtocolError, ConnectionError) as exc:
            self.close()
            raise ConsoleError(f"connection to the gateway lost ({exc})", exit_code=3,
                               code="connection_lost") from None
        except (TimeoutError, socket.timeout):
            self.close()
            raise ConsoleError("the gateway did not answer in time", exit_code=3,
                               code="timeout") from None

    def request(self, cmd: str, args: dict[str, Any] | None = None) -> int:
        req_id = next(self._ids)
        self._send({"v": PROTOCOL_VERSION, "id": req_id, "cmd": cmd, "args": args or {}})
        return req_id

    def _final(self, reply: dict[str, Any]) -> Any:
        if reply.get("ok"):
            return reply.get("result")
        err = reply.get("error") or {}
        code = err.get("code", "error")
        if code == "unsupported_version":
            raise ConsoleError(f"{err.get('message')}; use the console of the same firmware "
                               "as the gateway", exit_code=3, code=code, reply=err)
        if code in ("permission_denied", "busy") and err.get("message"):
            raise ConsoleError(err["message"], exit_code=3, code=code, reply=err)
        raise ConsoleError(err.get("message", "the command failed"), code=code, reply=err)

    def call(self, cmd: str, args: dict[str, Any] | None = None,
             timeout: float = REPLY_TIMEOUT_S) -> Any:
        req_id = self.request(cmd, args)
        while True:
            reply = self._recv(timeout)
            if reply.get("id") not in (req_id, None) or "item" in reply:
                continue  # leftovers of a cancelled stream
            return self._final(reply)

    def stream(self, cmd: str, args: dict[str, Any] | None = None,
               interrupted: Callable[[], bool] = lambda: False) -> Iterator[tuple[str, Any]]:
        """Yields ("item", item) as they come, then ("end", result).

        ``interrupted`` is polled a few times a second (the shell's Ctrl-C flag): then a
        cancel is sent and the server's final result ends the stream. Waiting in short slices
        instead of letting KeyboardInterrupt fly means a frame is never left half-read.
        """
        req_id = self.request(cmd, args)
        cancelled = False
        while True:
            if interrupted() and not cancelled:
                cancelled = True
                self._send({"v": PROTOCOL_VERSION, "cmd": "cancel", "id": req_id})
            try:
                reply = self._recv_slice(0.25)
            except _Idle:
                continue
            if reply.get("id") not in (req_id, None):
                continue
            if "item" in reply:
                if not cancelled:
                    yield "item", reply["item"]
                continue
            yield "end", self._final(reply)
            return

    def _recv_slice(self, wait: float) -> dict[str, Any]:
        assert self.sock is not None, "not connected"
        self.sock.settimeout(wait)
        try:
            first = self.sock.recv(1, socket.MSG_PEEK)
        except (TimeoutError, socket.timeout):
            raise _Idle() from None
        except OSError as exc:
            self.close()
            raise ConsoleError(f"connection to the gateway lost: {exc.strerror or exc}",
                               exit_code=3, code="connection_lost") from None
        if not first:
            self.close()
            raise ConsoleError("the gateway closed the connection", exit_code=3,
                               code="connection_lost")
        return self._recv(FRAME_TIMEOUT_S)



class _Idle(Exception):
    """Nothing arrived during one polling slice."""

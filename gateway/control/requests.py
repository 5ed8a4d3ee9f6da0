"""The control socket's request machinery: a request's name, role, arguments and handler,
the error a handler raises, and what the gateway lends a handler (:class:`ControlHost`).

Apart from the handlers so the server and every handler module import this and never each
other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol

from .audit import Peer

if TYPE_CHECKING:
    from .server import ControlServer


class ControlHost(Protocol):
    """What the request handlers may use of the gateway: never the runtime as a whole."""

    config: Any
    store: Any
    monitor: Any
    drivers: Iterable[Any]
    edge: Any
    fleet: Any
    started_monotonic: float

    def health(self) -> Any: ...
    def emit_event(self, event: Any) -> None: ...
    def apply_config(self, new: Any) -> dict[str, Any]: ...

class RequestError(Exception):
    """A command failed for a reason the technician can act on; shown as one line."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.extra = extra


class Context:
    """One request: the runtime, who asked, and (for streams) how to send items back."""

    def __init__(self, runtime: "ControlHost", server: "ControlServer", peer: Peer,
                 send: Callable[[dict[str, Any]], None], cancelled: Callable[[], bool]) -> None:
        self.runtime = runtime
        self.server = server
        self.peer = peer
        self.send = send
        self.cancelled = cancelled


ROLES = ("viewer", "technician", "admin")  # each may do what the ones before it may


@dataclass(frozen=True)
class Arg:
    """One argument a command takes: its JSON type(s), and whether it is a secret (never
    written to the audit log or sent up, whatever the request looks like)."""

    kind: type | tuple[type, ...]
    secret: bool = False


@dataclass(frozen=True)
class RequestHandler:
    name: str
    run: Callable[[Context, dict[str, Any]], Any]
    audited: bool = False   # changes state: also forwarded to the uplink as control.audit
    stream: bool = False    # sends items before its final reply
    role: str = "viewer"    # the least role that may run it
    args: Mapping[str, Arg] = field(default_factory=dict)  # every argument it accepts

    def check_args(self, args: dict[str, Any]) -> None:
        """Refuse arguments the command does not declare, and declared ones of the wrong
        type, before anything runs (the names of unknown ones are not echoed: they may be
        anything, even a secret sent by mistake)."""
        unknown = [k for k in args if k not in self.args]
        if unknown:
            takes = ", ".join(self.args) or "no arguments"
            raise RequestError("bad_request", f"{self.name}: {len(unknown)} unknown "
                               f"argument(s) refused; it takes {takes}")
        for k, spec in self.args.items():
            v = args.get(k)
            if v is not None and (not isinstance(v, spec.kind) or isinstance(v, bool)
                                  and bool not in _kinds(spec.kind)):
                raise RequestError("bad_request", f"argument {k!r} has the wrong type")

    def declared(self) -> dict[str, bool]:
        """Argument name -> secret, for the audit log."""
        return {k: a.secret for k, a in self.args.items()}


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


REQUESTS: dict[str, RequestHandler] = {}


def handles(name: str, audited: bool = False, stream: bool = False, role: str = "viewer",
            args: Mapping[str, Arg] | None = None):  # type: ignore[no-untyped-def]
    assert role in ROLES, role

    def deco(fn: Callable[[Context, dict[str, Any]], Any]) -> Callable[[Context, dict[str, Any]], Any]:
        REQUESTS[name] = RequestHandler(name, fn, audited, stream, role, dict(args or {}))
        return fn
    return deco


def role_at_least(have: str, need: str) -> bool:
    return ROLES.index(have) >= ROLES.index(need)



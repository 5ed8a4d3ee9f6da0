"""The config and key requests: show, check and apply a config; set a meter key; and the
masking that keeps secrets out of every answer.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import stat
import threading
from typing import Any

from ..text import error_text
from .audit import Peer
from .lookup import METER_ID_RE, find_meter, get_arg, run_bounded, unknown_meter
from .requests import Arg, Context, ControlHost, RequestError, handles


def _config_file(ctx: Context, args: dict[str, Any]) -> tuple[str, bytes]:
    """The named file's path and content, read through one descriptor (see read_as_peer)."""
    path = get_arg(args, "file", str)
    if not os.path.isabs(path):
        raise RequestError("bad_request", "the console sends an absolute path")
    return path, read_as_peer(path, ctx.peer)


def _load(path: str, data: bytes) -> Any:
    from ..config import ConfigError, load_config
    try:
        return load_config(path, data)
    except ConfigError as exc:
        raise RequestError("invalid_config", f"{path}: {len(exc.issues)} error(s); nothing "
                           "was changed; for the values, run `gateway check-config FILE` as "
                           "yourself", issues=[content_free(i) for i in exc.issues],
                           warnings=[content_free(w) for w in exc.warnings]) from None


_GOT = re.compile(r",? got .*$|: (?=/).*$", re.S)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATH = re.compile(r"(?<![\w.])/[^\s,;:()]+")
_KEY_PATH = re.compile(r"[A-Za-z0-9_.\[\]-]{1,120}")


def content_free(issue: Any) -> str:
    """A config issue as location, key path and the kind of problem only: never a value
    from the file (the file may be anything the gateway can read: a key, /etc/shadow).

    The loader's messages read "expected X, got <value>"; the value (and any quoted text or
    path) is cut. Key paths that are not plain names are replaced too."""
    where = f"{issue.file}:{issue.line}:{issue.column}" if issue.line > 0 else issue.file
    msg = _GOT.sub("", issue.message)
    msg = _PATH.sub("(a path)", _QUOTED.sub("(...)", msg)).strip() or "invalid"
    kp = issue.key_path
    if kp and not _KEY_PATH.fullmatch(kp):
        kp = "(a key)"
    return f"{where}: {kp}: {msg}" if kp else f"{where}: {msg}"


@handles("config show")
def config_show(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    cfg = ctx.runtime.config
    return {"source_path": cfg.source_path, "config_hash": cfg.config_hash,
            "summary": cfg.summary(), "config": config_to_dict(cfg),
            "warnings": [str(w) for w in cfg.warnings]}


@handles("config check", role="technician", args={"file": Arg(str)})
def config_check(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    from .reload import plan_reload
    path, data = _config_file(ctx, args)
    cfg = _load(path, data)
    return {"file": path, "valid": True, "summary": cfg.summary(),
            "warnings": [str(w) for w in cfg.warnings],
            "plan": plan_reload(ctx.runtime.config, cfg).to_dict()}


@handles("config apply", audited=True, role="admin", args={"file": Arg(str)})
def config_apply(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    from .reload import ReloadRefused
    path, data = _config_file(ctx, args)
    cfg = _load(path, data)
    rt = ctx.runtime
    startup = rt.config.source_path
    try:
        result = rt.apply_config(cfg)
    except ReloadRefused as exc:
        raise RequestError("not_applied", str(exc)) from None
    result["file"] = path
    result["config_hash"] = cfg.config_hash
    result["warnings"] = [str(w) for w in cfg.warnings]
    if os.path.realpath(path) != os.path.realpath(startup):
        result["note"] = (f"the gateway starts from {startup} next time; copy {path} there "
                          "to keep this change")
    return result


def _command_handler(ctx: Context) -> Any:
    fleet = getattr(ctx.runtime, "fleet", None)
    handler = getattr(fleet, "handler", None)
    if handler is None or not getattr(fleet, "topics", None):
        raise RequestError("not_supported", "downlink commands are disabled (no "
                           "fleet.command_keys configured)")
    return handler


@handles("fleet")
def fleet_state(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """The downlink: last accepted seq, whether it is locked, counters."""
    return _command_handler(ctx).state()


@handles("fleet reset-seq", audited=True, role="admin", args={"seq": Arg(int)})
def fleet_reset_seq(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Recover a downlink locked by a command seq far in the future (see README, Security)."""
    seq = get_arg(args, "seq", int, None)
    if seq is not None and not 0 <= seq < 2**63:
        raise RequestError("bad_request", "SEQ must be 0 to 2^63-1")
    handler = _command_handler(ctx)
    out = handler.reset_seq(seq, f"{ctx.peer.user} (uid {ctx.peer.uid}) on the console")
    out["message"] = (f"command seq reset from {out['previous_seq']} to {out['seq']}; "
                      f"commands issued before {out['not_before_ms']} are refused")
    return out


# Key sizes (bytes) by driver type: AES-128 for M-Bus/wM-Bus (EN 13757-7); DLMS a block key,
# or a block key then an authentication key (as `keys set` stores them for drivers.dlms).
KEY_BYTES: dict[str, tuple[int, ...]] = {"mbus": (16,), "wmbus": (16,), "dlms": (16, 32),
                                         "iec62056-21": (), "zigbee": ()}
DEFAULT_KEY_BYTES = (16, 32)


def key_bytes(type_name: str | None) -> tuple[int, ...]:
    """The key sizes a meter of this driver type takes (empty: it takes no key)."""
    return KEY_BYTES.get(type_name or "", DEFAULT_KEY_BYTES)


def key_sizes_text(sizes: tuple[int, ...]) -> str:
    return " or ".join(f"{n} bytes ({2 * n} hex digits)" for n in sizes)


def key_path(rt: ControlHost, meter_id: str) -> str:
    keys_dir = rt.config.control.keys_dir or os.path.join(
        os.path.dirname(rt.config.store.path), "keys")
    return os.path.join(keys_dir, f"{meter_id}.key")


@handles("keys set", audited=True, role="technician",
         args={"meter_id": Arg(str), "key": Arg(str, secret=True)})
def keys_set(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    rt = ctx.runtime
    mid = get_arg(args, "meter_id", str)
    key_hex = get_arg(args, "key", str)
    if not METER_ID_RE.fullmatch(mid):
        raise RequestError("bad_request", "a meter id is 1-64 characters from A-Z a-z 0-9 . _ : -")
    cleaned = key_hex.strip().replace(" ", "").replace(":", "").lower().removeprefix("0x")
    try:
        key = bytes.fromhex(cleaned)
    except ValueError:
        raise RequestError("bad_key", "the key must be hex digits (e.g. 32 for AES-128)") from None
    drv, _ = find_meter(rt, mid)
    if drv is None:
        raise unknown_meter(rt, mid)
    sizes = key_bytes(drv.type_name)
    if not sizes:
        raise RequestError("bad_key", f"meters on {drv.bus} (type {drv.type_name}) take no "
                           "key; nothing was stored")
    if len(key) not in sizes:
        raise RequestError("bad_key", f"{mid} on {drv.bus} (type {drv.type_name}) needs a key "
                           f"of {key_sizes_text(sizes)}; got {len(key)} bytes "
                           f"({len(cleaned)} hex digits); nothing was stored")
    path = key_path(rt, mid)
    write_secret(path, key.hex() + "\n")
    out: dict[str, Any] = {"meter_id": mid, "file": path, "bytes": len(key)}
    out["driver"] = drv.bus
    fn = getattr(drv, "set_key", None)
    if not callable(fn):
        out["message"] = (f"stored; driver {drv.bus} (type {drv.type_name}) cannot take a key "
                          "while running (no set_key): it reads it at its next start")
        out["applied"] = False
        return out
    try:
        run_bounded(lambda: fn(mid, key), 30, f"set_key on {drv.bus}")
    except RequestError:
        raise
    except Exception as exc:
        raise RequestError("driver_error", f"stored, but driver {drv.bus} refused the key: "
                           f"{error_text(exc)}") from None
    out["applied"] = True
    out["message"] = f"stored and in use by {drv.bus}"
    return out


def write_secret(path: str, content: str) -> None:
    """Atomically write a file that only its owner may read (mode 0600 from creation)."""
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


MAX_READ = 4 * 1024 * 1024 + 1  # the config loader refuses anything larger anyway


def read_as_peer(path: str, peer: Peer) -> bytes:
    """Read a file the console user names, as that user could: opened once, without
    following a final symlink (O_NOFOLLOW) or blocking on a FIFO (O_NONBLOCK); the
    descriptor is fstat'ed, must be a regular file, and the peer's uid/gids (SO_PEERCRED)
    must be allowed to read it by its mode. What is checked is what is read: swapping the
    path to a meter key between the check and the read is not possible."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    denied = RequestError("permission_denied", f"{path}: you (uid {peer.uid}) cannot read this "
                          "file, so the gateway will not read it for you")
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise RequestError("not_found", f"{path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RequestError("bad_file", f"{path} is a symbolic link; name the file itself"
                               ) from None
        raise RequestError("cannot_read", f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RequestError("bad_file", f"{path} is not a regular file")
        if not mode_allows_read(st, peer):
            raise denied
        chunks: list[bytes] = []
        left = MAX_READ
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise RequestError("cannot_read", f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def mode_allows_read(st: os.stat_result, peer: Peer) -> bool:
    """Would the console user be allowed to read this (fstat'ed) file themselves?"""
    if peer.uid == 0:
        return True
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == peer.uid:
        return bool(mode & 0o400)
    if st.st_gid == peer.gid or st.st_gid in peer.groups:
        return bool(mode & 0o040)
    return bool(mode & 0o004)


# ----------------------------------------------------------------- masking


def meter_schema(type_name: str) -> Any:
    from ..config import DRIVER_SCHEMAS
    schema = DRIVER_SCHEMAS.get(type_name)
    if schema is None:
        return None
    for f in schema.fields:
        if f.name == "meters":
            leaf = f.check.items
            return leaf.schema if leaf is not None else None
    return None


def mask_options(values: dict[str, Any], schema: Any) -> dict[str, Any]:
    """Options as JSON-friendly data with every secret field shown as ``***``."""
    specs = {f.name: f for f in schema.fields} if schema is not None else {}
    out = {}
    for k, v in values.items():
        spec = specs.get(k)
        if spec is not None and spec.secret and v is not None:
            out[k] = "***"
            continue
        check = spec.check if spec is not None else None
        out[k] = _mask_value(v, check)
    return out


def _mask_value(v: Any, check: Any) -> Any:
    if isinstance(v, dict):
        sub = check.schema if check is not None else None
        if sub is None and check is not None and check.values is not None:
            sub = check.values.schema
        return mask_options(v, sub)
    if isinstance(v, list):
        inner = check.items if check is not None else None
        return [_mask_value(x, inner) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return "***"  # binary option values are keys in practice
    return v


def config_to_dict(cfg: Any) -> dict[str, Any]:
    from ..config import DRIVER_SCHEMAS
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.name in ("drivers", "warnings", "source_path", "config_hash"):
            continue
        v = getattr(cfg, f.name)
        out[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
    out["drivers"] = [{"type": d.type, "name": d.name,
                       **mask_options(d.options, DRIVER_SCHEMAS.get(d.type))}
                      for d in cfg.drivers]
    return out



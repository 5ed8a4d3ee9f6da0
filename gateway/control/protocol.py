"""Wire format of the control socket: small length-prefixed JSON messages.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding one
object. JSON rather than CBOR because a field tech can read it in ``strace`` or poke at it
with ``socat`` and a few lines of Python; messages are small and rare.

Every message carries ``"v": PROTOCOL_VERSION``. The client opens with ``hello``; a server
that does not speak the client's version answers with an ``unsupported_version`` error and
closes, so a newer console on an older gateway fails with a clear message instead of garbage.

Requests:  ``{"v": 1, "id": 7, "cmd": "status", "args": {...}}``
Replies:   ``{"v": 1, "id": 7, "ok": true, "result": {...}}``
           ``{"v": 1, "id": 7, "ok": false, "error": {"code": "...", "message": "..."}}``
Streams (``tail``, ``listen``, ``scan``): any number of ``{"v": 1, "id": 7, "item": {...}}``
before the final reply. The client may send ``{"v": 1, "cmd": "cancel"}`` at any time to end
the stream early (Ctrl-C), or simply hang up.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME = 1024 * 1024  # a reply larger than this is a bug, not a bigger buffer
_HEADER = struct.Struct(">I")


class ProtocolError(ValueError):
    """The peer sent something that is not a valid frame (its fault, not ours)."""


class PeerClosed(ConnectionError):
    """The peer hung up cleanly between frames."""


def encode_frame(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, default=_default).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return _HEADER.pack(len(body)) + body


def _default(o: Any) -> Any:
    # Decimal values travel as exact strings, bytes as hex, anything else as its text.
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"frame holds {type(msg).__name__}, expected a JSON object")
    return msg


class FrameDecoder:
    """Sans-I/O: feed bytes, take whole messages out; for tests and non-blocking readers."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> dict[str, Any] | None:
        if len(self._buf) < _HEADER.size:
            return None
        (n,) = _HEADER.unpack_from(self._buf)
        if n > MAX_FRAME:
            raise ProtocolError(f"frame of {n} bytes announced; the limit is {MAX_FRAME}")
        if len(self._buf) < _HEADER.size + n:
            return None
        body = bytes(self._buf[_HEADER.size:_HEADER.size + n])
        del self._buf[:_HEADER.size + n]
        return decode_body(body)

    @property
    def pending(self) -> int:
        return len(self._buf)


def send_message(sock: socket.socket, msg: dict[str, Any]) -> None:
    """Send one frame; the socket's timeout bounds how long a peer that reads nothing can
    hold us (a hung console must not hold a server thread for ever)."""
    sock.sendall(encode_frame(msg))


def recv_message(sock: socket.socket, first_byte_timeout: float | None,
                 frame_timeout: float) -> dict[str, Any]:
    """Receive one frame.

    Waits up to ``first_byte_timeout`` (None: for ever) for a frame to start, then at most
    ``frame_timeout`` for the rest of it, so a peer that stalls mid-frame is dropped quickly
    while an idle console may stay connected. Raises PeerClosed on a clean hang-up between
    frames, ProtocolError on garbage or a hang-up mid-frame, TimeoutError on timeouts.
    """
    sock.settimeout(first_byte_timeout)
    first = sock.recv(_HEADER.size)
    if not first:
        raise PeerClosed("peer closed the connection")
    deadline = time.monotonic() + frame_timeout
    header = first + _recv_exact(sock, _HEADER.size - len(first), deadline)
    (n,) = _HEADER.unpack(header)
    if n > MAX_FRAME:
        raise ProtocolError(f"frame of {n} bytes announced; the limit is {MAX_FRAME}")
    return decode_body(_recv_exact(sock, n, deadline))


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while n > 0:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("peer stalled in the middle of a frame")
        sock.settimeout(left)
        chunk = sock.recv(min(n, 65536))
        if not chunk:
            raise ProtocolError("peer closed the connection in the middle of a frame")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def error_reply(req_id: Any, code: str, message: str, **extra: Any) -> dict[str, Any]:
    err = {"code": code, "message": message, **extra}
    return {"v": PROTOCOL_VERSION, "id": req_id, "ok": False, "error": err}


def ok_reply(req_id: Any, result: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "ok": True, "result": result}

"""The contract every codec in ``gateway.protocols`` keeps.

Why one contract: a driver (or a test, or ``gateway decode``) should not have to learn each
codec's dialect for "need more bytes", "this frame was bad" and "how many bytes were
garbage". Every stream decoder is h11-shaped:

* ``receive_data(data)`` appends bytes (the buffer is bounded: a line that sends garbage for
  ever cannot grow memory);
* ``next_event()`` returns a frame, a :class:`BadFrame` (the decoder has already
  resynchronised past it), or :data:`NEED_DATA`;
* ``stats`` is one :class:`StreamStats` with the same four counters everywhere.

Errors have one root, split by whose fault it is:

* :class:`RemoteError`: the bytes are wrong (a noisy line, a broken meter, a wrong key). It
  names the event kind a driver reports for it (``event``) and what could be read of the
  sender before the failure (``header``), so the failure is attributed to a meter.
* :class:`LocalError`: our own code misused the API (a value out of range for an encoder,
  a frame type an encoder does not know). A bug to fix, never a meter's diagnostic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar, Union

from .. import events

F = TypeVar("F")


class NeedData:
    """The one sentinel of :meth:`StreamDecoder.next_event`: more bytes are needed."""

    _instance: "NeedData | None" = None

    def __new__(cls) -> "NeedData":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __reduce__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class CodecError(Exception):
    """Root of every error a codec raises on purpose."""


class RemoteError(CodecError, ValueError):
    """The bytes are at fault. ``event`` is the event kind to report for it."""

    event: str = events.MALFORMED

    def __init__(self, message: str, header: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.header = dict(header) if header else {}

    @property
    def meter_id(self) -> str | None:
        return self.header.get("id")


class RemoteChecksumError(RemoteError):
    """A CRC / checksum / BCC does not match: the line damaged the frame."""

    event = events.CRC_ERROR


class LocalError(CodecError, ValueError):
    """Our own code asked a codec for something impossible (a bug, not a meter problem)."""


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame that could not be used; the decoder has already resynchronised past it.

    ``reason`` is one line for logs and diagnostics, ``raw`` the bytes as far as they are
    known, ``error`` the :class:`RemoteError` when there is one (its ``event`` says how to
    report it)."""

    reason: str
    raw: bytes = b""
    error: RemoteError | None = None

    @property
    def event(self) -> str:
        return self.error.event if self.error is not None else events.FRAME_ERROR


@dataclass(slots=True)
class StreamStats:
    """The counters of one stream decoder, the same shape for every codec."""

    frames: int = 0           # good frames returned
    bad_frames: int = 0       # BadFrame events returned (or frames dropped as bad)
    checksum_errors: int = 0  # of those, the ones that failed a CRC / checksum / BCC
    garbage_bytes: int = 0    # bytes thrown away outside any frame (and on buffer overflow)

    def as_dict(self) -> dict[str, int]:
        return {"frames": self.frames, "bad_frames": self.bad_frames,
                "checksum_errors": self.checksum_errors, "garbage_bytes": self.garbage_bytes}


class StreamDecoder(Protocol[F]):
    stats: StreamStats

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> Union[F, BadFrame, NeedData]: ...


class BoundedBuffer(Generic[F]):
    """The receive side codecs share: a bounded byte buffer and the :class:`StreamStats`."""

    MAX_BUFFER = 4096

    def __init__(self, max_buffer: int | None = None) -> None:
        self._buf = bytearray()
        self.max_buffer = max_buffer or self.MAX_BUFFER
        self.stats = StreamStats()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self.max_buffer:
            drop = len(self._buf) - self.max_buffer
            del self._buf[:drop]
            self.stats.garbage_bytes += drop

    def clear(self) -> None:
        """Forget what is buffered (a new request: old bytes are stale); counted as garbage."""
        self.stats.garbage_bytes += len(self._buf)
        self._buf.clear()

    def _skip(self, n: int) -> None:
        if n:
            del self._buf[:n]
            self.stats.garbage_bytes += n

    def _bad(self, reason: str, raw: bytes = b"", error: RemoteError | None = None) -> BadFrame:
        self.stats.bad_frames += 1
        if isinstance(error, RemoteChecksumError):
            self.stats.checksum_errors += 1
        return BadFrame(reason, bytes(raw), error)

    def _good(self, frame: F) -> F:
        self.stats.frames += 1
        return frame

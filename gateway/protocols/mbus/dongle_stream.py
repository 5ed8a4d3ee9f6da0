"""The byte-stream half shared by the M-Bus decoders: a bounded buffer with its counters (wired
frames too), and for the dongle framings (iM871A HCI, AMB8465) the resync on the
start-of-frame byte after garbage that hands out complete messages.

A message whose checksum fails is still handed out, marked ``damaged``, so the driver can
attribute it to its meter as a CRC error (it is never decoded); other bad frames are
skipped byte by byte. Everything is counted for diagnostics.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Generic, TypeVar

from .errors import ChecksumError, MBusError, TruncatedError

M = TypeVar("M")


class BoundedStreamBuffer:
    """The receive side every M-Bus stream decoder shares: a bounded byte buffer (a line
    that never stops sending garbage cannot grow memory) and the counters diagnostics read."""

    MAX_BUFFER = 4096

    def __init__(self) -> None:
        self._buf = bytearray()
        self.skipped = 0
        self.crc_errors = 0
        self.errors = 0
        self.last_error: MBusError | None = None

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self.MAX_BUFFER:
            drop = len(self._buf) - self.MAX_BUFFER
            del self._buf[:drop]
            self.skipped += drop


class DongleStreamDecoder(BoundedStreamBuffer, Generic[M]):
    """receive_data(bytes) / next_event() -> message | None (None: need more bytes)."""

    def __init__(self, sof: int, deserialize: Callable[..., tuple[M, bytes]],
                 **deserialize_kw: Any) -> None:
        super().__init__()
        self._sof = sof
        self._deserialize = deserialize
        self._kw = deserialize_kw

    def next_event(self) -> M | None:
        while self._buf:
            if self._buf[0] != self._sof:
                i = self._buf.find(self._sof)
                n = len(self._buf) if i < 0 else i
                del self._buf[:n]
                self.skipped += n
                continue
            try:
                msg, rest = self._deserialize(bytes(self._buf), **self._kw)
            except TruncatedError:
                return None
            except ChecksumError as exc:
                self.errors += 1
                self.crc_errors += 1
                self.last_error = exc
                msg, rest = self._deserialize(bytes(self._buf), check=False, **self._kw)
                del self._buf[:len(self._buf) - len(rest)]
                return replace(msg, damaged=str(exc))  # type: ignore[type-var]
            except MBusError as exc:
                self.errors += 1
                self.last_error = exc
                del self._buf[:1]
                self.skipped += 1
                continue
            del self._buf[:len(self._buf) - len(rest)]
            return msg
        return None

"""Clock trust: is the wall clock synchronised, did it jump, and what time was it really?

A Raspberry Pi has no real-time clock: after a power cut it boots with a wrong wall clock
(1970, or the last time fake-hwclock saved) until NTP steps it. The kernel knows: the
``adjtimex(2)`` status word has STA_UNSYNC set (and the call returns TIME_ERROR) until a
time daemon has disciplined the clock, and the maximum error stays at 16 s; this is what
``timedatectl`` reports as "System clock synchronized". We read it with ctypes, so no
daemon, D-Bus or subprocess is needed.

The monotonic clock never jumps, so ``wall - monotonic`` (the offset) is constant except
when the wall clock is stepped: a change of the offset beyond a threshold between two
samples is a jump (NTP slewing moves it by at most 0.5 ms/s and is tracked, not reported).
Readings taken while unsynchronised are remembered by their monotonic time; once the clock
syncs, ``monotonic + offset`` gives their true time (lost if the gateway reboots first:
those readings stay flagged ``clock_unsynced``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import time
from dataclasses import dataclass
from typing import Callable

from ..model import Event
from .. import events as kinds

log = logging.getLogger("gateway.edge.clock")

# <sys/timex.h>
STA_UNSYNC = 0x0040
STA_CLOCKERR = 0x1000
TIME_ERROR = 5
MAXERROR_UNSYNCED_US = 16_000_000  # the kernel's NTP_PHASE_LIMIT: 16 s means "no idea"


class _Timex(ctypes.Structure):
    """struct timex (glibc, native long size: right for 32- and 64-bit ARM and x86)."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long), ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 16),  # the kernel's padding, plus room to spare
    ]


@dataclass(frozen=True, slots=True)
class KernelClock:
    """What adjtimex(2) says about the system clock."""

    state: int  # return value: TIME_OK (0) ... TIME_ERROR (5)
    status: int  # STA_* bits
    maxerror_us: int
    esterror_us: int

    @property
    def synced(self) -> bool:
        return (self.state != TIME_ERROR and not self.status & (STA_UNSYNC | STA_CLOCKERR)
                and self.maxerror_us < MAXERROR_UNSYNCED_US)


_libc: ctypes.CDLL | None = None


def read_kernel_clock() -> KernelClock | None:
    """Query adjtimex with modes = 0 (read only, no privilege needed); None off Linux."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = _libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return KernelClock(state, tx.status, tx.maxerror, tx.esterror)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def mono_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Clock:
    """Samples the clocks; reports jumps and the moment the clock becomes trustworthy.

    Not thread-safe: the pipeline calls it under its lock. The time sources are injectable
    so tests can step the wall clock and flip the sync flag.
    """

    def __init__(self, *, wall: Callable[[], int] = wall_ms, mono: Callable[[], int] = mono_ms,
                 kernel: Callable[[], KernelClock | None] = read_kernel_clock,
                 jump_threshold_ms: int = 2000, assume_synced: bool = False,
                 source: str = "edge") -> None:
        self.wall = wall
        self.mono = mono
        self.kernel = kernel
        self.jump_threshold_ms = jump_threshold_ms
        self.assume_synced = assume_synced
        self.source = source
        self.offset = wall() - mono()  # wall - monotonic, tracked at every sample
        self.jumps = 0
        self.epoch = 0  # bumped by every jump: spans across one are only estimates
        self.last_kernel: KernelClock | None = None
        self.synced = self._kernel_synced()
        self._unsynced_offset = self.offset  # offset when the unsynced period began
        self.unsynced_since_ms: int | None = None if self.synced else self.wall()

    def _kernel_synced(self) -> bool:
        if self.assume_synced:
            return True
        k = self.kernel()
        self.last_kernel = k
        if k is None:
            return True  # cannot tell (not Linux): trust the clock rather than flag everything
        return k.synced

    def sample(self) -> list[Event]:
        """Look at the clocks once; returns the events to record (jumps, sync changes)."""
        events: list[Event] = []
        w, m = self.wall(), self.mono()
        cur = w - m
        step = cur - self.offset
        if abs(step) > self.jump_threshold_ms:
            self.jumps += 1
            self.epoch += 1
            events.append(Event(kinds.CLOCK_JUMP, w, self.source, None, "warning", {
                "jump_ms": step, "from_ms": w - step, "to_ms": w,
                "direction": "forward" if step > 0 else "backward", "synced": self.synced}))
            log.warning("wall clock jumped %s by %.3f s", "forward" if step > 0 else "backward",
                        step / 1000)
        self.offset = cur
        synced = self._kernel_synced()
        if synced and not self.synced:
            correction = cur - self._unsynced_offset
            events.append(Event(kinds.CLOCK_SYNCED, w, self.source, None, "info", {
                "correction_ms": correction, "unsynced_since_ms": self.unsynced_since_ms,
                "unsynced_until_ms": w - correction}))
            log.info("system clock synchronised (readings since boot corrected by %.3f s)",
                     correction / 1000)
            self.unsynced_since_ms = None
        elif self.synced and not synced:
            self._unsynced_offset = cur
            self.unsynced_since_ms = w
            events.append(Event(kinds.CLOCK_UNSYNCED, w, self.source, None, "warning", {
                "status": self.last_kernel.status if self.last_kernel else None}))
            log.warning("system clock is no longer synchronised; readings are flagged "
                        "clock_unsynced")
        self.synced = synced
        return events

    def mono_of(self, wall_stamp_ms: int) -> int:
        """The monotonic time of a wall stamp taken in the current wall frame."""
        return wall_stamp_ms - self.offset

    def trusted(self, mono: int) -> int:
        """The wall time of a monotonic instant, by the current (synchronised) offset."""
        return mono + self.offset

    def status(self) -> dict[str, object]:
        k = self.last_kernel
        return {"synced": self.synced, "jumps": self.jumps,
                "unsynced_since_ms": self.unsynced_since_ms,
                "kernel": None if k is None else {"state": k.state, "status": k.status,
                                                  "maxerror_us": k.maxerror_us}}

"""One error family for the whole M-Bus codec (wired, wireless, dongles).

Every subclass is a *remote* error: the bytes that arrived are at fault (a broken meter, a
noisy line, a wrong key in the config). Misuse of the API by our own code raises plain
TypeError/ValueError inside; the decode entry points (``decode_rsp_ud``, ``decode_wmbus``)
are ``guarded``, so nothing but an MBusError ever leaves them. Each subclass names the
diagnostic event a driver reports for it, so a wrong key, a missing key, an unsupported
mode and a damaged telegram are never confused with each other.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar
from ... import events as kinds

F = TypeVar("F", bound=Callable[..., Any])


class MBusError(ValueError):
    """The bytes are not a valid M-Bus frame/telegram. ``event`` is the diagnostic kind.

    ``header`` holds what could be read before the failure (manufacturer, id, version,
    device_type, access_number), so the failure can be attributed to a meter.
    """

    event = kinds.MALFORMED

    def __init__(self, message: str, header: dict[str, Any] | None = None, *,
                 payload: bytes = b"") -> None:
        super().__init__(message)
        self.header = dict(header) if header else {}
        # the undecoded bytes, as received: from an unknown CI field on (CI included), or
        # after the TPL header of an unsupported security mode; manufacturer profiles
        # (issue 13) read them from here
        self.payload = bytes(payload)

    @property
    def meter_id(self) -> str | None:
        return self.header.get("id")


class FrameError(MBusError):
    """Framing is wrong: bad start/stop byte, impossible length, reserved codes."""


class TruncatedError(FrameError):
    """The frame or a record ends before its length says it should."""

    event = kinds.TRUNCATED


class ChecksumError(FrameError):
    """A wired checksum, a wM-Bus block CRC or a dongle frame CRC does not match."""

    event = kinds.CRC_ERROR


class UnsupportedError(MBusError):
    """Well-formed but not something this codec decodes (a CI field, a compact frame...)."""

    event = kinds.UNSUPPORTED


class SecurityError(MBusError):
    """Base of the failures around encryption."""

    event = kinds.SECURITY_ERROR


class NoKeyError(SecurityError):
    """The telegram is encrypted and no key is configured for this meter."""

    event = kinds.NO_KEY


class DecryptError(SecurityError):
    """Decryption ran but its check failed (no 2F2F, payload CRC wrong): wrong key."""

    event = kinds.DECRYPT_FAILED


class AuthError(DecryptError):
    """The AES-CMAC of a mode 7 telegram does not match: wrong key or tampered telegram."""

    event = kinds.AUTH_FAILED


class UnsupportedSecurityError(SecurityError, UnsupportedError):
    """A security mode (or ELL/AFL variant) this codec does not implement."""

    event = kinds.UNSUPPORTED_SECURITY


class UnsupportedFormatError(UnsupportedError):
    """A manufacturer-specific payload (CI 0xA0-0xB7, security modes 16-31) that no meter
    profile describes. The driver reports it once per meter, not per telegram."""

    event = kinds.UNSUPPORTED_FORMAT


class ApplicationError(MBusError):
    """The meter answered with an application error (CI 0x70, or 0x6E/0x6F with a TPL
    header): it is alive and says why it sends no data. ``code`` is its error code (None
    when it sent none), ``reason`` the standard's words for it."""

    event = kinds.APPLICATION_ERROR

    def __init__(self, message: str, header: dict[str, Any] | None = None, *,
                 code: int | None = None, reason: str = "") -> None:
        super().__init__(message, header)
        self.code = code
        self.reason = reason

    @property
    def detail(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason}


INTERNAL = "internal decoder error"


def guarded(fn: F) -> F:
    """Last line of defence of a decode entry point: whatever else goes wrong on hostile
    bytes leaves as this codec's FrameError (one line, attributable), never as another
    exception that would stop a bus. The fuzz tests assert it never fires."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MBusError:
            raise
        except Exception as exc:  # noqa: BLE001 - that is the point
            raise FrameError(f"{INTERNAL} ({type(exc).__name__}: {exc})") from exc

    return wrapper  # type: ignore[return-value]

"""DLMS/COSEM: thin wrappers around gurux-dlms (which does the DLMS) plus the few things
it does slowly or noisily: AES-GCM with ``cryptography`` (gurux's GCM is pure Python,
~10x slower), and keeping its diagnostic ``print()`` calls off the runtime's stdout.

Importing this package is cheap; :func:`load_gurux` imports gurux (≈0.3 s) on first use.
"""

from __future__ import annotations

import threading
from types import ModuleType

_lock = threading.Lock()
_loaded: ModuleType | None = None


class DlmsError(ValueError):
    """A DLMS APDU (or its ciphering) is not what it should be: the meter's fault."""


class DecryptError(DlmsError):
    """Authentication tag mismatch: wrong key, wrong system title, or tampered data."""


def load_gurux() -> ModuleType:
    """Import gurux_dlms (and its secure classes) once, with its prints silenced."""
    global _loaded
    with _lock:
        if _loaded is None:
            import gurux_dlms
            import gurux_dlms.secure  # noqa: F401  (its modules print too)
            from .quiet import silence_gurux
            silence_gurux()
            _loaded = gurux_dlms
        return _loaded

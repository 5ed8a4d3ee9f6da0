"""Keep gurux-dlms's ``print()`` calls off stdout.

gurux prints "Encryption is applied." / "Authentication is applied." for every ciphered
APDU it decrypts (GXDLMSChippering.decryptAesGcm), plus a few other notices. The runtime's
stdout carries ``--json`` output and the console, so those lines must not reach it.

Redirecting ``sys.stdout`` around each call would race with other threads printing
legitimately. Instead each gurux module gets a module-global ``print`` that shadows the
builtin for that module only (Python looks names up in module globals before builtins):
the lowest level that touches nothing but gurux, needs no lock, and keeps working for
calls made from any thread. The text goes to the ``gateway.gurux`` logger at DEBUG.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("gateway.gurux")


def gurux_print(*args: Any, sep: str = " ", end: str = "\n", file: Any = None,
                flush: bool = False) -> None:
    """Stand-in for print() inside gurux modules: a DEBUG log line instead of stdout."""
    if file is not None and file not in (sys.stdout, sys.__stdout__):
        print(*args, sep=sep, end=end, file=file, flush=flush)
        return
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s", sep.join(str(a) for a in args))


def silence_gurux() -> int:
    """Install :func:`gurux_print` in every loaded gurux_dlms module; return how many."""
    n = 0
    for name, mod in list(sys.modules.items()):
        if mod is not None and (name == "gurux_dlms" or name.startswith("gurux_dlms.")):
            if getattr(mod, "print", None) is not gurux_print:
                try:
                    setattr(mod, "print", gurux_print)
                    n += 1
                except (AttributeError, TypeError):
                    pass
    return n

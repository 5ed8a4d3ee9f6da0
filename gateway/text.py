"""Small wording helpers for human output, shared by the log lines and the console."""

from __future__ import annotations

import errno
import re


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 meter``, ``2 meters``, ``0 meters``; ``many`` for irregular plurals."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ")
_ERRNO_TUPLE = re.compile(r"\((\d+), '([^']*)'\)")


def error_text(exc: BaseException) -> str:
    """An exception as one plain sentence with its errno named once: never a Python tuple
    (termios' ``(5, 'Input/output error')``) nor pyserial's ``[Errno 5] ... [Errno 5]``."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        text = str(exc.strerror)
        if exc.filename is not None and str(exc.filename) not in text:
            text += f": {exc.filename}"
        return _errno_once(text, exc.errno)
    args = exc.args
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return _errno_once(args[1], args[0])
    return _errno_once(str(exc), None) or type(exc).__name__


def _errno_once(text: str, code: int | None) -> str:
    def name(n: int | str) -> str:
        return errno.errorcode.get(int(n), str(n))
    text = _ERRNO_TUPLE.sub(lambda m: f"{m.group(2)} ({name(m.group(1))})", text)
    codes = [int(n) for n in _ERRNO_TEXT.findall(text)] + ([code] if code is not None else [])
    text = _ERRNO_TEXT.sub("", text)
    missing = [name(c) for c in dict.fromkeys(codes) if name(c) not in text]
    return text + (f" ({', '.join(missing)})" if missing else "")

"""Meter keys given as files: one place that reads them, for every driver.

A key file holds the key as hex text (32 hex digits, whitespace ignored) or as the 16 raw
bytes. The config loader has already checked that the file exists and warned when it is
readable by group/other; this reads it when the driver starts, and says which file is wrong.
"""

from __future__ import annotations

import string

from ..wire.errors import KeyFileError  # the one class for an unusable key file


def read_key_file(path: str, size: int = 16) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from None
    if len(raw) == size and not all(chr(b) in string.hexdigits + string.whitespace for b in raw):
        return raw
    text = "".join(raw.decode("ascii", "replace").split())
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{path}: expected {size * 2} hex digits (a {size}-byte key)") from None
    if len(key) != size:
        raise KeyFileError(f"{path}: expected {size * 2} hex digits (a {size}-byte key), "
                           f"got {len(text)}")
    return key


def key_from(inline: bytes | None, path: str | None) -> bytes | None:
    """The key given inline (already validated) or in a file; None when neither."""
    if inline is not None:
        return inline
    return read_key_file(path) if path else None

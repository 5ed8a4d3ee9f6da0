"""Small wording helpers for human output, shared by the log lines and the console."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 meter``, ``2 meters``, ``0 meters``; ``many`` for irregular plurals."""
    return f"{n} {word if n == 1 else (many or word + 's')}"

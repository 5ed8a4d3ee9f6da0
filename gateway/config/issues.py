"""What the loader reports: one ConfigIssue per problem, all of them in one ConfigError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in a config file. line and column are 1-based; 0 means "whole file"."""

    file: str
    line: int
    column: int
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line > 0 else self.file
        what = f"{self.key_path}: {self.message}" if self.key_path else self.message
        return f"{where}: {what}"


class ConfigError(Exception):
    """The config file is unusable. ``issues`` holds every error found, not just the first."""

    def __init__(self, issues: Iterable[ConfigIssue], warnings: Iterable[ConfigIssue] = ()):
        self.issues = list(issues)
        self.warnings = list(warnings)
        super().__init__("\n".join(str(i) for i in self.issues))


def tidy(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Drop repeats (an aliased node is visited once per use) and sort by position."""
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: (i.line, i.column))

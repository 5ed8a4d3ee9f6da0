"""The ``gateway``, ``store`` and ``logging`` sections."""

from __future__ import annotations

from dataclasses import dataclass

from .checks import ID, PATH, integer, one_of, size
from .schema import FieldSpec, Schema

GATEWAY_SCHEMA = Schema((
    FieldSpec("id", ID, help="this gateway's unique id, e.g. gw-0001"),
    FieldSpec("board", ID, "generic-linux", help="board profile name"),
))

STORE_SCHEMA = Schema((
    FieldSpec("path", PATH, help="path of the store database, e.g. /var/lib/gateway/store.db",
              path=True),
    FieldSpec("max_bytes", size(64 * 1024), 512 * 1024**2,
              help="disk cap of the store; the oldest records are evicted beyond it"),
    FieldSpec("max_rows", integer(1), None, help="optional cap on stored records"),
    FieldSpec("commit_interval_ms", integer(1, 10000), 50,
              help="group commit: longest time a record waits before being committed"),
    FieldSpec("commit_max_records", integer(1, 1_000_000), 5000,
              help="group commit: most records committed in one transaction"),
    FieldSpec("reserve_bytes", size(0, 1024**3), 1024**2,
              help="space kept in a file beside the database and released to evict in when "
                   "the filesystem is full"),
))

LOGGING_SCHEMA = Schema((
    FieldSpec("level", one_of("debug", "info", "warning", "error"), "info", help="log level"),
    FieldSpec("format", one_of("text", "json"), "text",
              help="text: logfmt lines (ts level=… comp=… msg=…); json: one JSON object per "
                   "line. Under systemd both drop their own timestamp where journald adds one "
                   "and carry journald priorities"),
))


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    id: str
    board: str


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: str
    max_bytes: int
    max_rows: int | None
    commit_interval_ms: int
    commit_max_records: int
    reserve_bytes: int


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"

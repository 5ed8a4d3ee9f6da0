"""The ``uplink`` section: the MQTT broker, the TLS files and batching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .checks import file_field, integer, number, size, text
from .schema import Check, FieldSpec, Schema


def _check_host(v: str) -> None:
    if not v or "://" in v or "/" in v or any(c.isspace() for c in v):
        raise ValueError()


def _check_topic_prefix(v: str) -> None:
    if not v or "+" in v or "#" in v or "\0" in v or "" in v.split("/"):
        raise ValueError()


def _check_client_id(v: str) -> None:
    if not v or len(v) > 256 or any(c.isspace() or not c.isprintable() for c in v):
        raise ValueError()


def _tls_version(v: Any) -> str:
    # "1.2" or "1.3"; as_text keeps an unquoted 1.2 from becoming a float.
    if not isinstance(v, str):
        raise TypeError()
    if v not in ("1.2", "1.3"):
        raise ValueError()
    return v


def _uplink_rules(v: dict[str, Any]) -> list[tuple[str, str]]:
    if v["reconnect_max_s"] < v["reconnect_min_s"]:
        return [("reconnect_max_s", f"expected a number >= reconnect_min_s "
                                    f"({v['reconnect_min_s']:g}), got {v['reconnect_max_s']:g}")]
    return []


UPLINK_SCHEMA = Schema((
    FieldSpec("host", text("a host name or IP address (no scheme, port or path)",
                           validate=_check_host), help="the MQTT broker host name"),
    FieldSpec("port", integer(1, 65535), 8883, help="the MQTT broker TLS port"),
    file_field("ca", "CA certificate file (PEM) that signed the broker's certificate"),
    file_field("cert", "this gateway's client certificate file (PEM)"),
    file_field("key", "private key file of the client certificate", secret=True),
    file_field("signing_key", "private key file used to sign uplink batches", secret=True),
    FieldSpec("topic_prefix",
              text('an MQTT topic prefix such as "meters" or "utility/north" (no "+" or "#", '
                   'no empty levels, no leading or trailing "/")', validate=_check_topic_prefix),
              "meters", help="prefix of every published topic"),
    FieldSpec("client_id", text("an MQTT client id of 1-256 printable characters without spaces",
                                validate=_check_client_id),
              None, help="MQTT client id; defaults to the gateway id"),
    FieldSpec("keepalive_s", integer(5, 3600, "a whole number of seconds"), 30,
              help="MQTT keepalive interval"),
    FieldSpec("inflight", integer(1, 1000), 20, help="most unacknowledged messages in flight"),
    FieldSpec("batch_max_records", integer(1, 10000), 64, help="most records per message"),
    FieldSpec("batch_max_bytes", size(256, 268435455), 65536, help="largest message payload"),
    FieldSpec("reconnect_min_s", number(gt=0, what="a number of seconds"), 1,
              help="first reconnect back-off"),
    FieldSpec("reconnect_max_s", number(gt=0, what="a number of seconds"), 60,
              help="longest reconnect back-off"),
    FieldSpec("tls_version", Check('"1.2" (1.2 or newer) or "1.3"', _tls_version, as_text=True),
              "1.2", help="minimum TLS version"),
), check=_uplink_rules)


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    host: str
    port: int
    ca: str
    cert: str
    key: str
    signing_key: str
    topic_prefix: str
    client_id: str
    keepalive_s: int
    inflight: int
    batch_max_records: int
    batch_max_bytes: int
    reconnect_min_s: float
    reconnect_max_s: float
    tls_version: str

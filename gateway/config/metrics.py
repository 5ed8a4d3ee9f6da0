"""The ``metrics`` section: where the Prometheus endpoint listens."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from .schema import Check, FieldSpec, Schema


def _listen(v: Any) -> tuple[str, int]:
    """``9105``, ``"127.0.0.1:9105"`` or ``"[::1]:9105"`` -> (host, port); host defaults to
    loopback so that turning metrics on never exposes meter data by itself."""
    if isinstance(v, bool):
        raise TypeError()
    text_v = str(v).strip()
    host, sep, port_s = text_v.rpartition(":")
    if not sep:
        host, port_s = "127.0.0.1", text_v
    host = host.strip("[]") if host.startswith("[") else host
    if not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError()
    if ":" in host:
        ipaddress.IPv6Address(host)
    elif host != "localhost":
        ipaddress.IPv4Address(host)
    return host, int(port_s)


METRICS_SCHEMA = Schema((
    FieldSpec("listen", Check('a port or "address:port", e.g. 127.0.0.1:9105 or [::1]:9105',
                              _listen, as_text=True), None,
              help="serve Prometheus text format on http://ADDRESS:PORT/metrics; off when "
                   "unset; a bare port listens on 127.0.0.1 only"),
), help="the Prometheus metrics endpoint")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: tuple[str, int] | None = None

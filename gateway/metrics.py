"""Prometheus text exposition of the runtime's health, for fleets that already scrape their
machines (``metrics: {listen: 127.0.0.1:9105}``; off by default).

It reads the same snapshots as the console (store stats, uplink state, per-bus and per-meter
driver stats, what the monitor saw) and never writes anything; a scrape that fails answers
500 and logs once a minute, it never touches the pipeline. Format: text/plain version 0.0.4.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import __version__
from .health import HealthSnapshot, uplink_summary
from .logs import RateLimitedLog
from .model import now_ms

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Runtime

log = logging.getLogger("gateway.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Family:
    """One metric family: HELP, TYPE and its samples, rendered in exposition order."""

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name, self.kind, self.help = name, kind, help
        self.samples: list[tuple[dict[str, Any], float | int]] = []

    def add(self, value: float | int | bool | None, **labels: Any) -> None:
        if value is None or isinstance(value, str):
            return
        self.samples.append((labels, int(value) if isinstance(value, bool) else value))

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            yield f"{self.name}{{{lab}}} {value}" if lab else f"{self.name} {value}"


def _num(v: Any) -> int | float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def render(rt: "Runtime") -> str:
    """The exposition text for one scrape."""
    fams: dict[str, _Family] = {}

    def fam(name: str, kind: str, help: str) -> _Family:
        if name not in fams:
            fams[name] = _Family(name, kind, help)
        return fams[name]

    now = now_ms()
    fam("gateway_info", "gauge", "firmware and identity (value 1)").add(
        1, gateway=rt.config.gateway.id, firmware=__version__, board=rt.config.gateway.board)
    fam("gateway_uptime_seconds", "gauge", "seconds since the runtime started").add(
        round(time.monotonic() - rt.started_monotonic, 1))
    if rt.store is not None:
        st = rt.store.stats()
        fam("gateway_store_records_committed_total", "counter",
            "records committed to the outbox since start").add(st.records_committed)
        fam("gateway_store_last_seq", "gauge", "last sequence number assigned").add(
            st.last_seq, epoch=st.epoch)
        fam("gateway_store_depth_records", "gauge", "records waiting to be sent").add(st.depth)
        fam("gateway_store_bytes", "gauge", "bytes held by unsent records").add(st.bytes)
        fam("gateway_store_max_bytes", "gauge", "store cap (store.max_bytes)").add(
            rt.config.store.max_bytes)
        fam("gateway_store_oldest_unsent_age_seconds", "gauge",
            "age of the oldest unsent record (0 when empty)").add(
            0 if st.oldest_ts_ms is None else round(max(0, now - st.oldest_ts_ms) / 1000, 1))
        fam("gateway_store_evicted_records_total", "counter",
            "unsent records evicted at the cap (each covered by a gap record)").add(
            st.evicted_records)
        fam("gateway_store_full_errors_total", "counter",
            "records refused because not even eviction made room").add(st.full_errors)
        fam("gateway_store_acked_records_total", "counter",
            "records the broker acknowledged and the store released").add(st.acked_records)
    snap = rt.health()
    up = uplink_summary(snap, f"{rt.config.uplink.host}:{rt.config.uplink.port}",
                        rt.config.uplink.client_id)
    fam("gateway_uplink_connected", "gauge", "1 when connected to the broker").add(
        bool(up.get("connected")), broker=up["broker"])
    for key, help in (("connect_attempts", "connection attempts"),
                      ("connect_failures", "failed connection attempts"),
                      ("messages_published", "messages published"),
                      ("messages_acked", "messages acknowledged by the broker (PUBACK)"),
                      ("records_acked", "records in acknowledged messages")):
        fam(f"gateway_uplink_{key}_total", "counter", help).add(_num(up.get(key)))
    fam("gateway_uplink_in_flight_messages", "gauge", "messages awaiting PUBACK").add(
        _num(up.get("in_flight")))
    seen = rt.monitor.meters()
    _bus_families(fam, snap)
    for mid, s in sorted(seen.items()):
        if s.get("last_seen_ms"):
            fam("gateway_meter_last_seen_timestamp_seconds", "gauge",
                "when the meter's last reading was received (Unix time)").add(
                s["last_seen_ms"] / 1000, bus=s["bus"], meter=mid)
        fam("gateway_meter_readings_total", "counter", "readings received from a meter").add(
            s.get("readings"), bus=s["bus"], meter=mid)
    return "\n".join(line for f in fams.values() for line in f.lines()) + "\n"


class MetricsServer:
    """A tiny HTTP server on its own thread: GET /metrics, nothing else."""

    def __init__(self, rt: "Runtime", host: str, port: int) -> None:
        errors = RateLimitedLog(log)

        class Handler(BaseHTTPRequestHandler):
            server_version = f"meter-gateway/{__version__}"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self._send(404, "only /metrics is served here\n")
                    return
                try:
                    body = render(rt)
                except Exception as exc:  # noqa: BLE001 - a scrape must not hurt the runtime
                    errors.error("metrics: scrape failed: %s: %s", type(exc).__name__, exc)
                    self._send(500, "scrape failed; see the gateway log\n")
                    return
                self._send(200, body, CONTENT_TYPE)

            def _send(self, code: int, body: str, ctype: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # a scrape every 15 s is not news

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.httpd = Server((host, port), Handler)
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics: serving Prometheus text on http://%s/metrics",
                 f"[{self.address[0]}]:{self.address[1]}" if ":" in self.address[0]
                 else f"{self.address[0]}:{self.address[1]}")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def _bus_families(fam: Callable[[str, str, str], _Family], snap: HealthSnapshot) -> None:
    """Per bus and per meter: up, the driver's counters, reads and signal."""
    from .control.lookup import failure_count
    for b in snap.buses.values():
        fam("gateway_bus_up", "gauge", "1 while the bus driver runs").add(
            b.state == "running", bus=b.name, type=b.type)
        for key, value in sorted(b.detail.items()):
            fam("gateway_bus_stat", "gauge", "numeric counters the bus driver reports "
                "(crc_errors, timeouts, frames, ...) by name").add(_num(value), bus=b.name,
                                                                   stat=key)
        ok_sum = bad_sum = 0
        for mid, st in sorted(b.meters.items()):
            ok, bad = _num(st.get("success", st.get("reads_ok"))), failure_count(st)
            ok_sum += ok or 0
            bad_sum += bad or 0
            fam("gateway_meter_reads_ok_total", "counter", "good reads of a meter").add(
                ok, bus=b.name, meter=mid)
            fam("gateway_meter_read_failures_total", "counter", "failed reads of a meter").add(
                bad, bus=b.name, meter=mid)
            fam("gateway_meter_rssi_dbm", "gauge", "last signal strength of a meter").add(
                _num(st.get("rssi_dbm", st.get("rssi"))), bus=b.name, meter=mid)
            fam("gateway_meter_lqi", "gauge", "last link quality of a meter (Zigbee)").add(
                _num(st.get("lqi")), bus=b.name, meter=mid)
        fam("gateway_bus_reads_ok_total", "counter", "good reads over all meters of a bus").add(
            ok_sum, bus=b.name)
        fam("gateway_bus_read_failures_total", "counter",
            "failed reads over all meters of a bus").add(bad_sum, bus=b.name)

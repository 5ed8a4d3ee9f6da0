"""The catalogue of event kinds: every ``Event.kind`` the gateway emits is named here once.

Why one catalogue: an event kind is a contract (the head-end, dashboards and alert rules
match on it) and the edge counts some of them as failures. Written out as string literals
in every driver they drifted: kinds were counted that nothing emitted, and emitted kinds
were never counted. Now a driver imports the constant, the edge's diagnostics count by the
``counts_as`` written beside it, and a test fails on any event-kind literal elsewhere in
``gateway/``.

A kind is a plain ``str`` (records and envelopes carry strings); :data:`CATALOGUE` maps it
to its :class:`EventKind` (default severity, the diagnostic counter it feeds, what it
means). :func:`event` builds an :class:`~gateway.model.Event` with the catalogue's
severity unless the caller has a reason to say another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .model import Event

SEVERITIES: Final = ("debug", "info", "warning", "error", "critical")

# The per-meter diagnostic counters (gateway.edge.diagnostics) a failure event feeds.
READ_FAILURES: Final = "read_failures"
CRC_ERRORS: Final = "crc_errors"
DECRYPT_FAILURES: Final = "decrypt_failures"
AUTH_FAILURES: Final = "auth_failures"


@dataclass(frozen=True, slots=True)
class EventKind:
    name: str
    severity: str
    counts_as: str | None  # the diagnostics counter it increments, None if it feeds none
    doc: str


CATALOGUE: dict[str, EventKind] = {}


def _kind(name: str, severity: str, doc: str, counts_as: str | None = None) -> str:
    if name in CATALOGUE:
        raise ValueError(f"event kind {name} catalogued twice")
    if severity not in SEVERITIES:
        raise ValueError(f"event kind {name}: unknown severity {severity}")
    CATALOGUE[name] = EventKind(name, severity, counts_as, doc)
    return name


def event(kind: str, ts_ms: int, source: str, meter_id: str | None = None,
          detail: dict[str, Any] | None = None, severity: str | None = None) -> Event:
    """An Event of a catalogued kind; its severity is the catalogue's unless given."""
    entry = CATALOGUE[kind]
    return Event(kind, ts_ms, source, meter_id, severity or entry.severity, dict(detail or {}))


def counter_of(kind: str) -> str | None:
    """The diagnostic counter an event of this kind increments (None: it counts as none)."""
    entry = CATALOGUE.get(kind)
    return entry.counts_as if entry else None


# --- a meter's reads -------------------------------------------------------------------
READ_FAILED = _kind("meter.read_failed", "warning",
                    "a poll got no usable answer after its retries", READ_FAILURES)
DECODE_ERROR = _kind("meter.decode_error", "warning",
                     "a frame the codec could not handle; its hex is in the detail",
                     READ_FAILURES)
CRC_ERROR = _kind("meter.crc_error", "warning",
                  "a frame failed its CRC / checksum / BCC", CRC_ERRORS)
FRAME_ERROR = _kind("meter.frame_error", "warning",
                    "a frame is damaged in its framing (start/stop, length)", CRC_ERRORS)
TRUNCATED = _kind("meter.truncated", "warning",
                  "a frame or record ends before its length says", CRC_ERRORS)
MALFORMED = _kind("meter.malformed", "warning",
                  "the bytes are not a valid frame of the protocol", READ_FAILURES)
INVALID_VALUE = _kind("meter.invalid_value", "warning",
                      "a value the meter sent is outside what it can mean")
BAD_SCALING = _kind("meter.bad_scaling", "warning",
                    "a meter's scaling attributes are unusable; raw values are not reported")
SILENT = _kind("meter.silent", "warning", "a meter has not been heard for longer than expected")
RECOVERED = _kind("meter.recovered", "info", "a meter that failed answers again")
STATUS = _kind("meter.status", "warning", "status / alarm flags the meter reports")
METER_EVENT = _kind("meter.event", "info", "an entry of the meter's own event log")
CLOCK_SET = _kind("meter.clock_set", "info", "the gateway set the meter's clock")
CLOCK_DRIFT = _kind("clock.drift", "warning", "a meter's clock differs from the gateway's")
JOINED = _kind("meter.joined", "info", "a device joined the Zigbee network")
GAP = _kind("meter.gap", "warning", "readings expected in an interval did not come")
REGISTER_RESET = _kind("meter.register_reset", "warning",
                       "a cumulative register went backwards: meter reset or replaced")

# --- security ------------------------------------------------------------------------------
DECRYPT_FAILED = _kind("meter.decrypt_failed", "warning",
                       "decryption ran but its check failed: wrong key", DECRYPT_FAILURES)
AUTH_FAILED = _kind("meter.auth_failed", "warning",
                    "authentication (MAC / tag / password) failed", AUTH_FAILURES)
NO_KEY = _kind("meter.no_key", "warning",
               "the data is encrypted and no key is configured", DECRYPT_FAILURES)
SECURITY_ERROR = _kind("meter.security_error", "warning",
                       "a failure around encryption not covered by a narrower kind",
                       DECRYPT_FAILURES)
UNSUPPORTED_SECURITY = _kind("meter.unsupported_security", "warning",
                             "a security mode this gateway does not implement")
REPLAY_SUSPECTED = _kind("meter.replay_suspected", "warning",
                         "a counter went backwards: an old telegram sent again")

# --- formats -------------------------------------------------------------------------------
UNSUPPORTED = _kind("meter.unsupported", "warning",
                    "well-formed, but not something the codec decodes")
UNSUPPORTED_FORMAT = _kind("meter.unsupported_format", "warning",
                           "a manufacturer payload no meter profile describes")
COMPACT_FORMAT_UNKNOWN = _kind("meter.compact_format_unknown", "info",
                               "a compact M-Bus frame whose format is not known yet")
APPLICATION_ERROR = _kind("meter.application_error", "warning",
                          "the meter answered with an application error code")

# --- buses, ports and dongles -----------------------------------------------------------
DRIVER_CRASHED = _kind("driver.crashed", "error", "a driver's thread ended on a bug")
PORT_ERROR = _kind("bus.port_error", "error", "a bus's serial port failed; it is reopened")
START_FAILED = _kind("bus.start_failed", "error", "a bus's adapter could not be set up")
COORDINATOR = _kind("bus.coordinator", "info", "what the Zigbee coordinator reported at start")
FRAME_NOT_HANDLED = _kind("bus.frame_not_handled", "debug",
                          "a frame from the adapter that no handler takes")
MODEM_STATUS = _kind("bus.modem_status", "info", "the XBee modem reported a state change")
PERMIT_JOIN = _kind("bus.permit_join", "info", "the Zigbee network was opened or closed")
DONGLE_CRC_ERROR = _kind("dongle.crc_error", "warning", "a dongle frame failed its CRC")
DONGLE_FRAME_ERROR = _kind("dongle.frame_error", "warning", "a dongle frame is damaged")
DONGLE_INIT_FAILED = _kind("dongle.init_failed", "error", "the dongle could not be set up")
DONGLE_PING_FAILED = _kind("dongle.ping_failed", "warning", "the dongle did not answer a ping")
DONGLE_PORT_ERROR = _kind("dongle.port_error", "error", "the dongle's serial port failed")
DONGLE_REINITIALISED = _kind("dongle.reinitialised", "info", "the dongle was set up again")
DONGLE_REOPEN = _kind("dongle.reopen", "info", "the dongle's port was reopened")
DONGLE_SILENT = _kind("dongle.silent", "warning", "the dongle has been silent for too long")

# --- the gateway itself ----------------------------------------------------------------
STARTED = _kind("gateway.started", "info", "the runtime started")
STOPPING = _kind("gateway.stopping", "info", "the runtime is stopping")
BOOT = _kind("gateway.boot", "info", "why the gateway (re)started: power loss, update, ...")
CLOCK_SYNCED = _kind("gateway.clock_synced", "info", "the gateway's clock is synchronised")
CLOCK_UNSYNCED = _kind("gateway.clock_unsynced", "warning", "the gateway's clock lost sync")
CLOCK_JUMP = _kind("gateway.clock_jump", "warning", "the wall clock jumped")
UPLINK_CONNECTED = _kind("uplink.connected", "info", "connected to the broker")
UPLINK_DISCONNECTED = _kind("uplink.disconnected", "warning", "lost the broker")
STORE_RECREATED = _kind("store.recreated", "error", "the outbox was unreadable and recreated")
STORE_CORRUPT = _kind("store.corrupt", "error", "the outbox failed its integrity check")
CONFIG_APPLIED = _kind("config.applied", "info", "a new configuration took effect")
CONTROL_AUDIT = _kind("control.audit", "info", "a state change made from the console")

# --- fleet management and OTA ----------------------------------------------------------
FLEET_COMMAND_ACCEPTED = _kind("fleet.command_accepted", "info", "a fleet request was accepted")
FLEET_COMMAND_REJECTED = _kind("fleet.command_rejected", "warning",
                               "a fleet request was refused (signature, replay, unknown)")
FLEET_COMMAND_RESULT = _kind("fleet.command_result", "info", "the outcome of a fleet request")
FLEET_REBOOT_FAILED = _kind("fleet.reboot_failed", "error", "a requested reboot did not happen")
FLEET_SEQ_LOCKED = _kind("fleet.seq_locked", "warning",
                         "fleet request sequence numbers are locked after a replay")
FLEET_SEQ_RESET = _kind("fleet.seq_reset", "warning", "the fleet request sequence was reset")
OTA_DOWNLOADING = _kind("ota.downloading", "info", "an update is being downloaded")
OTA_PROGRESS = _kind("ota.progress", "info", "download progress of an update")
OTA_RESUMED = _kind("ota.resumed", "info", "an interrupted download resumed")
OTA_RETRYING = _kind("ota.retrying", "warning", "a download step failed and is retried")
OTA_VERIFIED = _kind("ota.verified", "info", "an update's signature and digest verified")
OTA_INSTALLED = _kind("ota.installed", "info", "an update was installed")
OTA_FAILED = _kind("ota.failed", "error", "an update failed; the running version stays")


# --- kinds added by the config work (append below this line) ---



# --- kinds added by the wire-store work (append below this line) ---



# --- kinds added by the mbus work (append below this line) ---



# --- kinds added by the zigbee work (append below this line) ---



# --- kinds added by the dlms-iec work (append below this line) ---



# --- kinds added by the wiring work (append below this line) ---



# --- kinds added by the edge work (append below this line) ---



# --- kinds added by the fleet-console work (append below this line) ---

"""The ``edge`` section: deltas, rollover, report by exception, clock trust and the
thresholds of the diagnostic events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .checks import ID, boolean, integer, list_of, mapping, number, one_of_keys, size, text
from .schema import Check, FieldSpec, Schema

def _decimal_text(v: Any) -> str:
    from decimal import Decimal, InvalidOperation
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise TypeError()
    try:
        d = Decimal(str(v).strip())
    except InvalidOperation:
        raise ValueError() from None
    if not d.is_finite() or d <= 0:
        raise ValueError()
    return str(d)


def _interval(v: Any) -> int:
    n = integer(60, 86400).convert(v)
    if 86400 % n:
        raise ValueError("intervals must tile a day")
    return n


ROLLOVER_SCHEMA = Schema((
    FieldSpec("register", text("a quantity or glob pattern such as 1-0:1.8.0 or 8-0:*"),
              help="which registers (OBIS code or description; * and ? match)"),
    FieldSpec("bus", ID, None, help="only readings of this driver instance"),
    FieldSpec("meter", text("a meter id or glob pattern"), None, help="only these meters"),
    FieldSpec("digits", integer(1, 38), None,
              help="the register wraps after this many digits of its mantissa (99999.999 -> 8)"),
    FieldSpec("bits", integer(1, 128), None, help="the raw counter wraps at 2**bits"),
    FieldSpec("wrap_at", Check("a positive decimal number such as 100000", _decimal_text,
                               as_text=True), None,
              help="the value (in the register's unit) at which it wraps to zero"),
), check=one_of_keys("digits", "bits", "wrap_at", required=True),
    help="a register that wraps at a fixed width")

RBE_SCHEMA = Schema((
    FieldSpec("enabled", boolean(), False,
              help="forward deltas, and register values only every N intervals or beyond the "
                   "deadband, instead of every value read"),
    FieldSpec("every_n_intervals", integer(1, 10000), 4,
              help="forward each cumulative register at least once per this many intervals"),
    FieldSpec("deadband", number(ge=0, le=1000, what="a fraction"), 0.05,
              help="forward an instantaneous value when it moved by more than this fraction "
                   "of the last forwarded one"),
    FieldSpec("skip_zero_deltas", boolean(), True,
              help="do not send deltas of zero: the register value sent every N intervals "
                   "shows that the missing intervals had no consumption"),
), help="report by exception (saves backhaul bytes)")

CLOCK_SCHEMA = Schema((
    FieldSpec("jump_threshold_ms", integer(100, 3_600_000), 2000,
              help="a wall-clock step larger than this (against the monotonic clock) is a jump"),
    FieldSpec("assume_synced", boolean(), False,
              help="trust the wall clock even when the kernel says it is not synchronised "
                   "(containers and test benches without NTP)"),
    FieldSpec("meter_time_window_s", integer(0, 10 * 365 * 86400), 86400,
              help="a current value whose meter timestamp is further than this from the "
                   "(synchronised) gateway clock is flagged meter_time_suspect: a replayed "
                   "telegram or a meter clock that was never set; 0 turns the check off"),
), help="clock trust")

DIAG_THRESHOLDS_SCHEMA = Schema((
    FieldSpec("consecutive_failures", integer(1, 10000), 3, help="failed reads in a row"),
    FieldSpec("min_success_ratio", number(ge=0, le=1, what="a fraction"), 0.8,
              help="read success ratio below which a meter is flagged"),
    FieldSpec("min_attempts", integer(1, 100000), 10,
              help="reads needed before the success ratio is judged"),
    FieldSpec("crc_errors", integer(1), 5, help="CRC/frame errors per diagnostics interval"),
    FieldSpec("decrypt_failures", integer(1), 1, help="decryption/authentication failures "
                                                      "per diagnostics interval"),
    FieldSpec("min_rssi_dbm", number(what="a level in dBm"), -100,
              help="mean RSSI below which the radio link is flagged"),
    FieldSpec("max_clock_drift_s", number(gt=0, what="a number of seconds"), 120,
              help="meter clock off the (synchronised) gateway clock by more than this"),
    FieldSpec("silent_after_s", number(gt=0, what="a number of seconds"), 7200,
              help="a meter not heard from for this long is flagged"),
    FieldSpec("stuck_after_s", number(gt=0, what="a number of seconds"), 172800,
              help="a cumulative register unchanged this long while the meter answers"),
    FieldSpec("leak_hours", integer(2, 720), 24,
              help="water/gas: no zero-flow hour within this many hours = suspected leak"),
    FieldSpec("reverse_registers", list_of(text("a quantity or glob pattern")), [],
              help="registers that count reverse flow (any increase is flagged)"),
    FieldSpec("store_depth", integer(1), 100000, help="unsent records in the store"),
    FieldSpec("oldest_unsent_s", number(gt=0, what="a number of seconds"), 3600,
              help="age of the oldest unsent record"),
    FieldSpec("disk_free_min", size(0), 50 * 1024**2, help="free space on the store's disk"),
    FieldSpec("memory_available_min", size(0), 32 * 1024**2, help="available memory"),
    FieldSpec("temperature_max_c", number(what="a temperature in Celsius"), 80,
              help="SoC temperature"),
), help="thresholds of the diagnostic events")

EDGE_SCHEMA = Schema((
    FieldSpec("enabled", boolean(), True, help="run the edge stage (deltas, diagnostics)"),
    FieldSpec("interval_s", Check("a number of seconds 60-86400 that divides a day "
                                  "(e.g. 900)", _interval), 900,
              help="interval grid the deltas are aligned to"),
    FieldSpec("gap_intervals", integer(1, 10000), 4,
              help="reads further apart than this many intervals are a gap: reported, not "
                   "interpolated across"),
    FieldSpec("registers", list_of(text("a quantity or glob pattern")), None,
              help="cumulative registers to compute deltas for; default: by unit (Wh, "
                   "varh, m3, l, J...)"),
    FieldSpec("rollover", list_of(ROLLOVER_SCHEMA), [], help="registers that wrap"),
    FieldSpec("report_by_exception", mapping(RBE_SCHEMA), RBE_SCHEMA.defaults(),
              help="report by exception"),
    FieldSpec("diag_interval_s", number(ge=1, what="a number of seconds"), 900,
              help="how often diagnostics snapshots are published on up/diag"),
    FieldSpec("clock", mapping(CLOCK_SCHEMA), CLOCK_SCHEMA.defaults(), help="clock trust"),
    FieldSpec("diagnostics", mapping(DIAG_THRESHOLDS_SCHEMA), DIAG_THRESHOLDS_SCHEMA.defaults(),
              help="thresholds of the diagnostic events"),
), help="edge computing: deltas, report by exception, diagnostics")


@dataclass(frozen=True, slots=True)
class RolloverRule:
    register: str
    bus: str | None = None
    meter: str | None = None
    digits: int | None = None
    bits: int | None = None
    wrap_at: str | None = None


@dataclass(frozen=True, slots=True)
class ReportByException:
    enabled: bool = False
    every_n_intervals: int = 4
    deadband: float = 0.05
    skip_zero_deltas: bool = True


@dataclass(frozen=True, slots=True)
class ClockTrust:
    jump_threshold_ms: int = 2000
    assume_synced: bool = False
    meter_time_window_s: int = 86400


@dataclass(frozen=True, slots=True)
class DiagThresholds:
    consecutive_failures: int = 3
    min_success_ratio: float = 0.8
    min_attempts: int = 10
    crc_errors: int = 5
    decrypt_failures: int = 1
    min_rssi_dbm: float = -100
    max_clock_drift_s: float = 120
    silent_after_s: float = 7200
    stuck_after_s: float = 172800
    leak_hours: int = 24
    reverse_registers: tuple[str, ...] = ()
    store_depth: int = 100000
    oldest_unsent_s: float = 3600
    disk_free_min: int = 50 * 1024**2
    memory_available_min: int = 32 * 1024**2
    temperature_max_c: float = 80


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """The ``edge:`` section (see EDGE_SCHEMA); the defaults equal the schema's."""

    enabled: bool = True
    interval_s: int = 900
    gap_intervals: int = 4
    registers: tuple[str, ...] | None = None
    rollover: tuple[RolloverRule, ...] = ()
    report_by_exception: ReportByException = ReportByException()
    diag_interval_s: float = 900
    clock: ClockTrust = ClockTrust()
    diagnostics: DiagThresholds = DiagThresholds()

    @classmethod
    def from_values(cls, v: Mapping[str, Any]) -> "EdgeConfig":
        d = {**EDGE_SCHEMA.defaults(), **{k: x for k, x in v.items() if x is not None}}
        th = dict(d["diagnostics"])
        th["reverse_registers"] = tuple(th.get("reverse_registers") or ())
        return cls(
            enabled=d["enabled"], interval_s=d["interval_s"], gap_intervals=d["gap_intervals"],
            registers=None if d["registers"] is None else tuple(d["registers"]),
            rollover=tuple(RolloverRule(**r) for r in d["rollover"]),
            report_by_exception=ReportByException(**d["report_by_exception"]),
            diag_interval_s=d["diag_interval_s"], clock=ClockTrust(**d["clock"]),
            diagnostics=DiagThresholds(**th))

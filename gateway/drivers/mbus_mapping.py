"""From decoded M-Bus / wM-Bus telegrams to what the gateway stores: pure functions.

Why apart from the drivers: which records become readings, which meter time a value
carries, what a status change or a recovery says, and what a decode error's event holds
are the same on the wire and over the air, and are easier to test without a port, a thread
or a clock (``rx`` and the time zone are arguments). Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from .. import events as kinds
from ..model import (QUALITY_HISTORIC, QUALITY_METER_ERROR, QUALITY_NOT_ENCRYPTED, Event,
                     Reading)

MAX_EVENT_HEX = 1024  # hex digits of a frame kept in an event (a long frame is 522)


def decode_error_detail(message: str, frame: bytes) -> dict[str, Any]:
    h = bytes(frame).hex().upper()
    return {"error": message, "hex": h[:MAX_EVENT_HEX],
            **({"hex_truncated": True} if len(h) > MAX_EVENT_HEX else {})}


def describe_device(t: Any) -> dict[str, Any]:
    """One device found by a scan, as the console and ``gateway scan mbus`` show it."""
    from ..protocols.mbus.tables import manufacturer_value
    try:  # manufacturer bytes in wire order, as libmbus prints secondary addresses
        mfr = manufacturer_value(t.manufacturer).to_bytes(2, "little").hex().upper()
    except ValueError:
        mfr = "FFFF"
    return {"secondary": f"{t.id}{mfr}{t.version:02X}{t.device_type:02X}", "id": t.id,
            "manufacturer": t.manufacturer, "version": t.version,
            "device_type": t.device_type_name, "primary": t.address,
            "records": len(t.records), "status_flags": t.status_flags}


def read_ok_events(consecutive_failures: int, last_flags: tuple[str, ...],
                   flags: tuple[str, ...], status: Any, bus: str, meter_id: str, rx: int,
                   **recovered: Any) -> list[Event]:
    """What a good read says besides its readings, each once: the meter recovered after
    ``consecutive_failures``, its status flags changed from ``last_flags`` (the caller
    keeps ``flags`` as the new last ones)."""
    events = []
    if consecutive_failures:
        events.append(Event(kinds.RECOVERED, rx, bus, meter_id, "info",
                            {"after_failures": consecutive_failures, **recovered}))
    if flags != last_flags:
        events.append(Event(kinds.STATUS, rx, bus, meter_id, "warning" if flags else "info",
                            {"flags": list(flags), "status": status,
                             "previous": list(last_flags)}))
    return events


def meter_times(t: Any, tz: dt.tzinfo, records: Iterable[Any] | None = None
                ) -> dict[tuple[int, int], int]:
    """Epoch ms of a telegram's own date/time records, by (storage, subunit).

    Storage 0: the meter's clock when it made the telegram ("Date and time", type F or I).
    Storage n >= 1: the date the stored values belong to (the due date); a date-only record
    (type G) stands for 00:00 of that day. M-Bus times carry no zone: read in ``tz``.
    Invalid dates (the IV bit, impossible fields) were already refused by the decoder."""
    best: dict[tuple[int, int], tuple[int, int]] = {}
    for r in (t.records if records is None else records):
        if r.error is not None or type(r.value) is not str or r.tariff \
                or r.function != "instantaneous":
            continue
        if r.kind == "datetime" and r.quantity == "Date and time":
            rank = 0
        elif r.kind == "date" and r.quantity == "Date" and r.storage:
            rank = 1  # a date alone cannot be the meter's clock now
        else:
            continue
        ms = local_ms(r.value, tz)
        if ms is None:
            continue
        key = (r.storage, r.subunit)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, ms)
    return {k: ms for k, (_, ms) in best.items()}


@functools.lru_cache(maxsize=4096)
def local_ms(text: str, tz: dt.tzinfo) -> int | None:
    """An ISO date or date-time without zone, in tz, as epoch ms. Cached: the meters of a
    bus share the current minute, and a meter repeats its due dates for a whole period."""
    try:
        return int(dt.datetime.fromisoformat(text).replace(tzinfo=tz).timestamp() * 1000)
    except (ValueError, OverflowError):
        return None


UTC = ZoneInfo("UTC")


def telegram_readings(t: Any, meter_id: str, bus: str, rx_ms: int,
                      tz: dt.tzinfo = UTC) -> list[Reading]:
    """Numeric records as Readings: quantity = the record key (quantity plus function,
    storage, tariff, subunit when not the defaults), value exact, meter timestamp from the
    telegram's date/time record of the same storage number (see :func:`meter_times`).
    Stored values (storage >= 1) are flagged historic."""
    s = t.status or 0
    # application error / abnormal condition (bits 0-1 = 2, 3), permanent or temporary error
    quality = (QUALITY_METER_ERROR,) if (s & 0x18 or s & 0x03 >= 2) else ()
    if t.extra.get("not_encrypted"):  # encrypted by its bits, but it came in clear
        quality += (QUALITY_NOT_ENCRYPTED,)
    stored = quality + (QUALITY_HISTORIC,)
    nums = []
    dates = []
    for r in t.records:
        k = r.kind
        if k == "number" or k == "flags":
            if r.value is not None and r.error is None:
                nums.append(r)
        elif k == "datetime" or k == "date":
            dates.append(r)
    times = meter_times(t, tz, dates) if dates else None
    if not times:
        return [Reading(meter_id, r.key, r.value, r.exponent, r.unit, None, rx_ms,
                        stored if r.storage else quality, bus) for r in nums]
    if all(sub == 0 for _, sub in times):  # the usual case: one date per storage number
        by_storage = {storage: ms for (storage, _), ms in times.items()}
        return [Reading(meter_id, r.key, r.value, r.exponent, r.unit,
                        by_storage.get(r.storage), rx_ms, stored if r.storage else quality,
                        bus) for r in nums]
    return [Reading(meter_id, r.key, r.value, r.exponent, r.unit,
                    times.get((r.storage, r.subunit), times.get((r.storage, 0))), rx_ms,
                    stored if r.storage else quality, bus) for r in nums]

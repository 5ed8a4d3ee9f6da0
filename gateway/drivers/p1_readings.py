"""Readings of a parsed P1 telegram, the same for every driver that receives one (mode D on
a serial port, or a P1 telegram inside a general-glo-ciphered DLMS push).

Registers are numeric values with a unit (identifiers, tariff codes and counters have none;
buffer entries such as the power failure log or monthly peaks are not current values).
Each reading carries the telegram's own time (``0-0:1.0.0``) as its meter time; a value with
its own capture time (DSMR gas ``0-n:24.2.1``, Fluvius peak ``1-0:1.6.0``) gets that time
and the ``historic`` flag (it says nothing about the meter clock's drift).
"""

from __future__ import annotations

from ..model import QUALITY_HISTORIC, Reading
from ..protocols.iec62056_21 import normalise_obis
from ..protocols.p1 import P1Telegram


def p1_readings(tg: P1Telegram, meter_id: str, rx_ms: int, bus: str,
                obis_prefix: str = "1-0:") -> list[Reading]:
    out = []
    for v in tg.values:
        ex = v.exact()
        if ex is None or not v.unit or v.buffer:
            continue
        own = v.ts_ms is not None
        out.append(Reading(meter_id, normalise_obis(v.obis, obis_prefix), ex[0], ex[1], v.unit,
                           v.ts_ms if own else tg.meter_ts_ms, rx_ms,
                           (QUALITY_HISTORIC,) if own else (), bus))
    return out

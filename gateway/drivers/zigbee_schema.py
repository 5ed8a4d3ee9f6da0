"""The ``zigbee`` driver's options: checked by ``gateway check-config`` with file:line:col.

Apart from the driver so that reading a config does not import the driver's codecs.
"""

from __future__ import annotations

from typing import Any

from ..config import (ID, SERIAL_SCHEMA, DriverSchema, FieldSpec, Schema, boolean, integer,
                      list_of, mapping, number, one_of_ints, text)

def parse_ieee(text_: str) -> int:
    digits = text_.replace(":", "").replace("-", "")
    if len(digits) != 16:
        raise ValueError(f"an IEEE address has 16 hex digits, got {text_!r}")
    return int(digits, 16)


DEVICE_SCHEMA = Schema((
    FieldSpec("ieee", text("a 64-bit IEEE address: 16 hex digits, optionally separated by "
                           "':' or '-'", r"(?:[0-9A-Fa-f]{2}[:-]?){7}[0-9A-Fa-f]{2}"),
              help="the device's IEEE (EUI-64) address, e.g. 00:0d:6f:00:0a:bc:de:f0"),
    FieldSpec("id", ID, None, help="meter id in readings; default: the IEEE address as 16 "
                                   "lowercase hex digits"),
    FieldSpec("endpoint", integer(1, 240), None, help="endpoint of its Metering cluster; "
                                                     "default: the driver's endpoint"),
    FieldSpec("poll", boolean(), False, help="poll it instead of configuring reporting"),
    FieldSpec("expected_interval_s", number(gt=0, what="a number of seconds"), None,
              help="how often it should be heard from; default: report_max_s (reporting) "
                   "or poll_interval_s (polled)"),
), help="a device known in advance (optional: joining devices are found by themselves)")


def _report_rule(v: dict[str, Any]) -> list[tuple[str, str]]:
    if v["report_min_s"] > v["report_max_s"]:
        return [("report_min_s", f"expected a number <= report_max_s ({v['report_max_s']}), "
                                 f"got {v['report_min_s']}")]
    return []


SCHEMA = DriverSchema((
    FieldSpec("serial", mapping(SERIAL_SCHEMA), help="the XBee's serial port (AP=1 or AP=2)"),
    FieldSpec("api_mode", one_of_ints(1, 2), 2,
              help="the module's AP setting: 2 = escaped (recommended), 1 = unescaped"),
    FieldSpec("profile", one_of_ints(0x0104, 0x0109), 0x0104,
              help="default profile of requests: 0x0104 Home Automation, 0x0109 Smart Energy "
                   "(learned per device from what it sends)"),
    FieldSpec("endpoint", integer(1, 240), 1, help="default device endpoint (learned per "
                                                   "device from what it sends)"),
    FieldSpec("poll_interval_s", number(gt=0, what="a number of seconds"), 300,
              help="how often devices that do not report are read"),
    FieldSpec("report_min_s", integer(0, 65535), 30, help="Configure Reporting minimum "
                                                          "interval"),
    FieldSpec("report_max_s", integer(1, 65534), 300, help="Configure Reporting maximum "
                                                           "interval"),
    FieldSpec("response_timeout_s", number(gt=0, what="a number of seconds"), 10,
              help="how long to wait for a device's (or the module's) answer"),
    FieldSpec("retries", integer(0, 10), 2, help="resends of an unanswered request"),
    FieldSpec("silence_factor", number(ge=1, what="a number"), 2,
              help="a device is silent after this many expected intervals without a frame"),
    FieldSpec("rssi_interval_s", number(gt=0, what="a number of seconds"), 60,
              help="least time between two RSSI (AT DB) samples of one device"),
    FieldSpec("lqi_interval_s", number(gt=0, what="a number of seconds"), 300,
              help="how often the coordinator's neighbor table (Mgmt_Lqi_req) is read for "
                   "each device's LQI"),
    FieldSpec("devices", list_of(DEVICE_SCHEMA, unique_key="ieee"), [],
              help="devices known in advance, to name them or force polling"),
), check=_report_rule, help="Digi XBee Zigbee coordinator: Smart Energy / HA metering")

"""`gateway decode xbee HEX`: one XBee API frame, and the ZCL/ZDO frame inside a 0x90/0x91.

``--json`` prints one object with ``frame_type``, ``source64``, ``cluster``, ``profile`` and
``attributes`` (``{"id": "0x0000", "name": "CurrentSummationDelivered", "type": "uint48",
"value": ..., "invalid": false}``). Integer values are JSON integers (exact); raw register
values are printed unscaled, since multiplier and divisor live in other frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from decimal import Decimal
from typing import Any

from ..protocols import xbee, zcl, zdo
from .decode_common import DecodeFailed, parse_hex, print_json

HELP = "an XBee API frame (mode 2 escaped by default) and the ZCL frame it carries"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("hex", metavar="HEX", help="the frame in hex, starting with 7E ('-': stdin)")
    p.add_argument("--api-mode", type=int, choices=(1, 2), default=2,
                   help="2: escaped (AP=2, default); 1: unescaped (AP=1)")


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, tuple):  # array / structure elements
        return [{"type": e.type_name, "value": _plain(e.value)} for e in v]
    if isinstance(v, Decimal):
        return format(v, "f")
    return v


def _value(tv: zcl.TypedValue) -> Any:
    return _plain(tv.value)


def _attr(cluster: int, attr: int, tv: zcl.TypedValue | None, status: int | None = None
          ) -> dict[str, Any]:
    out: dict[str, Any] = {"id": f"0x{attr:04X}", "name": zcl.attribute_name(cluster, attr)}
    if status is not None:
        out["status"] = zcl.status_name(status)
    if tv is not None:
        out.update(type=tv.type_name, value=_value(tv), invalid=tv.invalid)
        if tv.noncanonical:
            out["noncanonical"] = True  # e.g. a bool sent as 0x80: read as true
    return out


def describe_zcl(cluster: int, data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    frame = zcl.parse_zcl(data)
    h, p = frame.header, frame.payload
    info: dict[str, Any] = {
        "frame_type": h.frame_type_name,
        "manufacturer": None if h.manufacturer is None else f"0x{h.manufacturer:04X}",
        "direction": "server to client" if h.direction else "client to server",
        "disable_default_response": h.disable_default_response,
        "seq": h.seq, "command": f"0x{h.command:02X}", "command_name": frame.command_name,
    }
    attrs: list[dict[str, Any]] = []
    if isinstance(p, zcl.ReportAttributes):
        attrs = [_attr(cluster, r.attribute_id, r.value) for r in p.reports]
    elif isinstance(p, zcl.ReadAttributesResponse):
        attrs = [_attr(cluster, r.attribute_id, r.value, r.status) for r in p.records]
    elif isinstance(p, zcl.ReadAttributes):
        attrs = [_attr(cluster, a, None) for a in p.attribute_ids]
    elif isinstance(p, zcl.ConfigureReporting):
        info["reporting"] = [{
            "id": f"0x{r.attribute_id:04X}", "name": zcl.attribute_name(cluster, r.attribute_id),
            "direction": r.direction, "type": zcl.DATA_TYPES[r.type_id].name
            if r.direction == 0 else None, "min_interval": r.min_interval,
            "max_interval": r.max_interval, "reportable_change": r.reportable_change,
            "timeout": r.timeout} for r in p.records]
    elif isinstance(p, zcl.ConfigureReportingResponse):
        info["reporting_status"] = [{
            "status": zcl.status_name(r.status),
            "id": None if r.attribute_id is None else f"0x{r.attribute_id:04X}"}
            for r in p.records]
    elif isinstance(p, zcl.DefaultResponse):
        info["response_to"] = f"0x{p.command_id:02X}"
        info["status"] = zcl.status_name(p.status)
    elif isinstance(p, zcl.RawPayload):
        info["payload"] = p.data.hex()
    return info, attrs


def describe(raw: bytes, escaped: bool) -> dict[str, Any]:
    """Everything the frame says, as plain JSON-able data; raises the codecs' decode errors."""
    data = xbee.decode_frame(raw, escaped)
    frame = xbee.parse_frame(data)
    ftype = xbee.frame_type_of(frame)
    out: dict[str, Any] = {"frame_type": f"0x{ftype:02X}", "frame_name": xbee.frame_name(ftype),
                           "length": len(data), "checksum": f"0x{xbee.checksum(data):02X}"}
    fields = {f.name: getattr(frame, f.name) for f in dataclasses.fields(frame)}
    for name, v in fields.items():
        if name in ("source64", "dest64", "remote64"):
            out[name] = xbee.eui64_hex(v)
        elif name in ("source16", "dest16", "remote16", "parent16", "cluster", "profile",
                      "frame_type", "digi_profile", "manufacturer"):
            out[name] = f"0x{v:04X}" if name != "frame_type" else out[name]
        elif name != "data":
            out[name] = _plain(v)
    if isinstance(frame, (xbee.ATCommandResponse, xbee.RemoteATCommandResponse)):
        out["status_name"] = xbee.AT_STATUS.get(frame.status, "?")
    if isinstance(frame, xbee.TransmitStatus):
        out["delivery"] = xbee.DELIVERY_STATUS.get(frame.delivery_status, "?")
    if isinstance(frame, xbee.ModemStatus):
        out["status_name"] = xbee.MODEM_STATUS.get(frame.status, "?")
    payload = getattr(frame, "data", None)
    if payload is not None:
        out["data"] = payload.hex()
    if isinstance(frame, (xbee.ExplicitRxIndicator, xbee.ExplicitAddressingCommand)):
        out["cluster_name"] = (zdo.cluster_name(frame.cluster) if frame.profile == 0
                               else zcl.CLUSTER_NAMES.get(frame.cluster, "?"))
        out["profile_name"] = zcl.PROFILES.get(frame.profile, "?")
        if frame.profile == zdo.ZDO_PROFILE:
            msg = zdo.parse_zdo(frame.cluster, frame.data)
            if msg is not None:
                out["zdo"] = {k: (xbee.eui64_hex(v) if "ieee" in k else v) for k, v in
                              ((f.name, getattr(msg, f.name)) for f in dataclasses.fields(msg))}
        elif not zcl.is_zcl_profile(frame.profile):
            out["payload"] = "raw (not a ZCL profile)"  # Digi 0xC105...: its own payload
        else:
            out["zcl"], out["attributes"] = describe_zcl(frame.cluster, frame.data)
    elif isinstance(frame, xbee.RxIndicator):
        # AO=0: no cluster or profile in the frame. Shown as ZCL only if it parses as one,
        # with attribute ids but no names (they depend on the cluster).
        out["cluster"] = out["profile"] = None
        try:
            out["zcl"], out["attributes"] = describe_zcl(-1, frame.data)
        except zcl.ZCLDecodeError:
            pass
    return out


def run(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.hex == "-" else args.hex
    raw = parse_hex(text, "HEX")
    try:
        info = describe(raw, args.api_mode == 2)
    except (xbee.XBeeDecodeError, zcl.ZCLDecodeError, zdo.ZDODecodeError) as exc:
        raise DecodeFailed(f"not a valid XBee API mode {args.api_mode} frame: {exc}") from None
    if args.json:
        print_json(info)
        return 0
    print(f"{info['frame_name']} (frame type {info['frame_type']}), {info['length']} bytes, "
          f"checksum {info['checksum']} ok")
    skip = {"frame_type", "frame_name", "length", "checksum", "zcl", "attributes", "zdo"}
    for k, v in info.items():
        if k not in skip:
            print(f"  {k}: {v}")
    if "zdo" in info:
        print("  ZDO: " + ", ".join(f"{k}={v}" for k, v in info["zdo"].items()))
    if "zcl" in info:
        z = info["zcl"]
        print(f"  ZCL {z['frame_type']} {z['command_name']} ({z['command']}), seq {z['seq']}, "
              f"{z['direction']}")
        for k in ("status", "response_to", "reporting", "reporting_status", "payload"):
            if k in z:
                print(f"    {k}: {z[k]}")
        for a in info.get("attributes") or []:
            line = f"    {a['id']} {a['name']}"
            if "status" in a:
                line += f" [{a['status']}]"
            if "type" in a:
                line += f" {a['type']} = {a['value']}" + (" (INVALID sentinel)"
                                                          if a["invalid"] else "")
                if a.get("noncanonical"):
                    line += " (non-canonical encoding)"
            print(line)
    return 0

"""The console's commands: their words, usage, help text, request and rendering.

Each command turns its words into one control request (``build``) and its result into plain
lines (``render``); streaming commands also render each item as one line. Adding a command
is one ``Spec`` here and one handler in :mod:`gateway.control.handlers`.
"""

from __future__ import annotations

import difflib
import getpass
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from ..text import plural
from .render import Out, age, ascii_safe, clock, duration, size, wrap_lines


class UsageError(Exception):
    """The command line is wrong; the message says how it should look."""


Build = Callable[[list[str]], tuple[str, dict[str, Any]]]
Render = Callable[[Any, Out], None]


@dataclass(frozen=True)
class Spec:
    words: tuple[str, ...]
    params: str
    summary: str
    help: str
    build: Build
    render: Render
    item: Render | None = None          # streaming: one line per item
    prompt_key: bool = False            # keys set: ask for the key without echo
    complete: tuple[str, ...] = field(default=())  # what to complete the next word with

    @property
    def name(self) -> str:
        return " ".join(self.words)

    @property
    def usage(self) -> str:
        return f"{self.name} {self.params}".rstrip()


def _n_args(name: str, rest: list[str], lo: int, hi: int, usage: str) -> None:
    if not lo <= len(rest) <= hi:
        raise UsageError(f"usage: {usage}")


def _number(text: str, what: str, lo: float, hi: float, integer: bool = False) -> float | int:
    try:
        v: float | int = int(text) if integer else float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, got {text!r}") from None
    if not lo <= v <= hi:
        raise UsageError(f"{what} must be {lo:g}-{hi:g}, got {text}")
    return v


def _abs_file(text: str) -> str:
    path = os.path.abspath(os.path.expanduser(text))
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    return path


# ----------------------------------------------------------------- renderers


def r_status(res: dict[str, Any], out: Out) -> None:
    st, br = res["store"], res["broker"]
    out.wrapped("gateway   ", f"{res['gateway_id']} ({res['board']})  firmware "
                f"{res['firmware']}  up {duration(res['uptime_s'])}")
    out.wrapped("records   ", f"epoch {res['epoch']}  last seq {res['last_seq']}")
    oldest = st["oldest_unsent_age_s"]
    out.wrapped("store     ", f"{st['depth']} unsent"
                + (f", oldest {duration(oldest)} old" if oldest is not None else "")
                + f"  {size(st['bytes'])} of {size(st['max_bytes'])}")
    state = br["state"]
    style = "ok" if state == "connected" else "fail"
    text = f"{br['broker']}"
    if br.get("connected"):
        up = age(br.get("since_ms")).removesuffix(" ago")
        text += (f" for {up}; {br.get('in_flight', 0)} in flight; last ack "
                 f"{age(br.get('last_ack_ms'))}")
    out.wrapped(f"broker    {out.paint(state, style)} ", text)
    if not br.get("connected") and br.get("last_error"):
        out.wrapped(" " * 10, ascii_safe(br["last_error"]))
    out.line(f"consoles  {res['consoles']} connected")
    out.line("buses")
    out.table(["NAME", "TYPE", "STATE", "METERS", "REFUSED", "DETAIL"],
              [[b["name"], b["type"], b["state"], b["meters"], b["refused"],
                _bus_detail(b.get("bus"))] for b in res["buses"]], indent=2)


def _bus_detail(extra: dict[str, Any] | None) -> str:
    if not extra:
        return ""
    return ", ".join(f"{k}={_plain(v)}" for k, v in extra.items())


def r_meters(res: dict[str, Any], out: Out) -> None:
    rows = []
    for m in res["meters"]:
        val = f"{m['last_value']} {m['unit'] or ''}".strip() if m["last_value"] else "-"
        ratio = f"{100 * m['success_ratio']:.0f}%" if m["success_ratio"] is not None else "-"
        radio = "/".join("-" if x is None else str(x) for x in (m["rssi_dbm"], m["lqi"]))
        rows.append([m["id"], m["bus"], age(m["last_seen_ms"]), val, ratio,
                     "" if radio == "-/-" else radio, ",".join(m["flags"])])
    if not rows:
        out.line("no meters yet")
        return
    out.table(["ID", "BUS", "LAST SEEN", "LAST VALUE", "OK", "RSSI/LQI", "FLAGS"], rows,
              shrink=6, id_first=True)
    out.line(plural(len(rows), "meter"))


def r_meter(res: dict[str, Any], out: Out) -> None:
    out.kv([("meter", res["id"]), ("bus", f"{res['bus']} ({res.get('type') or '?'})"),
            ("last seen", age(res.get("last_seen_ms"))),
            ("seen", f"{res.get('readings_seen', 0)} readings, "
                     f"{res.get('events_seen', 0)} events since start"),
            ("key stored", "yes" if res.get("key_stored") else "no")])
    stats = res.get("stats") or {}
    if stats:
        out.wrapped("counters  ", ", ".join(f"{k}={_plain(v)}" for k, v in stats.items()))
    if res.get("config"):
        out.wrapped("config    ", ", ".join(f"{k}={_plain(v)}"
                                            for k, v in res["config"].items()))
    if res.get("last_readings"):
        out.line("last readings")
        out.table(["QUANTITY", "VALUE", "UNIT", "METER TIME", "RECEIVED", "QUALITY"],
                  [[r["quantity"], r["value"], r["unit"], clock(r["meter_ts_ms"]),
                    age(r["rx_ts_ms"]), ",".join(r["quality"])] for r in res["last_readings"]],
                  indent=2)
    if res.get("events"):
        out.line("recent events")
        for e in res["events"][-8:]:
            out.wrapped(f"  {clock(e['ts_ms'])} {e['severity']:<7} ",
                        f"{e['kind']} {_detail(e.get('detail'))}".rstrip(), indent=4)


def _plain(v: Any) -> str:
    """An option or counter value as text: mappings and lists without Python's quotes."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_plain(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_plain(x) for x in v) + "]"
    return "-" if v is None else ascii_safe(str(v))


def _detail(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    return ascii_safe(" ".join(f"{k}={json.dumps(v, default=str)}" for k, v in d.items()))


def r_read(res: dict[str, Any], out: Out) -> None:
    out.wrapped("", f"{res['meter_id']} on {res['bus']} ({res['duration_ms']} ms):")
    readings = [r for r in res["records"] if r["type"] == "reading"]
    # Columns sized to what was read, so values line up whatever the register names are;
    # a name too long for the terminal takes its own line and the values stay aligned.
    qw = min(max((len(r["quantity"]) for r in readings), default=0), 30)
    vw = max((len(r["value"]) for r in readings), default=0)
    uw = max((len(r["unit"] or "") for r in readings), default=0)
    for r in res["records"]:
        if r["type"] == "reading":
            q = f" [{','.join(r['quality'])}]" if r["quality"] else ""
            at = f" at {clock(r['meter_ts_ms'])}" if r["meter_ts_ms"] is not None else ""
            name = ascii_safe(r["quantity"])
            if len(name) > qw:
                out.wrapped("  ", name)
                name = ""
            head = f"  {name:<{qw}}  {r['value']:>{vw}} {(r['unit'] or ''):<{uw}}"
            tail = f"{at}{q}".strip()
            if tail:
                out.wrapped(head + " ", tail, indent=qw + 4)
            else:
                out.line(head.rstrip())
        else:
            out.wrapped(f"  {r.get('kind', r['type'])} ", _detail(r.get("detail")), indent=4)
    if not res["records"]:
        out.line("  (the meter answered with no values)")


def r_record(item: dict[str, Any], out: Out) -> None:
    t = item.get("type")
    if t == "reading":
        q = f" [{','.join(item['quality'])}]" if item["quality"] else ""
        out.wrapped(f"{clock(item['rx_ts_ms'])} ", f"{item['meter_id']} {item['quantity']} = "
                    f"{item['value']} {item['unit']}{q}", indent=4)
    elif t == "event":
        sev = item["severity"]
        style = {"error": "fail", "warning": "warn"}.get(sev, "dim")
        for line in wrap_lines(f"{clock(item['ts_ms'])} {sev.upper():<7} ",
                               f"{item['kind']} {item.get('meter_id') or item['source']} "
                               f"{_detail(item.get('detail'))}".rstrip(), indent=4):
            out.line(out.paint(line, style))
    elif t == "gap":
        for line in wrap_lines(f"{clock(item['ts_ms'])} GAP ",
                               f"seq {item['first_seq']}..{item['last_seq']} "
                               f"({item['count']} lost): {item['reason']}", indent=4):
            out.line(out.paint(line, "fail"))
    elif t == "dropped":
        out.line(out.paint(f"... {plural(item['count'], 'record')} not shown (console too slow)", "warn"))
    else:
        out.wrapped("", ascii_safe(json.dumps(item, default=str)))


def r_tail_end(res: dict[str, Any], out: Out) -> None:
    out.line(f"-- {plural(res['sent'], 'record')} shown"
             + (f", {res['dropped']} not shown (console too slow)" if res["dropped"] else ""))


def r_telegram(item: dict[str, Any], out: Out) -> None:
    if "progress" in item:
        out.wrapped("... ", str(item["progress"]))
        return
    known = "known" if item.get("known") else "UNKNOWN"
    rssi = item.get("rssi_dbm")
    result = item.get("result")
    problem = f" {result}" if item.get("known") and result and result != "ok" else ""
    profile = f"[{item['profile']}] " if item.get("profile") else ""  # the meter profile
    out.wrapped(f"{clock(item.get('ts_ms'))} ", f"{item.get('manufacturer', '?'):<4} "
                f"{item.get('id', '?'):<10} ver {item.get('version', '-')} "
                f"{item.get('device_type', '-')} {profile}"
                f"{'' if rssi is None else f'{rssi} dBm '}{known}{problem}", indent=4)


def r_listen_end(res: dict[str, Any], out: Out) -> None:
    took = res.get("listened_s", res["seconds"])
    early = f" (stopped early; asked for {res['seconds']:g} s)" if res.get("stopped_early") \
        else ""
    out.wrapped("-- ", f"{plural(res['heard'], 'telegram')} heard on {res['bus']} in "
                f"{took:g} s{early}"
                + (f", {res['dropped']} not shown" if res.get("dropped") else ""))


def r_device(item: dict[str, Any], out: Out) -> None:
    if "progress" in item:
        out.wrapped("... ", str(item["progress"]))
    else:
        out.wrapped("found ", ", ".join(f"{k}={_plain(v)}" for k, v in item.items()))


def r_scan_end(res: dict[str, Any], out: Out) -> None:
    out.line(f"-- {plural(len(res['devices']), 'device')} found on {res['bus']}")


def r_permit(res: dict[str, Any], out: Out) -> None:
    if res["seconds"]:
        out.line(f"{res['bus']}: joining permitted for {res['seconds']} s")
    else:
        out.line(f"{res['bus']}: joining closed")
    answer = res.get("answer")
    if answer:
        shown = _detail(answer) if isinstance(answer, dict) else \
            ", ".join(map(str, answer)) if isinstance(answer, list) else str(answer)
        out.wrapped("  coordinator: ", ascii_safe(shown))


def r_diag(res: dict[str, Any], out: Out) -> None:
    for c in res["checks"]:
        tag = {"ok": "[ OK ]", "warn": "[WARN]", "fail": "[FAIL]"}[c["level"]]
        out.wrapped(out.paint(tag, c["level"]) + " ", f"{c['what']}: {c['detail']}")
    if res["recent_problems"]:
        out.line("recent problems")
        # the same problem of the same meter once, the latest, with how often it came
        # (a meter sending the invalid sentinel every report must not fill the screen)
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for e in res["recent_problems"]:
            groups.setdefault((e["kind"], e.get("meter_id") or e["source"]), []).append(e)
        for (kind, who), evs in sorted(groups.items(), key=lambda g: g[1][-1]["ts_ms"]):
            e = evs[-1]
            times = f" ({len(evs)} times)" if len(evs) > 1 else ""
            out.wrapped(f"  {clock(e['ts_ms'])} {e['severity']:<7} ",
                        f"{kind} {who}{times} {_detail(e.get('detail'))}".rstrip(), indent=4)
    out.line("overall: " + out.paint(res["overall"].upper(), res["overall"]))


def r_store(res: dict[str, Any], out: Out) -> None:
    out.kv([("path", res["path"]), ("epoch", res["epoch"]),
            ("unsent", f"{plural(res['depth'], 'record')}, {size(res['bytes'])} of {size(res['max_bytes'])}"
                       f" ({res['used_pct']}%)"),
            ("oldest unsent", f"seq {res['oldest_seq']}, {duration(res['oldest_unsent_age_s'])}"
                              " old" if res["oldest_seq"] is not None else "-"),
            ("last seq", res["last_seq"]),
            ("since start", f"{plural(res['records_committed'], 'record')} in "
                            f"{plural(res['commits'], 'commit')}, "
                            f"{res['acked_records']} acknowledged"),
            ("evictions", f"{plural(res['evicted_records'], 'record')} in "
                          f"{plural(res['gap_records'], 'gap')}"),
            ("disk full", f"{res['full_errors']} failed writes"),
            ("files", ", ".join(f"{k} {size(v)}" for k, v in res["files"].items())),
            ("integrity", res["integrity"])])


def r_uplink(res: dict[str, Any], out: Out) -> None:
    state = out.paint(res["state"], "ok" if res["state"] == "connected" else "fail")
    tls = f"TLS >= {res['tls_version']}"
    if res.get("tls_negotiated"):
        tls = f"{res['tls_negotiated']} negotiated ({tls} required)"
    out.kv([("state", state + f" ({res['broker']}, client id {res['client_id']}, {tls})"),
            ("since", clock(res.get("since_ms"), date=True)),
            ("last error", res.get("last_error")),
            ("in flight", res.get("in_flight")),
            ("last ack", age(res.get("last_ack_ms"))),
            ("messages", f"{res.get('messages_published', 0)} published, "
                         f"{res.get('messages_acked', 0)} acked "
                         f"({plural(res.get('records_acked', 0), 'record')})"),
            ("connects", f"{plural(res.get('connect_attempts', 0), 'attempt')}, "
                         f"{res.get('connect_failures', 0)} failed")])
    out.line("certificates")
    rows = []
    for c in res["certificates"]:
        if "error" in c:
            rows.append([c["role"], c["file"], "unreadable", c["error"]])
        else:
            rows.append([c["role"], c["subject"], c["not_after"], c["days_left"]])
    out.table(["ROLE", "SUBJECT", "NOT AFTER", "DAYS LEFT"], rows, shrink=1, indent=2)


def r_config_show(res: dict[str, Any], out: Out) -> None:
    drivers = {d.get("name"): d for d in (res.get("config") or {}).get("drivers", [])}
    for line in res["summary"].splitlines():
        head = line.partition(": ")[0]
        label = re.match(r"([a-z]{1,10}:\s+)(\S.*)", line)
        if line.startswith("  - ") and head[4:].split(" (")[0] in drivers:
            _driver_lines(head, drivers[head[4:].split(" (")[0]], out)
        elif label:
            out.wrapped(label.group(1), label.group(2))
        else:
            out.wrapped("", line, indent=2)
    for w in res["warnings"]:
        out.wrapped("warning: ", w)


def _driver_lines(head: str, d: dict[str, Any], out: Out) -> None:
    """One driver: its options wrapped, then one line per meter it reads."""
    opts = {k: v for k, v in d.items() if k not in ("type", "name", "meters", "devices")}
    out.wrapped(head + (": " if opts else ""), ", ".join(f"{k}={_plain(v)}"
                                                         for k, v in opts.items()), indent=6)
    for key in ("meters", "devices"):
        listed = d.get(key)
        if isinstance(listed, list) and listed:
            out.line(f"      {plural(len(listed), key[:-1])}:")
            for m in listed:
                text = ", ".join(f"{k}={_plain(v)}" for k, v in m.items() if v is not None) \
                    if isinstance(m, dict) else _plain(m)
                out.wrapped("        - ", text, indent=10)
        elif isinstance(listed, int):
            out.line(f"      {plural(listed, key[:-1])} (simulated)")


def _plan_line(plan: dict[str, Any]) -> str:
    parts = [f"{k} {', '.join(plan[k])}" for k in ("added", "removed", "changed") if plan[k]]
    if plan.get("logging_changed"):
        parts.append("logging level")
    return "; ".join(parts) or "nothing"


def r_config_check(res: dict[str, Any], out: Out) -> None:
    out.line(f"{res['file']}: valid")
    for line in res["summary"].splitlines():
        out.wrapped("  ", line, indent=6)
    for w in res["warnings"]:
        out.wrapped("warning: ", w)
    plan = res["plan"]
    if plan["restart_needed"]:
        out.wrapped("", "config apply would be refused: " + ", ".join(plan["restart_needed"])
                    + " changed (restart needed)")
    else:
        out.wrapped("config apply would change: ", _plan_line(plan), indent=2)


def r_config_apply(res: dict[str, Any], out: Out) -> None:
    out.wrapped("applied: ", _plan_line(res) if "message" not in res else res["message"])
    if res.get("unchanged"):
        out.wrapped("still running: ", ", ".join(res["unchanged"]))
    if res.get("stuck"):
        out.wrapped("did not stop in time: ", ", ".join(res["stuck"]))
    for w in res.get("warnings", []):
        out.wrapped("warning: ", w)
    if res.get("note"):
        out.wrapped("note: ", res["note"])


def r_fleet(res: dict[str, Any], out: Out) -> None:
    out.wrapped("downlink  ", f"last seq {res['last_seq']}  max jump {res['max_seq_jump']}"
                + ("  LOCKED: run 'fleet reset-seq'" if res["locked"] else ""))
    c = res["counters"]
    out.wrapped("commands  ", ", ".join(f"{k} {c[k]}" for k in sorted(c)))


def r_fleet_reset(res: dict[str, Any], out: Out) -> None:
    out.wrapped("", res["message"])


def r_keys_set(res: dict[str, Any], out: Out) -> None:
    out.wrapped("", f"{res['meter_id']}: key of {res['bytes']} bytes {res['message']}")
    out.wrapped("  file ", f"{res['file']} (mode 0600)")


# ----------------------------------------------------------------- builders


def one_word(cmd: str, arg: str, usage: str) -> Build:
    def build(rest: list[str]) -> tuple[str, dict[str, Any]]:
        _n_args(cmd, rest, 1, 1, usage)
        return cmd, {arg: rest[0]}
    return build


def no_args(cmd: str) -> Build:
    def build(rest: list[str]) -> tuple[str, dict[str, Any]]:
        _n_args(cmd, rest, 0, 0, cmd)
        return cmd, {}
    return build


def b_meters(rest: list[str]) -> tuple[str, dict[str, Any]]:
    _n_args("meters", rest, 0, 1, "meters [BUS]")
    return "meters", ({"bus": rest[0]} if rest else {})


def b_tail(rest: list[str]) -> tuple[str, dict[str, Any]]:
    args: dict[str, Any] = {}
    words = list(rest)
    if "--seconds" in words:
        i = words.index("--seconds")
        if i + 1 >= len(words):
            raise UsageError("usage: tail [ID|BUS] [--seconds N]")
        args["seconds"] = _number(words[i + 1], "--seconds", 0.1, 86400)
        del words[i:i + 2]
    _n_args("tail", words, 0, 1, "tail [ID|BUS] [--seconds N]")
    if words:
        args["filter"] = words[0]
    return "tail", args


def b_listen(rest: list[str]) -> tuple[str, dict[str, Any]]:
    _n_args("listen", rest, 1, 2, "listen wmbus|BUS [SECONDS]")
    args: dict[str, Any] = {"bus": rest[0]}
    if len(rest) > 1:
        args["seconds"] = _number(rest[1], "SECONDS", 1, 3600)
    return "listen", args


def b_scan(rest: list[str]) -> tuple[str, dict[str, Any]]:
    _n_args("scan", rest, 1, 1, "scan mbus|BUS")
    return "scan", {"bus": rest[0]}


def b_permit(rest: list[str]) -> tuple[str, dict[str, Any]]:
    _n_args("zigbee permit-join", rest, 1, 2, "zigbee permit-join SECONDS [BUS]")
    args: dict[str, Any] = {"seconds": _number(rest[0], "SECONDS", 0, 254, integer=True),
                            "bus": rest[1] if len(rest) > 1 else "zigbee"}
    return "permit-join", args


def b_file(cmd: str) -> Build:
    def build(rest: list[str]) -> tuple[str, dict[str, Any]]:
        _n_args(cmd, rest, 1, 1, f"{cmd} FILE")
        return cmd, {"file": _abs_file(rest[0])}
    return build


def b_fleet_reset(rest: list[str]) -> tuple[str, dict[str, Any]]:
    _n_args("fleet reset-seq", rest, 0, 1, "fleet reset-seq [SEQ]")
    return "fleet reset-seq", ({"seq": int(_number(rest[0], "SEQ", 0, 2**63 - 1, integer=True))}
                               if rest else {})


def b_keys_set(rest: list[str]) -> tuple[str, dict[str, Any]]:
    _n_args("keys set", rest, 1, 1, "keys set METER")
    return "keys set", {"meter_id": rest[0]}


SPECS: list[Spec] = [
    Spec(("status",), "", "firmware, uptime, seq, store, broker, buses",
         "Firmware version, uptime, store epoch and last seq, unsent records and the age of "
         "the oldest, the broker connection and every bus's state.", no_args("status"),
         r_status),
    Spec(("meters",), "[BUS]", "meters: last seen, value, success, radio",
         "One line per meter: id, bus, when last seen, its last value, the share of "
         "successful reads, RSSI/LQI for radio meters, and flags (quality flags and the last "
         "problem reported).", b_meters, r_meters, complete=("bus",)),
    Spec(("meter",), "ID", "everything known about one meter",
         "Counters, configuration (secrets masked), last readings and recent events of one "
         "meter.", one_word("meter", "id", "meter ID"), r_meter, complete=("meter",)),
    Spec(("read",), "ID", "read a meter now and show the values",
         "Reads the meter at once through its bus (the readings are stored and delivered "
         "like any other). Gives up after 60 s.", one_word("read", "id", "read ID"), r_read,
         complete=("meter",)),
    Spec(("tail",), "[ID|BUS] [--seconds N]", "live readings and events until Ctrl-C",
         "Follows readings and events as the drivers produce them, for one meter or bus or "
         "all. Ctrl-C stops (the gateway is not affected).", b_tail, r_tail_end, r_record,
         complete=("meter", "bus")),
    Spec(("listen",), "wmbus|BUS [SECONDS]", "every wM-Bus telegram heard (default 60 s)",
         "The installer's tool: shows every telegram the wM-Bus receiver hears, including "
         "meters that are not configured, with manufacturer, id and RSSI.", b_listen,
         r_listen_end, r_telegram, complete=("bus",)),
    Spec(("scan",), "mbus|BUS", "search a wired M-Bus for devices",
         "Searches the M-Bus for devices and lists each one found.", b_scan, r_scan_end,
         r_device, complete=("bus",)),
    Spec(("zigbee", "permit-join"), "SECONDS [BUS]", "let Zigbee devices join (0 closes)",
         "Opens the Zigbee network for joining for SECONDS (1-254); 0 closes it. Audited.",
         b_permit, r_permit),
    Spec(("diag",), "", "health checks and recent problems",
         "Runs the health checks and lists recent warnings and errors.", no_args("diag"),
         r_diag),
    Spec(("store",), "", "outbox depth, size, evictions, integrity",
         "The durable outbox: unsent records, size against the cap, evictions (gaps), disk "
         "full errors, file sizes and a quick integrity check.", no_args("store"), r_store),
    Spec(("uplink",), "", "broker, in flight, last ack, cert expiry",
         "The MQTT/TLS connection: state, messages in flight, last acknowledgement, and the "
         "expiry dates of the client and CA certificates.", no_args("uplink"), r_uplink),
    Spec(("config", "show"), "", "the running config (secrets masked)",
         "The configuration the gateway runs with, secrets masked.", no_args("config show"),
         r_config_show),
    Spec(("config", "check"), "FILE", "validate FILE, show what apply would do",
         "Validates FILE with file:line:column errors and says what `config apply` would "
         "change.", b_file("config check"), r_config_check, complete=("file",)),
    Spec(("config", "apply"), "FILE", "validate, restart only changed drivers",
         "Validates FILE, then stops and starts only the drivers that changed; the store and "
         "the uplink keep running, so nothing buffered is lost. On any error the running "
         "config stays. Audited.", b_file("config apply"), r_config_apply, complete=("file",)),
    Spec(("keys", "set"), "METER", "store a meter key (asked without echo)",
         "Asks for the key (hex) twice without echoing it, stores it with mode 0600 where the "
         "driver reads it and hands it to the running driver. Never logged. Audited. "
         "M-Bus/wM-Bus: 32 hex digits. DLMS: 32 (block key) or 64 (block key then "
         "authentication key).",
         b_keys_set, r_keys_set, prompt_key=True, complete=("meter",)),
    Spec(("fleet",), "", "downlink: last seq, counters",
         "The signed downlink: the last accepted command seq, the bound on how far a seq may "
         "jump (fleet.max_seq_jump), whether it is locked, and the command counters.",
         no_args("fleet"), r_fleet),
    Spec(("fleet", "reset-seq"), "[SEQ]", "unlock the downlink (admin)",
         "Recovery when a command seq far in the future locked the downlink: the last "
         "accepted seq becomes SEQ (default: the gateway clock in ms) and every command "
         "issued before now is refused, so no captured command becomes valid again. Admin "
         "only. Audited.", b_fleet_reset, r_fleet_reset),
]

LOCAL = {"help": "help [COMMAND]: list the commands, or explain one",
         "exit": "exit: leave the console (also quit, Ctrl-D)"}


def all_names() -> list[str]:
    return [s.name for s in SPECS] + list(LOCAL) + ["quit"]


def first_words() -> list[str]:
    return sorted({s.words[0] for s in SPECS} | set(LOCAL) | {"quit"})


def find(words: list[str]) -> tuple[Spec, list[str]]:
    """The spec the words name, and the remaining words; UsageError with a suggestion."""
    for spec in sorted(SPECS, key=lambda s: -len(s.words)):
        n = len(spec.words)
        if tuple(words[:n]) == spec.words:
            return spec, words[n:]
    raise UsageError(unknown_message(words))


def unknown_message(words: list[str]) -> str:
    first = words[0] if words else ""
    subs = [s for s in SPECS if s.words[0] == first and len(s.words) > 1]
    if subs:
        given = " ".join(words[:2])
        near = difflib.get_close_matches(given, [s.name for s in subs], n=1, cutoff=0.5)
        opts = "|".join(s.words[1] for s in subs)
        hint = f"did you mean '{near[0]}'? " if near else ""
        return f"unknown command '{given}'; {hint}usage: {first} {opts} ..."
    typed = " ".join(words[:2])
    near = difflib.get_close_matches(typed, all_names(), n=1, cutoff=0.5) or \
        difflib.get_close_matches(first, all_names(), n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'?" if near else "type 'help' for the list"
    return f"unknown command '{first}'; {hint}"


def help_text(topic: list[str]) -> list[str]:
    if not topic:
        lines = ["commands (help COMMAND for more; add --json for machine output):"]
        for s in SPECS:
            lines += wrap_lines(f"  {s.usage:<33} ", s.summary, indent=36)
        lines.append(f"  {'help [COMMAND]':<33} this list, or one command in detail")
        lines.append(f"  {'exit':<33} leave the console (also quit, Ctrl-D)")
        return lines
    if topic[0] in LOCAL or topic[0] == "quit":
        return [LOCAL.get(topic[0], LOCAL["exit"])]
    spec, _ = find(topic)
    return [f"usage: {spec.usage}"] + _wrap(spec.help, 78)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap
    return textwrap.wrap(text, width)


def ask_key(meter_id: str, sizes: list[int] | None = None) -> str:
    """Ask for a key without echo (twice on a terminal); from stdin when scripted."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline().strip()
        if not line:
            raise UsageError("no key given on standard input")
        return line
    digits = " or ".join(str(2 * n) for n in sizes or [])
    first = getpass.getpass(f"key for {meter_id} (hex{', ' + digits + ' digits' if digits else ''}"
                            ", not shown): ")
    second = getpass.getpass("again, to be sure: ")
    if first.strip() != second.strip():
        raise UsageError("the two keys differ; nothing was stored")
    if not first.strip():
        raise UsageError("empty key; nothing was stored")
    return first.strip()


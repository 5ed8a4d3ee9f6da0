"""How the console shows each answer: a control reply (or one streamed item) as plain
lines that fit 80x24.

Apart from the grammar (console/grammar.py: words, usage, the request each line becomes)
so each side can be read and tested alone.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..text import plural
from .render import Out, age, ascii_safe, clock, duration, size, wrap_lines


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

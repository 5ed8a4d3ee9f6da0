"""The console's grammar: each command's words, usage and help, and the control request
its words become.

Each command turns its words into one control request (``build``) and its result into plain
lines (``render``, in console/views.py); streaming commands also render each item as one
line. Adding a command is one ``Spec`` here, its view, and one request handler in
:mod:`gateway.control.handlers`.
"""

from __future__ import annotations

import difflib
import getpass
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .render import Out, wrap_lines
from .views import (r_config_apply, r_config_check, r_config_show, r_device, r_diag, r_fleet, r_fleet_reset, r_keys_set, r_listen_end, r_meter, r_meters, r_permit, r_read, r_record, r_scan_end, r_status, r_store, r_tail_end, r_telegram, r_uplink)


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


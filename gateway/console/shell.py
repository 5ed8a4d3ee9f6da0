"""Running console commands: one-shot from the shell, or an interactive prompt.

Exit codes (one-shot): 0 done, 1 the command failed, 2 usage error, 3 cannot reach the
gateway (not running, permission denied, connection lost).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shlex
import signal
import sys
import threading
import time
from typing import Callable, Iterator

import yaml

from .client import ConsoleError, ControlClient
from .grammar import SPECS, Spec, UsageError, ask_key, find, first_words, help_text
from .render import Out, wrap_lines

DEFAULT_SOCKET = "/run/gateway/control.sock"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def socket_path(config: str | None, explicit: str | None) -> str:
    """--socket, else control.socket from the config (as the loader resolves it: relative to
    the config file), else the default. Only that key is read, so a technician who may not
    read the uplink keys named in the config can still use the console."""
    if explicit:
        return explicit
    if config:
        try:
            with open(config, "rb") as f:
                doc = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"cannot read {config}: {getattr(exc, 'strerror', None) or exc}")
        ctl = doc.get("control") if isinstance(doc, dict) else None
        path = ctl.get("socket") if isinstance(ctl, dict) else None
        if isinstance(path, str) and path:
            return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config)), path))
        return DEFAULT_SOCKET
    return os.environ.get("GATEWAY_CONTROL_SOCKET") or DEFAULT_SOCKET


class Interrupt:
    """Ctrl-C as a flag while a stream runs (so a frame is never left half-read)."""

    def __init__(self) -> None:
        self.flag = threading.Event()

    @contextlib.contextmanager
    def catching(self) -> Iterator[None]:
        self.flag.clear()
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = signal.signal(signal.SIGINT, lambda *_: self.flag.set())
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)

    def __call__(self) -> bool:
        return self.flag.is_set()


def print_error(exc: ConsoleError | UsageError, json_mode: bool, out: Out) -> None:
    if json_mode:
        err = {"code": getattr(exc, "code", "usage") or "error", "message": str(exc)}
        if isinstance(exc, ConsoleError):
            err.update({k: v for k, v in exc.reply.items() if k not in err})
        out.line(json.dumps({"ok": False, "error": err}))
    err_line("error: ", str(exc))
    if isinstance(exc, ConsoleError):
        for issue in exc.reply.get("issues", []):
            err_line("  ", str(issue))


def err_line(head: str, text: str) -> None:
    """One message on stderr; on a terminal wrapped at word boundaries to its width (on a
    pipe left whole, for scripts that search it)."""
    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        print(head + text, file=sys.stderr)
        return
    for line in wrap_lines(head, text):
        print(line, file=sys.stderr)


def execute(client: ControlClient, spec: Spec, rest: list[str], out: Out, json_mode: bool,
            interrupt: Interrupt) -> int:
    try:
        cmd, args = spec.build(rest)
    except UsageError as exc:
        print_error(exc, json_mode, out)
        return EXIT_USAGE
    if spec.prompt_key:
        # Ask the gateway first whether the meter exists and what key it takes: nobody
        # types a key twice to learn the meter id was wrong.
        try:
            sizes = client.call("meter", {"id": args["meter_id"]}).get("key_bytes")
        except ConsoleError as exc:
            print_error(exc, json_mode, out)
            return exc.exit_code
        try:
            if sizes == []:
                raise UsageError(f"{args['meter_id']} takes no key; nothing was stored")
            args["key"] = ask_key(args["meter_id"], sizes)
        except UsageError as exc:
            print_error(exc, json_mode, out)
            return EXIT_USAGE
    try:
        if spec.item is None:
            result = client.call(cmd, args)
        else:
            result = None
            with interrupt.catching():
                for kind, value in client.stream(cmd, args, interrupt):
                    if kind == "item":
                        if json_mode:
                            out.line(json.dumps(value, default=str))
                        else:
                            spec.item(value, out)
                    else:
                        result = value
    except ConsoleError as exc:
        print_error(exc, json_mode, out)
        return exc.exit_code
    finally:
        args.pop("key", None)
    if json_mode:
        out.line(json.dumps(result, default=str) if spec.item is None
                 else json.dumps({"end": result}, default=str))
    else:
        spec.render(result, out)
    return EXIT_OK


def split_json_flag(words: list[str]) -> tuple[list[str], bool]:
    return [w for w in words if w != "--json"], "--json" in words


def one_shot(path: str, words: list[str], json_mode: bool, out: Out) -> int:
    words, flag = split_json_flag(words)
    json_mode = json_mode or flag
    if words[0] in ("help",):
        try:
            for line in help_text(words[1:]):
                out.line(line)
        except UsageError as exc:
            print_error(exc, json_mode, out)
            return EXIT_USAGE
        return EXIT_OK
    try:
        spec, rest = find(words)
    except UsageError as exc:
        print_error(exc, json_mode, out)
        return EXIT_USAGE
    client = ControlClient(path)
    try:
        client.connect()
        return execute(client, spec, rest, out, json_mode, Interrupt())
    except ConsoleError as exc:
        print_error(exc, json_mode, out)
        return exc.exit_code
    finally:
        client.close()


# ----------------------------------------------------------------- interactive


class Completer:
    """Tab completion of command words, meter ids, bus names and file names. Meter and bus
    lists are fetched from the gateway at most every 30 s."""

    def __init__(self, client: ControlClient) -> None:
        self.client = client
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._matches: list[str] = []

    def _fetch(self, what: str) -> list[str]:
        hit = self._cache.get(what)
        if hit and time.monotonic() - hit[0] < 30:
            return hit[1]
        names: list[str] = []
        try:
            if self.client.sock is None:
                return []
            if what == "meter":
                names = [m["id"] for m in self.client.call("meters", timeout=5)["meters"]]
            else:
                buses = self.client.call("status", timeout=5)["buses"]
                names = sorted({b["name"] for b in buses} | {b["type"] for b in buses})
        except (ConsoleError, KeyError, TypeError):
            return []
        self._cache[what] = (time.monotonic(), names)
        return names

    def candidates(self, line: str, begidx: int, text: str) -> list[str]:
        prior = line[:begidx].split()
        if not prior:
            return [w + " " for w in first_words() if w.startswith(text)]
        if prior[0] == "help":
            return [w + " " for w in first_words() if w.startswith(text)] if len(prior) == 1 \
                else []
        for spec in sorted(SPECS, key=lambda s: -len(s.words)):
            n = len(spec.words)
            if tuple(prior[:n]) == spec.words:
                pos = len(prior) - n
                kinds = spec.complete
                if pos >= len(kinds) and not (kinds and kinds[-1] in ("meter", "bus")
                                              and pos == 0):
                    return []
                kinds = kinds if spec.name == "tail" else kinds[pos:pos + 1]
                out: list[str] = []
                for kind in kinds:
                    if kind == "file":
                        out += [p + ("/" if os.path.isdir(p) else " ")
                                for p in glob.glob(os.path.expanduser(text) + "*")]
                    else:
                        out += [w + " " for w in self._fetch(kind) if w.startswith(text)]
                return sorted(set(out))
        subs = [s.words[len(prior)] for s in SPECS
                if len(s.words) > len(prior) and list(s.words[:len(prior)]) == prior]
        return [w + " " for w in sorted(set(subs)) if w.startswith(text)]

    def __call__(self, text: str, state: int) -> str | None:
        if state == 0:
            import readline
            try:
                self._matches = self.candidates(readline.get_line_buffer(),
                                                readline.get_begidx(), text)
            except Exception:  # a completer must never kill the shell
                self._matches = []
        return self._matches[state] if state < len(self._matches) else None


def setup_readline(completer: Callable[[str, int], str | None]) -> bool:
    try:
        import readline
    except ImportError:
        return False
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
        readline.parse_and_bind("set enable-bracketed-paste off")  # no escapes on a serial line
    readline.set_completer_delims(" \t")
    readline.set_completer(completer)
    return True


def interactive(path: str, out: Out) -> int:
    client = ControlClient(path)
    try:
        hello = client.connect()
    except ConsoleError as exc:
        print_error(exc, False, out)
        return exc.exit_code
    setup_readline(Completer(client))
    gw = hello.get("gateway_id", "gateway")
    peer = hello.get("peer", {})
    out.line(f"gateway {gw}, firmware {hello.get('firmware')}, console as "
             f"{peer.get('user')}" + (f" ({peer['role']})" if peer.get("role") else ""))
    out.line("'help' lists the commands, Tab completes, Ctrl-C stops, Ctrl-D leaves")
    interrupt = Interrupt()
    prompt = f"{gw}> "
    while True:
        try:
            line = input(prompt)
        except EOFError:
            out.line()
            break
        except KeyboardInterrupt:
            out.line("^C")
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        if not words:
            continue
        if words[0] in ("exit", "quit"):
            break
        words, json_mode = split_json_flag(words)
        try:
            if words[0] == "help":
                for text in help_text(words[1:]):
                    out.line(text)
                continue
            spec, rest = find(words)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        if client.sock is None:
            try:
                client.connect()
                out.line("(reconnected)")
            except ConsoleError as exc:
                print_error(exc, False, out)
                continue
        try:
            execute(client, spec, rest, out, json_mode, interrupt)
        except KeyboardInterrupt:
            # Mid-reply: drop the connection (the gateway does not mind) and reconnect later.
            client.close()
            out.line("^C (interrupted; reconnecting on the next command)")
    client.close()
    return EXIT_OK


def main(config: str | None, socket: str | None, words: list[str], json_mode: bool) -> int:
    try:
        return _main(config, socket, words, json_mode)
    except BrokenPipeError:  # `gateway console meters | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _main(config: str | None, socket: str | None, words: list[str], json_mode: bool) -> int:
    out = Out()
    try:
        path = socket_path(config, socket)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if words and [w for w in words if w != "--json"]:
        return one_shot(path, words, json_mode, out)
    if json_mode:
        print("error: --json needs a COMMAND (e.g. gateway console --json status)",
              file=sys.stderr)
        return EXIT_USAGE
    return interactive(path, out)


__all__ = ["main", "socket_path"]

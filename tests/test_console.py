"""`gateway console` as a technician uses it, against a REAL gateway subprocess (simulated
meters, a mutual-TLS broker): one-shot commands checked field by field with --json, the
interactive shell typed into under a pseudo-terminal, two consoles at once, a console killed
mid-tail, a user outside the console group, and the audit trail of every change."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml


from gateway import __version__
from tests.waiting import poll_until
from tests.gwproc import ROOT, Proc, start_gateway, write_config
from tools.broker import Broker



def _console_group() -> str | None:
    """An existing group the test runs as root outside of; None where that cannot be set up
    (not root, no setpriv), and then the permission test is skipped."""
    import grp
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    try:
        grp.getgrnam("dialout")
    except KeyError:
        return None
    return "dialout"


GROUP = _console_group()
KEY = "8f3c2b1a0d9e8f7a6b5c4d3e2f1a0b9c"


# --------------------------------------------------------------------------- fixtures


class Gateway:
    def __init__(self, proc: Proc, cfg: Path, sock: str, tmp: Path) -> None:
        self.proc, self.cfg, self.sock, self.tmp = proc, cfg, sock, tmp

    def console(self, *words: str, user: str | None = None, stdin: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "gateway", "console", "--socket", self.sock, *words]
        if user == "nobody":
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv
        elif user == "nobody+group":
            gid = _gid(GROUP)
            argv = ["setpriv", "--reuid=65534", "--regid=65534", f"--groups={gid}"] + argv
        return subprocess.run(argv, cwd=ROOT, text=True, capture_output=True, timeout=90,
                              input=stdin, env={**os.environ, "NO_COLOR": "1", **(env or {})})

    def json(self, *words: str) -> Any:
        r = self.console(*words, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def audit(self) -> list[dict[str, Any]]:
        path = self.tmp / "audit.log"
        return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def _gid(name: str) -> int:
    import grp
    return grp.getgrnam(name).gr_gid


def _start(tmp: Path, pki: Path, port: int, drivers: list[dict[str, Any]],
           group: str | None = None, extra: dict[str, Any] | None = None) -> Gateway:
    sock_dir = tempfile.mkdtemp(prefix="gwcon-")  # short (sun_path) and reachable by nobody
    os.chmod(sock_dir, 0o755)
    sock = f"{sock_dir}/control.sock"
    cfg = write_config(tmp, pki, port, drivers=drivers)
    doc = yaml.safe_load(cfg.read_text())
    doc["control"] = {"socket": sock, **({"group": group} if group else {})}
    doc.update(extra or {})
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = start_gateway(cfg, tmp / "gw.log")
    assert proc.wait_for_log("control: console socket", 30), proc.text()
    return Gateway(proc, cfg, sock, tmp)


def _stop(gw: Gateway) -> None:
    assert gw.proc.terminate() == 0, gw.proc.text()[-3000:]
    assert not os.path.exists(gw.sock), "the socket is removed on a clean stop"
    shutil.rmtree(os.path.dirname(gw.sock), ignore_errors=True)


@pytest.fixture(scope="module")
def gw(pki: Path, module_broker: Broker,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One running gateway for the read-only commands: 3 meters on `sim`, 100 on `bulk`."""
    tmp = tmp_path_factory.mktemp("gw")
    g = _start(tmp, pki, module_broker.port, [
        {"type": "simulated", "name": "sim", "meters": 3, "interval_s": 0.2},
        {"type": "simulated", "name": "bulk", "meters": 100, "interval_s": 0.2,
         "meter_prefix": "bulk-"}], group=GROUP)
    assert g.proc.wait_for_log("uplink: connected", 30), g.proc.text()
    try:
        yield g
    finally:
        _stop(g)


# --------------------------------------------------------------------------- a terminal

_ESC = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]|\r|\x07")


class Term:
    """The console under a real pseudo-terminal, 80x24, as on a serial line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                                  env=env, start_new_session=True,
                                  preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.raw = b""
        self.screen = ""   # everything shown, escapes removed
        self._pos = 0      # how far expect() has consumed

    def _read(self, timeout: float) -> None:
        r, _, _ = select.select([self.master], [], [], timeout)
        if r:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                data = b""
            self.raw += data
            self.screen = _ESC.sub("", self.raw.decode(errors="replace"))

    def expect(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.screen, self._pos)
            if m:
                self._pos = m.end()
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not shown within {timeout} s; screen:\n"
                                     + self.screen[-2500:])
            self._read(0.1)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        os.close(self.master)


@pytest.fixture
def term(gw: Gateway) -> Iterator[Any]:
    terms: list[Term] = []

    def make(*extra: str, colour: bool = False) -> Term:
        env = {**os.environ, "TERM": "vt100", "COLUMNS": "80", "LINES": "24"}
        env.pop("NO_COLOR", None)
        if not colour:
            env["NO_COLOR"] = "1"
        t = Term([sys.executable, "-m", "gateway", "console", "--socket", gw.sock, *extra], env)
        terms.append(t)
        return t

    yield make
    for t in terms:
        t.close()


PROMPT = r"gw-0001> "



def _until(get: Any, ok: Any, timeout: float = 20.0) -> Any:
    return poll_until(get, ok, timeout, 0.1)

# --------------------------------------------------------------------------- one-shot


def test_status_json_field_by_field(gw):
    st = gw.json("status")
    assert st["firmware"] == __version__ and st["gateway_id"] == "gw-0001"
    assert st["uptime_s"] > 0
    assert re.fullmatch(r"[0-9a-f]{16}", st["epoch"]) and st["last_seq"] > 0
    assert isinstance(st["store"]["depth"], int) and st["store"]["max_bytes"] == 64 * 2**20
    age = st["store"]["oldest_unsent_age_s"]
    assert age is None or 0 <= age < 60
    assert st["broker"]["state"] == "connected" and st["broker"]["connected"] is True
    port = yaml.safe_load(gw.cfg.read_text())["uplink"]["port"]
    assert st["broker"]["broker"] == f"localhost:{port}"
    buses = {b["name"]: b for b in st["buses"]}
    assert buses["sim"] == {"name": "sim", "type": "simulated", "state": "running", "meters": 3,
                            "refused": 0}
    assert buses["bulk"]["meters"] == 100
    assert st["consoles"] >= 1
    later = _until(lambda: gw.json("status"), lambda s: s["last_seq"] > st["last_seq"])
    assert later["epoch"] == st["epoch"]


def test_status_human_fits_a_serial_terminal(gw):
    r = gw.console("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(len(l) < 80 for l in lines) and len(lines) <= 24
    assert "\x1b" not in r.stdout  # not a tty, and NO_COLOR anyway
    assert re.search(r"firmware " + re.escape(__version__), r.stdout)
    assert "broker    connected" in r.stdout and re.search(r"sim\s+simulated\s+running\s+3", r.stdout)


def test_meters_table_and_json(gw):
    rows = {m["id"]: m for m in gw.json("meters", "sim")["meters"]}
    assert sorted(rows) == ["sim-00001", "sim-00002", "sim-00003"]
    m = rows["sim-00002"]
    assert m["bus"] == "sim" and m["unit"] == "kWh" and m["quantity"] == "1-0:1.8.0"
    assert re.fullmatch(r"\d+\.\d{3}", m["last_value"])  # exact, Wh resolution, no float
    assert m["success_ratio"] == 1.0 and "simulated" in m["flags"]
    assert m["rssi_dbm"] is None and m["lqi"] is None
    assert time.time() * 1000 - m["last_seen_ms"] < 30_000
    assert len(gw.json("meters")["meters"]) == 103
    r = gw.console("meters", "sim")
    assert r.returncode == 0
    head, *body = r.stdout.splitlines()
    assert head.split() == ["ID", "BUS", "LAST", "SEEN", "LAST", "VALUE", "OK", "RSSI/LQI",
                            "FLAGS"]
    assert body[0].startswith("sim-00001  sim") and "kWh" in body[0] and body[-1] == "3 meters"
    assert all(len(l) < 80 for l in r.stdout.splitlines())


def test_meter_detail_and_unknown_meter_suggestion(gw):
    m = gw.json("meter", "sim-00003")
    assert m["id"] == "sim-00003" and m["bus"] == "sim" and m["type"] == "simulated"
    assert m["last_readings"][0]["quantity"] == "1-0:1.8.0" and m["readings_seen"] > 0
    assert m["stats"]["failures"] == 0 and m["key_stored"] is False
    r = gw.console("meter", "sim-0003")
    assert r.returncode == 1 and "did you mean sim-00003" in r.stderr


def test_read_now(gw):
    before = {m["id"]: m for m in gw.json("meters", "sim")["meters"]}["sim-00001"]
    res = gw.json("read", "sim-00001")
    assert res["meter_id"] == "sim-00001" and res["bus"] == "sim"
    [rec] = res["records"]
    assert rec["type"] == "reading" and rec["quantity"] == "1-0:1.8.0" and rec["unit"] == "kWh"
    from decimal import Decimal
    assert Decimal(rec["value"]) >= Decimal(before["last_value"])
    r = gw.console("read", "sim-00001")
    assert r.returncode == 0 and re.search(r"1-0:1\.8\.0\s+\d+\.\d{3} kWh", r.stdout)
    r = gw.console("read", "nope")
    assert r.returncode == 1 and "no meter 'nope'" in r.stderr


def test_bus_commands_report_missing_capabilities_clearly(gw):
    cases = [
        (("listen", "wmbus"), "listen wmbus: no wmbus bus is configured (buses: sim "
                              "(simulated), bulk (simulated))"),
        (("listen", "sim", "5"), "listen sim is not supported by driver sim (type simulated)"),
        (("scan", "mbus"), "scan mbus: no mbus bus is configured"),
        (("scan", "bulk"), "scan bulk is not supported by driver bulk (type simulated)"),
        (("zigbee", "permit-join", "60"), "zigbee permit-join: no zigbee bus is configured"),
        (("zigbee", "permit-join", "60", "sim"),
         "sim permit-join is not supported by driver sim (type simulated)"),
    ]
    for words, message in cases:
        r = gw.console(*words)
        assert r.returncode == 1, (words, r.stdout, r.stderr)
        assert message in r.stderr, (words, r.stderr)
        j = gw.console(*words, "--json")
        err = json.loads(j.stdout.splitlines()[-1])["error"]
        assert err["code"] in ("no_such_bus", "not_supported") and message in err["message"]
    r = gw.console("zigbee", "permit-join", "999")
    assert r.returncode == 2 and "0-254" in r.stderr


def test_diag_store_uplink(gw, pki):
    d = gw.json("diag")
    assert d["overall"] in ("ok", "warn")
    checks = {c["what"]: c for c in d["checks"]}
    assert checks["bus sim"]["level"] == "ok" and checks["uplink"]["level"] == "ok"
    s = gw.json("store")
    assert s["integrity"] == "ok" and s["epoch"] == gw.json("status")["epoch"]
    assert s["evicted_records"] == 0 and s["full_errors"] == 0 and "store.db" in s["files"]
    u = gw.json("uplink")
    assert u["state"] == "connected" and u["client_id"] == "gw-0001"
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((pki / "gateway.pem").read_bytes())
    expected = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    client = next(c for c in u["certificates"] if c["role"] == "client")
    assert client["not_after"] == expected and client["days_left"] > 0
    assert "CN=gw-0001" in client["subject"]
    assert any(c["role"] == "ca" for c in u["certificates"])
    r = gw.console("uplink")
    assert expected in r.stdout and "DAYS LEFT" in r.stdout
    r = gw.console("store")
    assert re.search(r"integrity\s+ok", r.stdout)


def test_config_show_and_check(gw, tmp_path):
    r = subprocess.run([sys.executable, "-m", "gateway", "console", "-c", str(gw.cfg), "config",
                        "show", "--json"], cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr  # the socket found through the config's control.socket
    show = json.loads(r.stdout)
    assert show["source_path"] == str(gw.cfg)
    assert [d["name"] for d in show["config"]["drivers"]] == ["sim", "bulk"]
    assert show["config"]["control"]["socket"] == gw.sock
    chk = gw.json("config", "check", str(gw.cfg))
    assert chk["valid"] is True and chk["plan"]["changed"] == [] and chk["plan"]["added"] == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(gw.cfg.read_text().replace("interval_s: 0.2", "interval_s: fast", 1))
    r = gw.console("config", "check", str(bad))
    assert r.returncode == 1
    line = next(i for i, l in enumerate(bad.read_text().splitlines(), 1) if "fast" in l)
    assert f"{bad}:{line}:" in r.stderr and "interval_s" in r.stderr
    r = gw.console("config", "check", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_unknown_commands_suggest_the_nearest(gw):
    r = gw.console("stauts")
    assert r.returncode == 2 and "did you mean 'status'" in r.stderr
    r = gw.console("config", "aply", "x")
    assert r.returncode == 2 and "did you mean 'config apply'" in r.stderr
    r = gw.console("help", "tail")
    assert r.returncode == 0 and r.stdout.startswith("usage: tail [ID|BUS]")
    r = gw.console("help")
    for name in ("status", "meters", "meter ID", "read ID", "tail", "listen wmbus", "scan mbus",
                 "zigbee permit-join", "diag", "store", "uplink", "config show",
                 "config check FILE", "config apply FILE", "keys set METER"):
        assert name in r.stdout, name
    assert all(len(l) < 80 for l in r.stdout.splitlines()) and "~" not in r.stdout


def test_tail_json_then_console_killed_mid_tail(gw):
    base = gw.json("status")
    argv = [sys.executable, "-m", "gateway", "console", "--socket", gw.sock, "tail", "sim",
            "--json"]
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        items = [json.loads(p.stdout.readline()) for _ in range(6)]
    finally:
        p.kill()
        p.wait(10)
    assert all(i["type"] == "reading" and i["bus"] == "sim" for i in items)
    assert {i["meter_id"] for i in items} <= {"sim-00001", "sim-00002", "sim-00003"}
    deadline = time.monotonic() + 20
    while gw.json("status")["consoles"] > 1:  # only this status call remains
        assert time.monotonic() < deadline, "the killed console was not noticed"
        time.sleep(0.2)
    after = _until(lambda: gw.json("status"), lambda s: s["last_seq"] > base["last_seq"])
    assert all(b["state"] == "running" for b in after["buses"])
    r = gw.console("tail", "sim-00002", "--seconds", "1", "--json")  # bounded, for scripts
    *items, end = [json.loads(l) for l in r.stdout.splitlines()]
    assert r.returncode == 0 and items and {i["meter_id"] for i in items} == {"sim-00002"}
    assert end == {"end": {"sent": len(items), "dropped": 0}}


@pytest.mark.skipif(GROUP is None, reason="needs root, setpriv and a dialout group")
def test_permission_denied_outside_the_console_group(gw):
    st_ = os.stat(gw.sock)
    assert stat.S_IMODE(st_.st_mode) == 0o660 and st_.st_gid == _gid(GROUP)
    r = gw.console("status", user="nobody")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "permission denied" in r.stderr and f"group {GROUP}" in r.stderr
    assert "Traceback" not in r.stderr
    ok = gw.console("status", "--json", user="nobody+group")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["gateway_id"] == "gw-0001"
    # The audit trail names the real user (SO_PEERCRED), even for a refused change.
    gw.console("zigbee", "permit-join", "10", user="nobody+group")
    entry = gw.audit()[-1]
    assert entry["uid"] == 65534 and entry["user"] == "nobody"
    assert entry["command"] == "permit-join" and entry["ok"] is False


# --------------------------------------------------------------------------- interactive


def test_interactive_shell_under_a_terminal(gw, term):
    t = term()
    t.expect(r"gateway gw-0001, firmware " + re.escape(__version__))
    t.expect(PROMPT)
    t.send("help\r")
    t.expect(r"config apply FILE")
    t.expect(PROMPT)
    t.send("stauts\r")
    t.expect(r"unknown command 'stauts'; did you mean 'status'\?")
    t.expect(PROMPT)
    t.send("sta\t")  # readline completes the word
    t.expect(r"status ")
    t.send("\r")
    t.expect(r"firmware " + re.escape(__version__))
    t.expect(r"sim\s+simulated\s+running\s+3")
    t.expect(PROMPT)
    t.send("meter sim-0000\t")  # completes to the shared prefix; ids fetched from the gateway
    t.send("2\r")
    t.expect(r"meter\s+sim-00002")
    t.expect(PROMPT)
    t.send("tail sim\r")
    t.expect(r"sim-0000\d 1-0:1\.8\.0 = \d+\.\d{3} kWh")
    t.send("\x03")  # Ctrl-C ends the tail, not the shell
    t.expect(r"-- \d+ records shown")
    t.expect(PROMPT)
    t.send("read sim-00003\r")
    t.expect(r"sim-00003 on sim")
    t.expect(PROMPT)
    t.send("\x03")
    t.expect(r"\^C")
    t.expect(PROMPT)
    assert "\x1b[3" not in t.raw.decode(errors="replace")  # NO_COLOR: no colour codes
    for line in t.screen.splitlines():
        assert len(line) <= 80, line
    t.send("exit\r")
    assert t.p.wait(10) == 0


def test_colour_only_without_no_color(gw, term):
    t = term("diag", colour=True)
    t.expect(r"overall: ")
    assert t.p.wait(30) == 0
    assert "\x1b[32m[ OK ]" in t.raw.decode(errors="replace")


def test_two_consoles_at_once(gw, term):
    t = term()
    t.expect(PROMPT)
    t.send("tail bulk\r")
    t.expect(r"bulk-\d+ 1-0:1\.8\.0")
    st = gw.json("status")  # a second console while the first is streaming
    assert st["consoles"] >= 2
    assert gw.json("meters", "sim")["meters"][0]["id"] == "sim-00001"
    t.send("\x03")
    t.expect(r"records shown")
    t.expect(PROMPT)
    t.send("store\r")
    t.expect(r"integrity\s+ok")
    t.send("exit\r")
    assert t.p.wait(10) == 0


def test_keys_set_prompts_without_echo_and_never_logs(gw, term):
    t = term()
    t.expect(PROMPT)
    t.send("keys set sim-00001\r")
    t.expect(r"key for sim-00001 \(hex, 32 or 64 digits, not shown\): ")
    t.send(KEY + "\r")
    t.expect(r"again, to be sure: ")
    t.send(KEY + "\r")
    t.expect(r"sim-00001: key of 16 bytes stored")
    t.expect(PROMPT)
    t.send("keys set sim-00002\r")
    t.expect(r"\(hex, 32 or 64 digits, not shown\): ")
    t.send("00\r")
    t.expect(r"again, to be sure: ")
    t.send("01\r")
    t.expect(r"the two keys differ; nothing was stored")
    t.expect(PROMPT)
    t.send("exit\r")
    assert t.p.wait(10) == 0
    assert KEY not in t.screen, "the key was echoed"
    key_file = gw.tmp / "keys" / "sim-00001.key"
    assert key_file.read_text() == KEY + "\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not (gw.tmp / "keys" / "sim-00002.key").exists()
    assert KEY not in (gw.tmp / "audit.log").read_text()
    assert KEY not in gw.proc.text()
    entry = [e for e in gw.audit() if e["command"] == "keys set"][-1]
    assert entry["args"] == {"meter_id": "sim-00001", "key": "***"} and entry["ok"] is True
    assert entry["uid"] == os.getuid()
    assert gw.json("meter", "sim-00001")["key_stored"] is True
    # Scripted: the key on stdin, never on the command line.
    r = gw.console("keys", "set", "sim-00003", stdin=KEY + "\n")
    assert r.returncode == 0 and "stored" in r.stdout and KEY not in r.stdout + r.stderr
    r = gw.console("keys", "set", "../etc", stdin=KEY + "\n")
    assert r.returncode == 1 and "no meter '../etc'" in r.stderr


# --------------------------------------------------------------------------- config apply


def test_config_apply_hot_reloads_changed_drivers_only(tmp_path, pki, module_broker):
    g = _start(tmp_path, pki, module_broker.port, [
        {"type": "simulated", "name": "keep", "meters": 2, "interval_s": 0.2,
         "meter_prefix": "keep-"},
        {"type": "simulated", "name": "grow", "meters": 2, "interval_s": 0.2,
         "meter_prefix": "grow-"}])
    try:
        audit_tail = subprocess.Popen(
            [sys.executable, "-m", "gateway", "console", "--socket", g.sock, "tail", "control",
             "--json", "--seconds", "180"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        before = g.json("status")
        doc = yaml.safe_load(g.cfg.read_text())
        doc["drivers"][1]["meters"] = 4
        doc["drivers"].append({"type": "simulated", "name": "new", "meters": 1,
                               "interval_s": 0.2, "meter_prefix": "new-"})
        new_cfg = tmp_path / "new.yaml"
        new_cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        res = g.json("config", "apply", str(new_cfg))
        assert res["added"] == ["new"] and res["changed"] == ["grow"]
        assert res["unchanged"] == ["keep"] and res["removed"] == []
        assert "copy" in res["note"]
        after = _until(lambda: g.json("status"), lambda s: s["last_seq"] > before["last_seq"])
        assert [b["name"] for b in after["buses"]] == ["keep", "grow", "new"]
        assert {b["name"]: b["meters"] for b in after["buses"]} == {"keep": 2, "grow": 4, "new": 1}
        assert after["epoch"] == before["epoch"] and after["last_seq"] > before["last_seq"]
        assert after["config_hash"] != before["config_hash"]
        assert g.proc.text().count("simulated bus keep:") == 1, "unchanged driver restarted"

        bad = tmp_path / "bad.yaml"
        bad.write_text(new_cfg.read_text().replace("meters: 4", "meters: many"))
        r = g.console("config", "apply", str(bad))
        assert r.returncode == 1 and "nothing was changed" in r.stderr
        assert re.search(rf"{re.escape(str(bad))}:\d+:\d+: drivers\[1\]\.meters", r.stderr)
        moved = tmp_path / "moved.yaml"
        moved.write_text(new_cfg.read_text().replace("reconnect_max_s: 1", "reconnect_max_s: 2"))
        r = g.console("config", "apply", str(moved))
        assert r.returncode == 1 and "uplink changed" in r.stderr and "restart" in r.stderr
        still = g.json("status")
        assert still["config_hash"] == after["config_hash"]
        assert [b["name"] for b in still["buses"]] == ["keep", "grow", "new"]

        audit = [e for e in g.audit() if e["command"] == "config apply"]
        assert [(e["ok"], e["args"]["file"]) for e in audit] == [
            (True, str(new_cfg)), (False, str(bad)), (False, str(moved))]
        assert all(e["uid"] == os.getuid() and e["user"] for e in audit)
        assert "added new" in audit[0]["result"]
        # Forwarded through the store as events, in the same order.
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60  # generous: a loaded CI machine once needed > 40 s
        while len([e for e in seen if e.get("kind") == "control.audit"]) < 3:
            assert time.monotonic() < deadline, seen
            line = audit_tail.stdout.readline()
            assert line, f"tail ended early: {seen}"
            seen.append(json.loads(line))
        audit_events = [e for e in seen if e.get("kind") == "control.audit"]
        assert [e["detail"]["ok"] for e in audit_events] == [True, False, False]
        assert any(e.get("kind") == "config.applied" for e in seen)
    finally:
        if "audit_tail" in locals():
            audit_tail.kill()
            audit_tail.wait(10)
        _stop(g)

"""The console as an attacker in the console group would use it (issue 15, items 3 and 4,
and console roles): a real Runtime's control socket, consoles run as `nobody` with chosen
groups (setpriv), config files swapped under the gateway's feet, requests with arguments
nobody declared. Nothing secret may come back, reach the audit log or go up to the store."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from gateway.config import load_config
from gateway.control import server as server_mod
from gateway.control.protocol import PROTOCOL_VERSION, recv_message, send_message
from gateway.runtime import Runtime
from tests.gwproc import ROOT, write_config

NOBODY = 65534
SECRET = "5ec7e7c0ffee5ec7e7c0ffee5ec7e7c0"  # a meter key; must never be echoed
SHADOW = "root:$6$s3cr3tSalt$hashhashhash:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n"


def _can_switch_users() -> bool:
    import grp
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    try:
        for g in ("dialout", "audio", "video"):
            grp.getgrnam(g)
    except KeyError:
        return False
    return True


needs_root = pytest.mark.skipif(not _can_switch_users(),
                                reason="needs root, setpriv and the dialout/audio/video groups")


def _gid(name: str) -> int:
    import grp
    return grp.getgrnam(name).gr_gid


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory `nobody` can reach (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="gwsec-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rt(tmp_path: Path, pki: Path, public_dir: Path, monkeypatch: pytest.MonkeyPatch
       ) -> Iterator[Runtime]:
    monkeypatch.setattr(server_mod, "SEND_TIMEOUT_S", 2.0)
    path = write_config(tmp_path, pki, 1, drivers=[
        {"type": "simulated", "name": "sim", "meters": 2, "interval_s": 0.2}])
    doc = yaml.safe_load(path.read_text())
    doc["control"] = {"socket": str(public_dir / "ctl.sock")}
    if _can_switch_users():
        doc["control"].update(group="dialout", roles={"dialout": "viewer", "audio": "technician",
                                                      "video": "admin"})
    path.write_text(yaml.safe_dump(doc))
    runtime = Runtime(load_config(path))
    runtime.start()
    try:
        assert runtime.control is not None
        yield runtime
    finally:
        runtime.stop()


def _as(groups: list[str]) -> list[str]:
    gids = ",".join(str(_gid(g)) for g in groups)
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
            f"--groups={gids}" if gids else "--clear-groups"]


def console(rt: Runtime, *words: str, groups: list[str] | None = None, stdin: str = ""
            ) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gateway", "console", "--socket", rt.config.control.socket,
            *words]
    if groups is not None:
        argv = _as(groups) + argv
    return subprocess.run(argv, cwd=ROOT, text=True, capture_output=True, timeout=60,
                          input=stdin, env={**os.environ, "NO_COLOR": "1"})


def _raw(rt: Runtime, cmd: str, args: Any) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(rt.config.control.socket)
    with s:
        send_message(s, {"v": PROTOCOL_VERSION, "id": 1, "cmd": cmd, "args": args})
        return recv_message(s, 10, 10)


def _audit_text(rt: Runtime) -> str:
    return Path(rt.control.audit.path).read_text()


def _store_text(rt: Runtime) -> str:
    assert rt.store is not None
    rt.store.flush()
    return repr([sr.record for sr in rt.store.read_records(0, 100000)])


# --------------------------------------------------------------------------- item 4


def test_unknown_arguments_are_refused_and_secrets_never_logged(rt):
    """Redaction is by allow-list: a secret under any name the command does not declare is
    refused before the command runs and never written, logged or sent up."""
    # A key sent under an undeclared name, next to the declared ones.
    r = _raw(rt, "keys set", {"meter_id": "sim-00001", "key": "00" * 16, "key2": SECRET})
    assert r["error"]["code"] == "bad_request" and "unknown argument" in r["error"]["message"]
    assert SECRET not in json.dumps(r)
    assert not os.path.exists(os.path.join(rt.config.control.keys_dir, "sim-00001.key"))
    # ... under a name that is itself the secret, on a read-only command
    r = _raw(rt, "status", {SECRET: 1})
    assert r["error"]["code"] == "bad_request" and SECRET not in json.dumps(r)
    # ... as an unknown command's name, and as the declared secret argument
    assert _raw(rt, SECRET, {})["error"]["code"] == "unknown_command"
    r = _raw(rt, "keys set", {"meter_id": "sim-00001", "key": SECRET})
    assert r["ok"], r
    # ... as a declared argument of the wrong type
    r = _raw(rt, "meter", {"id": {"key": SECRET}})
    assert r["error"]["code"] == "bad_request"
    text = _audit_text(rt)
    assert SECRET not in text and SECRET not in _store_text(rt)
    entries = [json.loads(line) for line in text.splitlines()]
    assert [(e["command"], e["ok"]) for e in entries] == [
        ("keys set", False), ("status", False), ("(unknown)", False), ("keys set", True),
        ("meter", False)]
    assert entries[0]["args"] == {"meter_id": "sim-00001", "key": "***"}
    assert entries[1]["args"] == {} and entries[3]["args"]["key"] == "***"


def test_every_command_is_audited_including_config_check(rt, public_dir):
    cfg = public_dir / "next.yaml"
    cfg.write_text(Path(rt.config.source_path).read_text())
    os.chmod(cfg, 0o644)
    for words in (["status"], ["meters"], ["diag"], ["config", "check", str(cfg)]):
        assert console(rt, *words).returncode == 0
    cmds = [json.loads(line)["command"] for line in _audit_text(rt).splitlines()]
    assert cmds == ["status", "meters", "diag", "config check"]
    last = json.loads(_audit_text(rt).splitlines()[-1])
    assert last["args"] == {"file": str(cfg)} and last["ok"] is True


# --------------------------------------------------------------------------- item 3


def _secret_key_file(public_dir: Path) -> Path:
    key = public_dir / "meter.key"
    key.write_text(SECRET + ": 1\n")  # were it read, its key path would be in the errors
    os.chmod(key, 0o600)  # root's; nobody may not read it
    return key


@needs_root
def test_config_check_never_reads_what_the_user_may_not(rt, public_dir):
    key = _secret_key_file(public_dir)
    link = public_dir / "link.yaml"
    link.symlink_to(key)
    fifo = public_dir / "fifo.yaml"
    os.mkfifo(fifo, 0o666)
    shadow = public_dir / "shadow.yaml"  # readable by nobody: but never echoed either
    shadow.write_text(SHADOW)
    os.chmod(shadow, 0o644)
    viewer_tech = ["dialout", "audio"]
    outs = {}
    for name, path in (("key", key), ("link", link), ("fifo", fifo), ("shadow", shadow)):
        r = console(rt, "config", "check", str(path), "--json", groups=viewer_tech)
        outs[name] = r
        assert r.returncode == (3 if name == "key" else 1), (name, r.stdout, r.stderr)
        assert SECRET not in r.stdout + r.stderr and "s3cr3t" not in r.stdout + r.stderr
        assert "hashhash" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert json.loads(outs["key"].stdout)["error"]["code"] == "permission_denied"
    assert "symbolic link" in outs["link"].stderr
    assert "not a regular file" in outs["fifo"].stderr
    err = json.loads(outs["shadow"].stdout)["error"]
    assert err["code"] == "invalid_config" and err["issues"]
    assert all(i.startswith(str(shadow)) for i in err["issues"])
    text = _audit_text(rt)
    assert SECRET not in text and "s3cr3t" not in text
    assert [json.loads(line)["command"] for line in text.splitlines()] == ["config check"] * 4


@needs_root
def test_config_check_race_with_a_swapped_symlink(rt, public_dir):
    """The path flips between a readable file and a symlink to a root-only key while a
    console asks again and again: the check and the read are one descriptor, so the key's
    content never comes back."""
    key = _secret_key_file(public_dir)
    path = public_dir / "cfg.yaml"
    plain, link = public_dir / ".plain", public_dir / ".link"
    stop = threading.Event()

    def flip() -> None:
        n = 0
        while not stop.is_set() and n < 2_000_000:
            n += 1
            if n % 2:
                plain.write_text("not: [a, config]\n")
                os.chmod(plain, 0o644)
                os.replace(plain, path)
            else:
                link.unlink(missing_ok=True)
                link.symlink_to(key)
                os.replace(link, path)

    script = (
        "import json,sys\n"
        "from gateway.console.client import ControlClient, ConsoleError\n"
        "c = ControlClient(sys.argv[1]); c.connect()\n"
        "for _ in range(1000):\n"
        "    try:\n"
        "        print(json.dumps(c.call('config check', {'file': sys.argv[2]})))\n"
        "    except ConsoleError as e:\n"
        "        print(json.dumps({'error': str(e), 'reply': getattr(e, 'reply', None)}))\n")
    t = threading.Thread(target=flip, daemon=True)
    t.start()
    try:
        r = subprocess.run(_as(["dialout", "audio"]) + [sys.executable, "-c", script,
                           rt.config.control.socket, str(path)], cwd=ROOT, text=True,
                           capture_output=True, timeout=120)
    finally:
        stop.set()
        t.join(10)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1000
    assert SECRET not in r.stdout and SECRET not in _audit_text(rt)


# --------------------------------------------------------------------------- roles


@needs_root
def test_roles_by_unix_group(rt, public_dir):
    viewer, tech, admin = ["dialout"], ["dialout", "audio"], ["dialout", "video"]
    assert console(rt, "status", "--json", groups=viewer).returncode == 0
    r = console(rt, "read", "sim-00001", groups=viewer)
    assert r.returncode == 3 and "permission denied: needs technician" in r.stderr, r.stderr
    r = console(rt, "keys", "set", "sim-00001", "--json", groups=viewer, stdin="00" * 16 + "\n")
    assert "needs technician" in r.stdout + r.stderr
    r = console(rt, "read", "sim-00001", "--json", groups=tech)
    assert r.returncode == 0, r.stderr  # past the role check: the simulated meter reads
    cfg = public_dir / "same.yaml"
    cfg.write_text(Path(rt.config.source_path).read_text())
    os.chmod(cfg, 0o644)
    r = console(rt, "config", "apply", str(cfg), groups=tech)
    assert r.returncode == 3 and "permission denied: needs admin" in r.stderr
    r = console(rt, "config", "apply", str(cfg), "--json", groups=admin)
    assert r.returncode == 0, r.stderr
    hello = subprocess.run(_as(viewer) + [sys.executable, "-c",
                           "import json,sys\nfrom gateway.console.client import ControlClient\n"
                           "c = ControlClient(sys.argv[1]); print(json.dumps(c.connect()))",
                           rt.config.control.socket], cwd=ROOT, text=True, capture_output=True,
                           timeout=60)
    assert json.loads(hello.stdout)["peer"]["role"] == "viewer"
    entries = [json.loads(line) for line in _audit_text(rt).splitlines()]
    denied = [e for e in entries if "permission denied" in e["result"]]
    assert [(e["command"], e["uid"]) for e in denied] == [
        ("read", NOBODY), ("keys set", NOBODY), ("config apply", NOBODY)]
    assert "needs technician" in _store_text(rt), "refusals go up as control.audit events"
    # Outside the console group altogether: not even let in.
    r = console(rt, "status", groups=[])
    assert r.returncode == 3 and "permission denied" in r.stderr
    # (refused by the socket's mode: the kernel says no before the gateway hears of it)
    # A slip in the socket's mode is no hole: SO_PEERCRED still refuses, and it is audited.
    os.chmod(rt.config.control.socket, 0o666)
    r = console(rt, "status", groups=[])
    assert r.returncode == 3 and "not in group dialout" in r.stderr, r.stderr
    last = json.loads(_audit_text(rt).splitlines()[-1])
    assert (last["command"], last["uid"], last["ok"]) == ("(connect)", NOBODY, False)


# --------------------------------------------------------------------------- properties

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_NAMES = ["status", "meters", "meter", "keys set", "permit-join", "store", "config check",
          "config apply", "fleet reset-seq", "uplink", "diag", "config show", "no such"]
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=3)
                     | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=8)


@st.composite
def _hostile_request(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A command with the secret hidden anywhere but in a declared, non-secret argument."""
    from gateway.control.requests import REQUESTS
    name = draw(st.sampled_from(_NAMES))
    cmd = REQUESTS.get(name)
    declared = dict(cmd.args) if cmd else {}
    args: dict[str, Any] = {}
    for k, spec in declared.items():
        if draw(st.booleans()):
            args[k] = SECRET if spec.secret else draw(_json)
    where = draw(st.sampled_from(["name", "value", "nested", "secret_arg"]))
    if where == "name":
        args[SECRET] = draw(_json)
    elif where == "value":
        args[draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in declared))] = SECRET
    elif where == "nested":
        args[draw(st.text(min_size=1, max_size=6))] = {"a": [1, {"k": SECRET}]}
    for k, spec in declared.items():  # a declared non-secret arg may not carry it by accident
        if not spec.secret and isinstance(args.get(k), (dict, list)):
            args[k] = draw(st.integers())
    return name, args


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=_hostile_request())
def test_no_request_gets_a_secret_into_the_audit_log_or_the_uplink(rt, req):
    name, args = req
    r = _raw(rt, name, args)
    assert isinstance(r.get("ok"), bool)
    assert SECRET not in _audit_text(rt)
    assert SECRET not in _store_text(rt)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 2000), st.integers(0, 255))
def test_verify_chain_reports_but_never_raises(data, pos, byte):
    from gateway.control.audit import AuditLog, Peer, verify_chain
    d = Path(tempfile.mkdtemp(prefix="gwchain-"))
    try:
        log = AuditLog(str(d / "a.log"))
        for i in range(3):
            log.record(Peer(1, 2, 3, "u"), "status", {"i": i}, True, "ok", forward=False)
        orig = (d / "a.log").read_bytes()
        raw = bytearray(orig)
        at = pos % len(raw)
        raw[at] = byte
        (d / "a.log").write_bytes(bytes(raw) + data)
        rep = verify_chain([str(d / "a.log")])  # whatever the bytes: a report, no exception
        assert rep.ok == (not rep.problems)
        last_line_start = orig.rstrip(b"\n").rfind(b"\n") + 1
        if byte != orig[at] and at < last_line_start:
            assert not rep.ok, "a changed line before the last must break the chain"
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- downlink recovery


@needs_root
def test_fleet_reset_seq_recovers_a_locked_downlink_admin_only(tmp_path, pki, public_dir):
    from gateway.fleet.handler import SEQ_CURSOR
    from gateway.store import Store
    from tools.ota import keygen
    _, pub = keygen(tmp_path / "cmd.key")
    path = write_config(tmp_path, pki, 1, drivers=[{"type": "simulated", "meters": 1}])
    doc = yaml.safe_load(path.read_text())
    doc["control"] = {"socket": str(public_dir / "ctl.sock"), "group": "dialout",
                      "roles": {"audio": "technician", "video": "admin"}}
    doc["fleet"] = {"command_keys": [str(pub)]}
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    with Store(cfg.store.path) as store:  # as firmware without the bound left it
        store.append([], cursors={SEQ_CURSOR: 2**63 - 1})
    runtime = Runtime(cfg)
    runtime.start()
    try:
        state = json.loads(console(runtime, "fleet", "--json", groups=["dialout"]).stdout)
        assert state["locked"] is True and state["last_seq"] == 2**63 - 1
        r = console(runtime, "fleet", "reset-seq", groups=["dialout", "audio"])
        assert r.returncode == 3 and "permission denied: needs admin" in r.stderr
        r = console(runtime, "fleet", "reset-seq", "--json", groups=["dialout", "video"])
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["previous_seq"] == 2**63 - 1
        state = json.loads(console(runtime, "fleet", "--json", groups=["dialout"]).stdout)
        assert state["locked"] is False
        entries = [json.loads(line) for line in _audit_text(runtime).splitlines()]
        assert [(e["command"], e["ok"]) for e in entries] == [
            ("fleet", True), ("fleet reset-seq", False), ("fleet reset-seq", True),
            ("fleet", True)]
        assert "fleet.seq_reset" in _store_text(runtime)
    finally:
        runtime.stop()

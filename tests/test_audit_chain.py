"""The tamper-evident console audit log: a hash chain across rotations and restarts, checked
by `gateway audit verify`; its head goes up in the signed diagnostics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from gateway.config import load_config
from gateway.control.audit import GENESIS, AuditLog, Peer, line_hash, log_files, verify_chain
from gateway.model import Diag
from gateway.runtime import Runtime
from tests.gwproc import ROOT, write_config

PEER = Peer(42, 1000, 1000, "tech")


def _write(path: Path, n: int, **kw) -> AuditLog:
    log = AuditLog(str(path), **kw)
    for i in range(n):
        log.record(PEER, "status", {"i": i}, True, "ok", forward=False)
    return log


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", *args], cwd=ROOT,
                          text=True, capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_chain_spans_rotations_and_restarts(tmp_path):
    path = tmp_path / "audit.log"
    log = _write(path, 15, max_bytes=1500, backups=20)
    head = log.head()
    assert head["entries"] == 15
    again = AuditLog(str(path), max_bytes=1500, backups=20)  # a restart continues the chain
    assert again.head() == head
    again.record(PEER, "diag", {}, True, "ok", forward=False)
    files = log_files(str(path))
    assert len(files) > 2 and files[-1] == str(path)
    rep = verify_chain(files)
    assert rep.ok, rep.problems
    assert (rep.entries, rep.first, rep.last) == (16, 1, 16)
    first = json.loads(Path(files[0]).read_text().splitlines()[0])
    assert first["n"] == 1 and first["prev"] == GENESIS
    assert rep.head == again.head()["head"]
    r = _verify("--file", str(path), "--head", f"16:{rep.head}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sound" in r.stdout


def test_edited_inserted_and_deleted_lines_are_found(tmp_path):
    path = tmp_path / "audit.log"
    _write(path, 6)
    good = path.read_text().splitlines()
    head = line_hash(good[-1].encode())

    def check(lines: list[str]) -> subprocess.CompletedProcess[str]:
        path.write_text("".join(line + "\n" for line in lines))
        return _verify("--file", str(path), "--head", f"6:{head}", "--json")

    edited = list(good)
    edited[2] = edited[2].replace('"ok": true', '"ok": false')
    r = check(edited)
    assert r.returncode == 1 and f"{path}:4" in r.stdout  # the line after the edit breaks
    deleted = good[:2] + good[3:]
    r = check(deleted)
    assert r.returncode == 1 and "missing entries" in r.stdout
    forged = list(good)
    forged.insert(3, forged[3])
    assert check(forged).returncode == 1
    cut = good[:-2]  # sound on its own: only the head the head-end holds shows the cut
    r = check(cut)
    report = json.loads(r.stdout)
    assert r.returncode == 1 and report["last"] == 4
    assert any("not in the log" in p for p in report["problems"])
    path.write_text("\n".join(good) + "\n")
    assert _verify("--file", str(path)).returncode == 0
    with path.open("ab") as f:
        f.write(b'{"n": 7, "prev"')  # a torn write
    assert _verify("--file", str(path)).returncode == 1
    assert _verify("--file", str(tmp_path / "nothing.log")).returncode == 2


def test_chain_head_goes_up_in_the_diagnostics(tmp_path, pki):
    path = write_config(tmp_path, pki, 1, drivers=[{"type": "simulated", "meters": 1}])
    doc = yaml.safe_load(path.read_text())
    sock = f"/tmp/gwa-{os.getpid()}.sock"
    doc["control"] = {"socket": sock}
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    rt = Runtime(cfg)
    rt.start()
    try:
        from gateway.console.client import ControlClient
        c = ControlClient(sock)
        c.connect()
        c.call("status")
        c.call("store")
        c.close()
        assert rt.control.audit.head()["entries"] == 2
        rt.edge.publish_diagnostics().result(10)
        rt.store.flush()
        diags = [sr.record for sr in rt.store.read_records(0, 100000)
                 if isinstance(sr.record, Diag) and sr.record.scope == "gateway"]
        assert diags[-1].metrics["audit"] == rt.control.audit.head()
    finally:
        rt.stop()
    r = _verify("-c", str(path))
    assert r.returncode == 0 and "2 entries" in r.stdout, r.stdout + r.stderr
    assert _verify("-c", str(tmp_path / "missing.yaml")).returncode == 2

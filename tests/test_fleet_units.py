"""Fleet building blocks without a broker: command verification, the command handler with a
real store, trials and the launcher's rollback, sd_notify, key hygiene."""

from __future__ import annotations

import os
import socket

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.fleet import launcher, watchdog
from gateway.fleet.command import Rejected, encode_command, verify_command
from gateway.wire.cose import keyring, sign1
from gateway.fleet.handler import SEQ_CURSOR, CommandFailed, CommandHandler
from gateway.fleet.keys import KeyFileError, check_private_key_file, new_signing_key
from gateway.store import Store

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
TRUSTED = keyring([KEY.public_key()])
NOW = 1_800_000_000_000
GW = "gw-0001"


def cmd(seq: int = 10, *, key=KEY, target="gw-0001", exp=NOW + 60_000, iat=NOW - 1000,
        name="diagnostics", args=None, id="c1") -> bytes:
    return encode_command(key, id=id, seq=seq, target=target, cmd=name, args=args or {},
                          issued_ms=iat, expires_ms=exp)


def reason(data: bytes, last_seq: int = 0, now: int = NOW) -> str:
    with pytest.raises(Rejected) as e:
        verify_command(data, TRUSTED, GW, last_seq, now)
    return e.value.reason


def test_valid_command_round_trip():
    c = verify_command(cmd(args={"mode": "service"}), TRUSTED, GW, 9, NOW)
    assert (c.id, c.seq, c.cmd, c.args) == ("c1", 10, "diagnostics", {"mode": "service"})
    assert verify_command(cmd(target="*"), TRUSTED, GW, 0, NOW).target == "*"
    assert verify_command(cmd(target=["x", GW]), TRUSTED, GW, 0, NOW).seq == 10


def test_rejections_say_why():
    assert reason(cmd(key=OTHER)) == "unknown_key"
    forged = bytearray(cmd())
    forged[-70] ^= 1  # inside the payload or signature
    assert reason(bytes(forged)) in ("bad_signature", "malformed")
    # same kid, other key's signature: a forgery that names our key
    parts = list(cbor2.loads(cmd()).value)
    parts[3] = OTHER.sign(b"x")
    assert reason(cbor2.dumps(cbor2.CBORTag(18, parts))) == "bad_signature"
    assert reason(cmd(target="gw-0002")) == "wrong_target"
    assert reason(cmd(target=["gw-0002"])) == "wrong_target"
    assert reason(cmd(exp=NOW - 1, iat=NOW - 5000)) == "expired"
    assert reason(cmd(seq=10), last_seq=10) == "replayed"
    assert reason(cmd(seq=5), last_seq=10) == "replayed"
    assert reason(sign1({"v": 1, "id": "x"}, KEY)) == "malformed"
    assert reason(b"\x00garbage") == "malformed"


def test_rejection_keeps_readable_id_for_the_report():
    with pytest.raises(Rejected) as e:
        verify_command(cmd(seq=3, id="op-7"), TRUSTED, GW, 10, NOW)
    assert e.value.command == {"id": "op-7", "seq": 3, "cmd": "diagnostics"}


def test_encoder_refuses_what_the_gateway_would():
    with pytest.raises(ValueError):
        cmd(exp=NOW, iat=NOW)  # expiry not after issue
    with pytest.raises(ValueError):
        cmd(name="Bad Name")


@given(st.binary(max_size=300))
def test_random_bytes_only_reject(data):
    with pytest.raises(Rejected):
        verify_command(data, TRUSTED, GW, 0, NOW)


@given(st.integers(0, 400), st.integers(0, 7))
def test_any_bit_flip_is_rejected(pos, bit):
    data = bytearray(cmd())
    pos %= len(data)
    data[pos] ^= 1 << bit
    with pytest.raises(Rejected):
        verify_command(bytes(data), TRUSTED, GW, 0, NOW)


# --------------------------------------------------------------------------- handler


def events(store: Store) -> list:
    return [sr.record for sr in store.read_records(0, 10000) if hasattr(sr.record, "kind")]


def test_handler_persists_seq_before_running_and_survives_restart(tmp_path):
    ran: list[str] = []

    def diag(c):
        ran.append(c.id)
        return {"ok": 1}

    def boom(c):
        raise CommandFailed("no can do")

    with Store(tmp_path / "s.db") as store:
        h = CommandHandler(GW, TRUSTED, store, {"diagnostics": diag, "reboot": boom},
                           clock=lambda: NOW)
        h.handle("t", cmd(seq=100, id="a"))
        h.handle("t", cmd(seq=100, id="a"))  # replay
        h.handle("t", cmd(seq=101, id="b", name="reboot"))
        h.handle("t", cmd(seq=102, id="c", name="unknown_thing"))
        assert ran == ["a"]
        assert store.get_cursor(*SEQ_CURSOR) == 102
        kinds = [(e.kind, e.detail.get("id"), e.detail.get("ok", e.detail.get("reason")))
                 for e in events(store)]
        assert kinds == [("fleet.command_accepted", "a", None),
                         ("fleet.command_result", "a", True),
                         ("fleet.command_rejected", "a", "replayed"),
                         ("fleet.command_accepted", "b", None),
                         ("fleet.command_result", "b", False),
                         ("fleet.command_accepted", "c", None),
                         ("fleet.command_result", "c", False)]
    with Store(tmp_path / "s.db") as store:  # "reboot": the sequence is remembered
        h = CommandHandler(GW, TRUSTED, store, {"diagnostics": diag}, clock=lambda: NOW)
        assert h.last_seq == 102
        h.handle("t", cmd(seq=100, id="a"))
        store.flush()
        assert ran == ["a"] and events(store)[-1].detail["reason"] == "replayed"


def test_handler_rate_limits_rejection_events(tmp_path):
    with Store(tmp_path / "s.db") as store:
        h = CommandHandler(GW, TRUSTED, store, {}, clock=lambda: NOW)
        for _ in range(100):
            h.handle("t", b"junk")
        store.flush()
        assert h.counters["rejected"] == 100
        assert len(events(store)) <= 31


# --------------------------------------------------------------------------- trials


def test_launcher_rolls_back_a_trial_that_keeps_crashing(tmp_path):
    state = tmp_path / "state"
    (tmp_path / "releases" / "A").mkdir(parents=True)
    (tmp_path / "releases" / "B").mkdir(parents=True)
    current = tmp_path / "current"
    launcher.switch_symlink(current, "releases/B")
    launcher.save_trial(state, {"kind": "ota", "id": "u1", "attempts": 0, "max_attempts": 2,
                                "undo": [{"op": "symlink", "link": str(current),
                                          "target": "releases/A"}], "info": {"to": "B"}})
    assert launcher.count_attempt(state) is None
    assert launcher.count_attempt(state) is None
    assert os.readlink(current) == "releases/B"
    msg = launcher.count_attempt(state)
    assert msg and "rolled back" in msg
    assert os.readlink(current) == "releases/A"
    assert launcher.load_trial(state) is None
    [out] = launcher.read_outcomes(state)
    assert (out["kind"], out["id"], out["ok"], out["attempts"]) == ("ota", "u1", False, 2)
    launcher.drop_outcomes(state, {"u1"})
    assert launcher.read_outcomes(state) == []


def test_trial_commit_and_restore_ops_are_idempotent(tmp_path):
    cfg, prev = tmp_path / "g.yaml", tmp_path / "g.yaml.prev"
    cfg.write_text("new")
    prev.write_text("old")
    trial = {"kind": "config", "id": "c", "undo": [{"op": "restore", "path": str(cfg),
                                                    "backup": str(prev)}],
             "commit": [{"op": "remove", "path": str(prev)}]}
    launcher.save_trial(tmp_path, trial)
    launcher.finish_trial(tmp_path, trial, False, "bad")
    launcher.finish_trial(tmp_path, trial, False, "bad")  # a crash and a second run
    assert cfg.read_text() == "old"
    assert len(launcher.read_outcomes(tmp_path)) == 1


# --------------------------------------------------------------------------- sd_notify, keys


def test_sd_notify_and_watchdog_pets_only_while_threads_live(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert watchdog.notify("READY=1")
    assert srv.recv(100) == b"READY=1"
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog.watchdog_interval_s() == pytest.approx(0.05)
    dead: list[str] = []
    wd = watchdog.Watchdog(lambda: list(dead))
    wd.start()
    try:
        assert srv.recv(100) == b"WATCHDOG=1"
        dead.append("uplink")
        while True:  # drain pets sent before the thread "died"
            msg = srv.recv(100)
            if msg.startswith(b"STATUS="):
                break
        assert b"uplink" in msg
        srv.settimeout(0.3)
        with pytest.raises(socket.timeout):
            srv.recv(100)  # no more pets
    finally:
        wd.stop()
        wd.join(2)
        srv.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not watchdog.notify("READY=1")


def test_world_readable_key_is_refused_and_new_keys_are_0600(tmp_path):
    kid, pub = new_signing_key(tmp_path / "k.pem")
    assert (os.stat(tmp_path / "k.pem").st_mode & 0o777) == 0o600 and len(kid) == 16
    check_private_key_file(tmp_path / "k.pem", "key")
    os.chmod(tmp_path / "k.pem", 0o644)
    with pytest.raises(KeyFileError, match="world-readable"):
        check_private_key_file(tmp_path / "k.pem", "key")

"""The runtime side of the console: framing, audit log, reload plans, and a real Runtime's
control server facing consoles that misbehave (hang, stall mid-frame, speak another version)."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, strategies as st

from gateway.config import load_config
from gateway.control import server as server_mod
from gateway.control.audit import AuditLog, Peer
from gateway.control.protocol import (MAX_FRAME, PROTOCOL_VERSION, FrameDecoder, PeerClosed,
                                      ProtocolError, encode_frame, recv_message, send_message)
from gateway.control.reload import plan_reload
from gateway.model import Event
from gateway.runtime import Runtime
from tests.gwproc import write_config
from tests.waiting import wait_for as _wait

# --------------------------------------------------------------------------- framing


def test_frame_round_trip_and_split_delivery():
    msgs = [{"v": 1, "id": i, "cmd": "status", "args": {"x": "é" * i}} for i in range(5)]
    data = b"".join(encode_frame(m) for m in msgs)
    dec = FrameDecoder()
    out = []
    for i in range(len(data)):  # one byte at a time: every split point
        dec.receive_data(data[i:i + 1])
        while (m := dec.next_message()) is not None:
            out.append(m)
    assert out == msgs and dec.pending == 0


def test_oversized_and_non_object_frames_are_protocol_errors():
    dec = FrameDecoder()
    dec.receive_data(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(ProtocolError, match="limit"):
        dec.next_message()
    dec = FrameDecoder()
    dec.receive_data(struct.pack(">I", 2) + b"[]")
    with pytest.raises(ProtocolError, match="JSON object"):
        dec.next_message()
    with pytest.raises(ValueError):
        encode_frame({"x": "a" * (MAX_FRAME + 1)})


@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_protocol_error(data):
    dec = FrameDecoder()
    dec.receive_data(data)
    try:
        while dec.next_message() is not None:
            pass
    except ProtocolError:
        pass


def test_recv_message_timeouts_and_hang_ups():
    a, b = socket.socketpair()
    with a, b:
        b.sendall(encode_frame({"v": 1})[:5])  # header and one byte, then silence
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            recv_message(a, 5, 0.3)
        assert time.monotonic() - t0 < 3
    a, b = socket.socketpair()
    with a:
        b.close()
        with pytest.raises(PeerClosed):
            recv_message(a, 1, 1)


# --------------------------------------------------------------------------- audit


def test_audit_log_rotates_redacts_and_forwards(tmp_path):
    events: list[Event] = []
    log = AuditLog(str(tmp_path / "audit.log"), max_bytes=600, backups=2, emit=events.append)
    peer = Peer(123, 1000, 1000, "tech")
    for i in range(12):
        log.record(peer, "keys set", {"meter_id": f"m{i}", "key": "00112233"}, True, "stored",
                   meter_id=f"m{i}")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    text = "".join((tmp_path / f).read_text() for f in files)
    assert "00112233" not in text and '"key": "***"' in text
    last = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert last["uid"] == 1000 and last["user"] == "tech" and last["command"] == "keys set"
    assert last["ok"] is True and last["args"]["meter_id"] == "m11"
    assert stat.S_IMODE(os.stat(tmp_path / "audit.log").st_mode) == 0o640
    assert len(events) == 12 and events[-1].kind == "control.audit"
    assert events[-1].meter_id == "m11" and "00112233" not in repr(events)
    assert log.tail(3)[-1]["args"]["meter_id"] == "m11"


# --------------------------------------------------------------------------- reload plan


def _cfg(tmp: Path, pki: Path, name: str, drivers, **kw):
    return load_config(write_config(tmp, pki, 8883, drivers=drivers, name=name, **kw))


def test_reload_plan_names_what_changes(tmp_path, pki):
    a = {"type": "simulated", "name": "a", "meters": 1}
    b = {"type": "simulated", "name": "b", "meters": 2}
    c = {"type": "simulated", "name": "c", "meters": 3}
    old = _cfg(tmp_path, pki, "old.yaml", [a, b])
    new = _cfg(tmp_path, pki, "new.yaml", [a, {**b, "meters": 5}, c])
    plan = plan_reload(old, new).to_dict()
    assert plan == {"added": ["c"], "removed": [], "changed": ["b"], "unchanged": ["a"],
                    "restart_needed": [], "logging_changed": False}
    gone = plan_reload(old, _cfg(tmp_path, pki, "gone.yaml", [b])).to_dict()
    assert gone["removed"] == ["a"] and gone["unchanged"] == ["b"]
    moved = _cfg(tmp_path, pki, "moved.yaml", [a, b], uplink={"port": 9999})
    assert plan_reload(old, moved).restart_needed == ["uplink"]


# --------------------------------------------------------------------------- live server


@pytest.fixture
def runtime(tmp_path, pki, monkeypatch):
    """A real Runtime (no broker: the uplink just retries) with a fast simulated bus."""
    monkeypatch.setattr(server_mod, "SEND_TIMEOUT_S", 1.0)
    monkeypatch.setattr(server_mod, "FRAME_TIMEOUT_S", 1.0)
    sock_dir = tempfile.mkdtemp(prefix="gwc-")
    path = write_config(tmp_path, pki, 1, drivers=[
        {"type": "simulated", "name": "fast", "meters": 200, "interval_s": 0.05}])
    doc = yaml.safe_load(path.read_text())
    doc["control"] = {"socket": f"{sock_dir}/ctl.sock"}
    path.write_text(yaml.safe_dump(doc))
    rt = Runtime(load_config(path))
    rt.start()
    try:
        assert rt.control is not None
        yield rt
    finally:
        rt.stop()
        os.rmdir(sock_dir)


def _connect(rt: Runtime) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(rt.config.control.socket)
    return s


def _call(s: socket.socket, cmd: str, **args):
    send_message(s, {"v": PROTOCOL_VERSION, "id": 1, "cmd": cmd, "args": args})
    return recv_message(s, 10, 10)


def test_socket_mode_and_cleanup(runtime):
    path = runtime.config.control.socket
    st_ = os.stat(path)
    assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o660
    with _connect(runtime) as s:
        reply = _call(s, "hello")
        assert reply["ok"] and reply["result"]["peer"]["uid"] == os.getuid()


def test_hung_consoles_never_hold_the_drivers(runtime, caplog):
    """A console that asked for `tail` and never reads, one that stalls mid-frame and one that
    vanished: the drivers keep producing, other consoles are served, the hung ones are dropped
    once their send/frame timeouts expire."""
    assert runtime.store is not None
    caplog.set_level("INFO", logger="gateway.control")
    hung_tail = _connect(runtime)
    hung_tail.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    send_message(hung_tail, {"v": 1, "id": 1, "cmd": "tail", "args": {}})
    stalled = _connect(runtime)
    stalled.sendall(encode_frame({"v": 1, "id": 1, "cmd": "status"})[:6])
    gone = _connect(runtime)
    send_message(gone, {"v": 1, "id": 1, "cmd": "tail", "args": {}})
    gone.close()
    assert _wait(lambda: runtime.control.connection_count() >= 2)
    seq0 = runtime.store.stats().last_seq
    # 200 meters every 50 ms: the hung tail's socket buffer fills within a second.
    assert _wait(lambda: runtime.store.stats().last_seq > seq0 + 4000), "drivers were held up"
    with _connect(runtime) as s:
        t0 = time.monotonic()
        reply = _call(s, "status")
        assert reply["ok"] and time.monotonic() - t0 < 5
        assert reply["result"]["buses"][0]["state"] == "running"
    assert _wait(lambda: runtime.control.connection_count() == 0, 20), \
        "hung consoles were not dropped"
    assert all(d.refused == 0 for d in runtime.drivers)
    assert runtime.monitor.subscribers == 0
    assert caplog.text.count("timed out") == 2, caplog.text
    hung_tail.close()
    stalled.close()


def test_protocol_version_mismatch_and_unknown_command(runtime):
    with _connect(runtime) as s:
        reply = _call(s, "nonsense")
        assert reply["error"]["code"] == "unknown_command"
        send_message(s, {"v": 99, "id": 2, "cmd": "status"})
        reply = recv_message(s, 10, 10)
        assert reply["error"]["code"] == "unsupported_version"
        assert reply["error"]["supported"] == [PROTOCOL_VERSION]
        with pytest.raises(PeerClosed):
            recv_message(s, 10, 10)


def test_too_many_consoles_are_turned_away(runtime):
    conns = [_connect(runtime) for _ in range(server_mod.MAX_CONSOLES)]
    try:
        assert _wait(lambda: runtime.control.connection_count() == server_mod.MAX_CONSOLES)
        with _connect(runtime) as extra:
            reply = recv_message(extra, 10, 10)
            assert reply["error"]["code"] == "busy"
    finally:
        for c in conns:
            c.close()


def test_a_second_gateway_does_not_steal_the_socket(runtime):
    from gateway.control.server import ControlError, ControlServer
    other = ControlServer(runtime, runtime.config.control)
    with pytest.raises(ControlError, match="another gateway"):
        other.start()
    with _connect(runtime) as s:
        assert _call(s, "hello")["ok"]


# --------------------------------------------------------------------------- capabilities


class _Radio:
    """Bus capabilities as the wM-Bus, M-Bus and Zigbee drivers will offer them (those
    drivers are being written; this stands in with the documented method signatures)."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.joins: list[int] = []
        self.stopped_early = False

    def meter_stats(self):
        return {"radio-1": {"success": 4, "failures": 1, "rssi_dbm": -71, "lqi": 180}}

    def listen(self, seconds, callback):
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            if callback({"manufacturer": "KAM", "id": f"{n:08d}", "version": 1,
                         "device_type": 7, "rssi_dbm": -60 - n, "known": n == 1}) is False:
                self.stopped_early = True
                return
            time.sleep(0.05)

    def scan(self, progress=None):
        found = [{"address": a, "manufacturer": "EMH"} for a in (1, 5)]
        for dev in found:
            progress and progress(dev)
        return found

    def permit_join(self, seconds):
        self.joins.append(seconds)
        return {"status": "ok"}

    def set_key(self, meter_id, key):
        self.keys[meter_id] = key


def _add_bus(rt: Runtime, name: str, type_name: str) -> _Radio:
    from gateway.drivers.base import Driver

    class Bus(Driver, _Radio):
        def __init__(self) -> None:
            Driver.__init__(self, name, {}, rt)
            _Radio.__init__(self)

        def loop(self) -> None:
            self.stopping.wait()

    Bus.type_name = type_name
    drv = Bus()
    drv.start()
    rt.drivers.add(drv)
    return drv


def test_bus_capabilities_stream_and_are_audited(runtime, tmp_path):
    from gateway.console.client import ControlClient
    radio = _add_bus(runtime, "radio", "wmbus")
    wired = _add_bus(runtime, "wired", "mbus")
    zb = _add_bus(runtime, "zb", "zigbee")
    c = ControlClient(runtime.config.control.socket)
    c.connect()
    try:
        out = list(c.stream("listen", {"bus": "wmbus", "seconds": 0.5}))
        items = [v for k, v in out if k == "item"]
        assert len(items) >= 3 and items[0]["manufacturer"] == "KAM" and items[0]["known"]
        assert out[-1] == ("end", {"bus": "radio", "seconds": 0.5, "heard": len(items),
                                   "dropped": 0, "listened_s": 0.5, "stopped_early": False})
        # Ctrl-C after the first telegram: the driver is told (callback returns False).
        got: list[Any] = []
        stream = c.stream("listen", {"bus": "radio", "seconds": 30}, interrupted=lambda: bool(got))
        for kind, value in stream:
            got.append((kind, value))
        assert got[0][0] == "item" and got[-1][0] == "end"
        assert got[-1][1]["stopped_early"] is True and got[-1][1]["listened_s"] < 30
        assert _wait(lambda: radio.stopped_early, 5)
        scan = list(c.stream("scan", {"bus": "mbus"}))
        assert [v["address"] for k, v in scan if k == "item"] == [1, 5]
        assert scan[-1][1]["devices"] == [{"address": 1, "manufacturer": "EMH"},
                                          {"address": 5, "manufacturer": "EMH"}]
        assert c.call("permit-join", {"bus": "zigbee", "seconds": 60})["answer"] == {"status": "ok"}
        assert zb.joins == [60]
        res = c.call("keys set", {"meter_id": "radio-1", "key": "00" * 16})
        assert res["applied"] is True and res["driver"] == "radio"
        assert radio.keys == {"radio-1": bytes(16)} and wired.keys == {}
        meters = {m["id"]: m for m in c.call("meters")["meters"]}
        assert meters["radio-1"]["rssi_dbm"] == -71 and meters["radio-1"]["lqi"] == 180
        assert meters["radio-1"]["success_ratio"] == 0.8
    finally:
        c.close()
    entries = runtime.control.audit.tail(10)  # every command, not only the changes
    assert [(e["command"], e["ok"]) for e in entries] == [
        ("listen", True), ("listen", True), ("scan", True), ("permit-join", True),
        ("keys set", True), ("meters", True)]
    assert entries[4]["args"] == {"meter_id": "radio-1", "key": "***"}


def test_failed_driver_start_keeps_the_old_drivers(runtime, tmp_path, pki, monkeypatch):
    """config apply: if a new driver cannot be built, nothing is stopped."""
    from gateway.control import reload
    old_drivers = list(runtime.drivers)
    doc = yaml.safe_load(Path(runtime.config.source_path).read_text())
    doc["drivers"][0]["meters"] = 3
    path = tmp_path / "next.yaml"
    path.write_text(yaml.safe_dump(doc))

    def broken(*a, **kw):
        raise ValueError("port /dev/ttyX is gone")

    import gateway.runtime
    monkeypatch.setattr(gateway.runtime, "make_driver", broken)
    with pytest.raises(reload.ReloadRefused, match="nothing was changed"):
        runtime.apply_config(load_config(path))
    assert list(runtime.drivers) == old_drivers and all(d.is_alive() for d in old_drivers)
    assert runtime.config.drivers[0].options["meters"] == 200


def test_config_show_masks_secrets_at_any_depth(tmp_path, pki):
    from gateway.control.handlers_config import config_to_dict
    cfg = _cfg(tmp_path, pki, "iec.yaml", [
        {"type": "iec62056-21", "name": "opt", "serial": {"port": "/dev/ttyUSB0"},
         "meters": [{"id": "m1", "password": "s3cr3tP1", "registers": ["1.8.0"]}]}])
    shown = json.dumps(config_to_dict(cfg))
    assert "s3cr3tP1" not in shown
    drv = config_to_dict(cfg)["drivers"][0]
    assert drv["meters"][0]["password"] == "***" and drv["meters"][0]["id"] == "m1"
    assert drv["serial"]["port"] == "/dev/ttyUSB0"
    assert config_to_dict(cfg)["control"]["audit_log"] == str(tmp_path / "audit.log")


def test_control_section_defaults_and_errors(tmp_path, pki):
    from gateway.config import ConfigError
    cfg = _cfg(tmp_path, pki, "plain.yaml", [{"type": "simulated"}])
    assert cfg.control.socket == "/run/gateway/control.sock" and cfg.control.group is None
    assert cfg.control.keys_dir == str(tmp_path / "keys")
    path = write_config(tmp_path, pki, 8883, name="ctl.yaml")
    doc = yaml.safe_load(path.read_text())
    doc["control"] = {"socket": "run/ctl.sock", "group": "bad group", "audit_backups": 500}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    text = "\n".join(map(str, exc.value.issues))
    assert "control.group: expected a group name" in text
    assert "control.audit_backups: expected an integer 0-100" in text
    doc["control"] = {"socket": "run/ctl.sock"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert load_config(path).control.socket == str(tmp_path / "run" / "ctl.sock")

"""Downlink hardening (issue 15, items 5 and 6): a bounded seq jump with an operator's
recovery, and floods of garbage or replays that cannot push a signed command out."""

from __future__ import annotations

import logging
import random

import cbor2
import pytest
import yaml

from gateway.fleet.command import Rejected, verify_command
from gateway.wire.cose import sign1
from gateway.fleet.handler import NOT_BEFORE_CURSOR, QUEUE_MAX, SEQ_CURSOR, CommandHandler
from gateway.model import now_ms
from gateway.store import Store
from tests.test_fleet_commands import EventWatcher, fleet_config, sign
from tests.test_fleet_units import GW, NOW, OTHER, TRUSTED, cmd, events
from tests.gwproc import start_gateway
from tests.waiting import wait_for

DAY = 86_400_000
TOP = 2**63 - 1


# --------------------------------------------------------------------------- item 5


def test_seq_may_not_jump_beyond_the_bound():
    def why(seq: int, last: int, **kw) -> str:
        with pytest.raises(Rejected) as e:
            verify_command(cmd(seq=seq), TRUSTED, GW, last, NOW, **kw)
        return e.value.reason

    assert why(TOP, 10, max_jump=DAY) == "seq_too_far"
    assert why(NOW + DAY + 1, 0, max_jump=DAY) == "seq_too_far"
    with pytest.raises(Rejected, match="fleet.max_seq_jump"):
        verify_command(cmd(seq=TOP), TRUSTED, GW, 10, NOW, max_jump=DAY)
    # Time-based seqs (the head-end tool's) and counters both pass.
    assert verify_command(cmd(seq=NOW + DAY), TRUSTED, GW, 0, NOW, max_jump=DAY).seq == NOW + DAY
    assert verify_command(cmd(seq=11), TRUSTED, GW, 10, NOW, max_jump=5).seq == 11
    # Past a last seq that is itself ahead of the clock, by at most the bound.
    assert verify_command(cmd(seq=NOW + 2 * DAY), TRUSTED, GW, NOW + DAY, NOW,
                          max_jump=DAY).seq == NOW + 2 * DAY


def test_one_command_cannot_lock_the_downlink(tmp_path):
    ran: list[str] = []
    with Store(tmp_path / "s.db") as store:
        h = CommandHandler(GW, TRUSTED, store, {"diagnostics": lambda c: ran.append(c.id)},
                           clock=lambda: NOW)
        h.handle("t", cmd(seq=TOP, id="lock"))
        h.handle("t", cmd(seq=NOW, id="next"))
        assert ran == ["next"] and store.get_cursor(*SEQ_CURSOR) == NOW
        store.flush()
        rej = [e for e in events(store) if e.kind == "fleet.command_rejected"]
        assert [(e.detail["id"], e.detail["reason"]) for e in rej] == [("lock", "seq_too_far")]


def test_recovery_from_a_locked_downlink(tmp_path, caplog):
    """A store whose seq was already pushed to 2^63-1 (by firmware without the bound):
    the gateway says so at start; the operator's reset unlocks it without letting any
    command captured before the reset run again, and survives a restart."""
    ran: list[str] = []
    diag = {"diagnostics": lambda c: ran.append(c.id)}
    with Store(tmp_path / "s.db") as store:
        store.append([], cursors={SEQ_CURSOR: TOP})
        h = CommandHandler(GW, TRUSTED, store, diag, clock=lambda: NOW)
        caplog.set_level(logging.ERROR, logger="gateway.fleet")
        h.start()
        try:
            assert h.locked() and "fleet reset-seq" in caplog.text
            captured = cmd(seq=NOW + 5, id="old", iat=NOW - 1000)
            out = h.reset_seq(None, "root on the console")
            assert out == {"previous_seq": TOP, "seq": NOW, "not_before_ms": NOW}
            assert not h.locked()
            h.handle("t", captured)  # seq above the new floor, but issued before the reset
            h.handle("t", cmd(seq=NOW + 10, id="new", iat=NOW))
            assert ran == ["new"]
        finally:
            h.stop()
        store.flush()
        kinds = [e.kind for e in events(store)]
        assert "fleet.seq_locked" in kinds and "fleet.seq_reset" in kinds
        assert store.get_cursor(*NOT_BEFORE_CURSOR) == NOW
    with Store(tmp_path / "s.db") as store:
        h = CommandHandler(GW, TRUSTED, store, diag, clock=lambda: NOW + 1)
        assert (h.last_seq, h.not_before_ms) == (NOW + 10, NOW)
        h.handle("t", cmd(seq=NOW + 20, id="old2", iat=NOW - 1))
        assert ran == ["new"]


# --------------------------------------------------------------------------- item 6


def _garbage(rng: random.Random, i: int) -> bytes:
    kind = i % 5
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:  # well-formed COSE, unknown key
        return sign1({"v": 1, "id": f"x{i}"}, OTHER)
    if kind == 2:  # our key id, someone else's signature
        parts = list(cbor2.loads(cmd(seq=NOW + i)).value)
        parts[3] = OTHER.sign(b"x")
        return cbor2.dumps(cbor2.CBORTag(18, parts))
    if kind == 3:
        return b"\xff" * (70 * 1024)  # over the size limit: refused before any parsing
    return cmd(seq=5, id="replay")  # a validly signed, long-replayed command


def test_a_signed_command_gets_through_10000_garbage_messages(tmp_path, caplog):
    """The worker is not even running while the flood arrives (the worst case: it is busy
    with a long command): garbage never takes a queue slot, so the signed command in the
    middle of it is there when the worker gets to it."""
    ran: list[str] = []
    rng = random.Random(15)
    caplog.set_level(logging.WARNING, logger="gateway.fleet")
    with Store(tmp_path / "s.db") as store:
        store.append([], cursors={SEQ_CURSOR: 10})
        h = CommandHandler(GW, TRUSTED, store, {"diagnostics": lambda c: ran.append(c.id)},
                           clock=lambda: NOW)
        good = cmd(seq=NOW, id="real")
        for i in range(10_000):
            h.on_command("t", _garbage(rng, i))
            if i == 5000:
                h.on_command("t", good)
                for _ in range(500):  # the real one replayed at once: one slot, not 500
                    h.on_command("t", good)
        assert h._queue.qsize() == 1 and h.counters["dropped"] == 0
        h.start()
        try:
            assert wait_for(lambda: ran == ["real"], 20)
        finally:
            h.stop()
        assert h.counters["rejected"] == 10_500 and h.counters["accepted"] == 1
        store.flush()
        rejected = [e for e in events(store) if e.kind == "fleet.command_rejected"]
        assert len(rejected) <= 31
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) <= 2, [r.getMessage() for r in warnings]


def test_only_verified_commands_fill_the_queue(tmp_path, caplog):
    with Store(tmp_path / "s.db") as store:
        h = CommandHandler(GW, TRUSTED, store, {}, clock=lambda: NOW)
        caplog.set_level(logging.WARNING, logger="gateway.fleet")
        for i in range(QUEUE_MAX + 50):
            h.on_command("t", cmd(seq=100 + i, id=f"c{i}"))
        assert h._queue.qsize() == QUEUE_MAX and h.counters["dropped"] == 50
        assert caplog.text.count("command queue full") == 1, "drops are warned once a minute"


def test_flood_over_the_broker(tmp_path, pki, broker, mqtt_client_factory):
    """10,000 garbage messages on the gateway's command topic, the signed command among
    them: it runs, and the gateway's own data keeps flowing."""
    from tools.ota import keygen
    key, pub = keygen(tmp_path / "cmd.key")
    cfg = fleet_config(tmp_path, pki, broker.port, {"command_keys": [str(pub)]},
                       drivers=[{"type": "simulated", "name": "sim", "meters": 2,
                                 "interval_s": 1}])
    watch = EventWatcher(mqtt_client_factory, pki)
    sender = mqtt_client_factory("headend", client_id="flooder")
    gw = start_gateway(cfg, tmp_path / "gw.log")
    try:
        assert gw.wait_for_log("uplink: connected", 20), gw.text()
        topic = "meters/gw-0001/down/cmd"
        rng = random.Random(6)
        good = sign(key, id="through", seq=now_ms())
        for i in range(10_000):
            sender.publish(topic, rng.randbytes(rng.randrange(1, 120)), qos=0)
            if i == 7000:
                sender.publish(topic, good, qos=1)
        assert watch.kind("fleet.command_result", id="through", timeout=120).detail["ok"]
        text = gw.text()
        assert text.count("command rejected") <= 3, "rejection warnings are rate-limited"
        assert "queue full" not in text
    finally:
        assert gw.terminate() == 0, gw.text()[-3000:]


def test_max_seq_jump_and_roles_are_validated(tmp_path, pki):
    from gateway.config import ConfigError, load_config
    from tests.gwproc import write_config
    path = write_config(tmp_path, pki, 8883)
    assert load_config(path).fleet.max_seq_jump == DAY
    doc = yaml.safe_load(path.read_text())
    doc["fleet"] = {"max_seq_jump": 0}
    doc["control"] = {"roles": {"bad group": "viewer", "audio": "superuser"}}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = "\n".join(map(str, e.value.issues))
    assert "fleet.max_seq_jump: expected an integer" in text
    assert "control.roles.audio: expected one of" in text
    doc["fleet"] = {"max_seq_jump": 1000}
    doc["control"] = {"roles": {"bad group": "viewer"}}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="control.roles: expected group names"):
        load_config(path)
    doc["control"] = {"roles": {"audio": "technician", "video": "admin"}}
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    assert cfg.fleet.max_seq_jump == 1000
    assert cfg.control.roles == {"audio": "technician", "video": "admin"}

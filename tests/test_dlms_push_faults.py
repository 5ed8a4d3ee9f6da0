"""The DLMS push driver over a real pty (tools/sim/dlms_push.py) keeps reading whatever a
frame does to the codec: a codec raising arbitrary exception types, hostile mutated corpus
frames with valid checksums between good ones, a replayed invocation counter."""

from __future__ import annotations

import random
import time
from typing import Any

from gateway.drivers.dlms import PUSH_IC_CURSOR, DlmsDriver
from gateway.model import Event, Reading
from gateway.store import Store
from tests.han_mutations import OPS, mutate, samples, wire
from tools.sim.dlms_push import DEFAULT_SYSTEM_TITLE, start

KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
EXCEPTIONS = (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError, AttributeError,
              RuntimeError, OverflowError, AssertionError, LookupError, MemoryError,
              UnicodeError, RecursionError, NotImplementedError)


class RaisingDecoder:
    """Wraps the driver's real decoder; each of the first len(EXCEPTIONS) notifications
    makes it raise another exception type instead of returning the event."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.raised: list[str] = []
        self.bogus = False

    def receive_data(self, data: bytes) -> None:
        self.real.receive_data(data)

    def reset(self) -> None:
        self.real.reset()

    def next_event(self) -> Any:
        ev = self.real.next_event()
        if hasattr(ev, "notification") and len(self.raised) < len(EXCEPTIONS):
            exc = EXCEPTIONS[len(self.raised)]
            self.raised.append(exc.__name__)
            if exc is UnicodeError:
                raise UnicodeDecodeError("ascii", b"\xff", 0, 1, "injected")
            raise exc("injected by the test")
        if hasattr(ev, "notification") and not self.bogus:
            self.bogus = True
            return object()  # an event of no known kind
        return ev


class FaultyCodecDriver(DlmsDriver):
    def _make_push_decoder(self) -> Any:
        self.injected = RaisingDecoder(super()._make_push_decoder())
        return self.injected


def _run(tmp_path, sim, cls=DlmsDriver, until=None, timeout=40, store=None, options=None,
         **meter):
    own = store is None
    store = store or Store(tmp_path / f"store{time.monotonic_ns()}.db")
    d = cls("han", {"serial": {"port": sim.device}, "mode": "push", **(options or {}),
                    "meters": [{"id": "han", **meter}]}, store)
    d.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(d):
        time.sleep(0.05)
    alive = d.is_alive()
    d.stop()
    recs = [sr.record for sr in store.read_records(0, 100_000)]
    if own:
        store.close()
    return d, recs, alive


def _stats(d) -> dict:
    return d.meter_stats()["han"]


def test_codec_raising_any_exception_type_does_not_stop_the_push_bus(tmp_path):
    sim = start(key=KEY, interval_s=0.05)
    try:
        d, recs, alive = _run(tmp_path, sim, FaultyCodecDriver,
                              lambda d: _stats(d)["notifications"] >= 3, block_key=KEY)
    finally:
        sim.stop()
    assert alive and d.injected.raised == [e.__name__ for e in EXCEPTIONS]
    s = _stats(d)
    assert s["decode_errors"] == len(EXCEPTIONS) + 1 and s["notifications"] >= 3
    errors = [r for r in recs if isinstance(r, Event) and r.kind == "meter.decode_error"]
    assert 1 <= len(errors) <= 3 + 1  # rate-limited: a burst of 3, then one a minute
    assert errors[0].detail["frame"] and "injected by the test" in errors[0].detail["reason"]
    assert any(isinstance(r, Reading) and r.quantity == "1-0:1.8.0" for r in recs)


def test_hostile_corpus_mutations_between_good_frames_do_not_stop_the_push_bus(tmp_path):
    rnd = random.Random(14)
    hostile = []
    for s in samples():
        for _ in range(4):
            plain = s.plain
            for _ in range(rnd.randint(1, 3)):
                plain = mutate(plain, rnd.choice(OPS), rnd.randrange(4096), rnd.randrange(256))
            hostile.append(wire(s, plain, rnd.choice([0, 40])))
    rnd.shuffle(hostile)
    n = len(hostile)
    sim = start(interval_s=3600.0)
    sim._next = time.monotonic() + 3600  # quiet until the driver has the port open
    store = Store(tmp_path / "store.db")

    def good() -> list:
        return [sr.record for sr in store.read_records(0, 100_000)
                if isinstance(sr.record, Reading) and sr.record.quantity == "1-0:32.7.0"
                and (sr.record.mantissa, sr.record.exponent) == (2301, -1)]

    quiet: list[float] = []
    armed: list[bool] = []

    def done(d) -> bool:
        if d.state == "open" and not armed:
            armed.append(True)
            sim.pushed_at.clear()  # a push before the port was open may be lost: not counted
            sim.hostile, sim.interval_s, sim._next = hostile, 0.02, time.monotonic() + 0.3
        if len(sim.pushed_at) >= n + 3 and not quiet:
            sim.interval_s, sim._next = 3600.0, time.monotonic() + 3600  # no more pushes
            quiet.append(time.monotonic())
        # the driver must have taken each one (a push already due when we went quiet too)
        return bool(quiet) and time.monotonic() - quiet[0] > 0.3 and \
            len(good()) >= len(sim.pushed_at)

    try:
        try:
            d, recs, alive = _run(tmp_path, sim, until=done, timeout=60, store=store)
        finally:
            sim.stop()
        assert alive and not sim.hostile
        # every good push came through, whatever came before it
        assert len(good()) == len(sim.pushed_at) >= n + 3
        assert _stats(d)["decode_errors"] + _stats(d)["failures"] > 0
    finally:
        store.close()


def test_replayed_invocation_counter_is_suspected_and_gives_no_readings(tmp_path):
    store = Store(tmp_path / "store.db")
    try:
        sim = start(key=KEY, interval_s=0.05, invocation_counter=1_000_000)
        try:
            d, recs, _ = _run(tmp_path, sim, until=lambda d: _stats(d)["notifications"] >= 3,
                              store=store, block_key=KEY)
        finally:
            sim.stop()
        name = f"{PUSH_IC_CURSOR}:{DEFAULT_SYSTEM_TITLE.hex().upper()}"
        deadline = time.monotonic() + 10
        while store.get_cursor("han", name) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        last = store.get_cursor("han", name)
        assert last is not None and last >= 1_000_002
        before = sum(isinstance(r, Reading) for r in recs)
        # a restarted gateway, the old frames replayed (the counter starts again at 1)
        sim = start(key=KEY, interval_s=0.05)
        try:
            d, recs, alive = _run(tmp_path, sim, until=lambda d: _stats(d)["replays"] >= 3,
                                  store=store, block_key=KEY)
        finally:
            sim.stop()
        assert alive and _stats(d)["notifications"] == 0
        assert sum(isinstance(r, Reading) for r in recs) == before
        replays = [r for r in recs if isinstance(r, Event) and r.kind == "meter.replay_suspected"]
        assert replays and "not above the last accepted" in replays[0].detail["reason"]
        # counters above the cursor are taken again
        sim = start(key=KEY, interval_s=0.05, invocation_counter=last + 1)
        try:
            d, recs, _ = _run(tmp_path, sim, until=lambda d: _stats(d)["notifications"] >= 2,
                              store=store, block_key=KEY)
        finally:
            sim.stop()
        assert _stats(d)["replays"] == 0 and sum(isinstance(r, Reading) for r in recs) > before
        # a re-keyed meter counts from 1 again: `keys set` restarts the guard
        d = DlmsDriver("han", {"serial": {"port": "/dev/null"}, "mode": "push",
                               "meters": [{"id": "han", "block_key": KEY,
                                           "system_title": DEFAULT_SYSTEM_TITLE}]}, store)
        d.set_key("han", KEY)
        deadline = time.monotonic() + 10
        while store.get_cursor("han", name) != -1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get_cursor("han", name) == -1
        sim = start(key=KEY, interval_s=0.05)
        try:
            d, recs, _ = _run(tmp_path, sim, until=lambda d: _stats(d)["notifications"] >= 2,
                              store=store, block_key=KEY)
        finally:
            sim.stop()
        assert _stats(d)["replays"] == 0 and _stats(d)["notifications"] >= 2
    finally:
        store.close()


class RaisingSession:
    """A real DlmsSession whose register reads raise another exception type on each of the
    first polls (as a gurux bug on a strange reply would)."""

    def __init__(self, real: Any, raised: list[str]) -> None:
        self.real, self.raised = real, raised

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def read_register(self, *args: Any) -> Any:
        if len(self.raised) < 4:
            exc = (TypeError, IndexError, KeyError, AttributeError)[len(self.raised)]
            self.raised.append(exc.__name__)
            raise exc("injected by the test")
        return self.real.read_register(*args)


class FaultyPollDriver(DlmsDriver):
    raised: list[str] = []

    def _session(self, m: Any) -> Any:
        return RaisingSession(super()._session(m), self.raised)


def test_polled_meter_codec_raising_any_exception_does_not_stop_the_bus(tmp_path):
    from tools.sim.dlms import start as start_bus
    sim = start_bus(1, period_s=900, history_s=3600)
    store = Store(tmp_path / "store.db")
    FaultyPollDriver.raised = []
    d = FaultyPollDriver("dlms", {"serial": {"port": sim.device}, "reply_timeout_ms": 400,
                                  "retries": 1, "backoff_max_s": 0.2,
                                  "meters": [{"id": "m17", "physical": 17, "interval_s": 0.2,
                                              "registers": ["1-0:32.7.0"], "clock": False}]},
                         store)
    try:
        d.start()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and d.meter_stats()["m17"]["success"] < 2:
            time.sleep(0.05)
        alive = d.is_alive()
        d.stop()
        recs = [sr.record for sr in store.read_records(0, 100_000)]
    finally:
        store.close()
        sim.stop()
    s = d.meter_stats()["m17"]
    assert alive and FaultyPollDriver.raised == ["TypeError", "IndexError", "KeyError",
                                                 "AttributeError"]
    assert s["decode_errors"] == 4 and s["success"] >= 2
    errors = [r for r in recs if isinstance(r, Event) and r.kind == "meter.decode_error"]
    assert len(errors) == 4 and errors[0].detail["frame"].startswith("7EA0")
    assert any(isinstance(r, Reading) and r.quantity == "1-0:32.7.0" for r in recs)


def test_bare_glo_ciphered_apdus_without_hdlc_p1_inside_routed_by_system_title(tmp_path):
    """The Luxembourg Smarty P1 port: general-glo-ciphering APDUs back to back, no HDLC;
    one carries a P1 telegram (the corpus frame), the simulator's carry Data-Notifications;
    garbage in between is skipped."""
    from tests.han_mutations import CORPUS
    e = next(x for x in CORPUS if x["id"].startswith("dsmr_parser:"))
    smarty = bytes.fromhex(e["input_hex"])
    sim = start(key=KEY, interval_s=3600, framing="apdu",
                hostile=[b"\x00\xdb\x08garbage", smarty, b"\xdb\x08" + bytes(9) + b"\x7f"])
    sim._next = time.monotonic() + 3600  # quiet until the driver has the port open
    store = Store(tmp_path / "store.db")
    d = DlmsDriver("han", {"serial": {"port": sim.device}, "mode": "push", "framing": "apdu",
                           "meters": [{"id": "smarty", "system_title": b"SYSTEMID",
                                       "block_key": bytes.fromhex(e["key"]),
                                       "auth_key": bytes.fromhex(e["auth_key"])},
                                      {"id": "sim", "system_title": b"SIMPUSH1",
                                       "block_key": KEY}]}, store)
    try:
        d.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                d.meter_stats()["smarty"]["notifications"] >= 1
                and d.meter_stats()["sim"]["notifications"] >= 4):
            if d.state == "open" and sim.interval_s > 1000:
                sim.interval_s, sim._next = 0.05, time.monotonic() + 0.2
            time.sleep(0.05)
        d.stop()
        recs = [sr.record for sr in store.read_records(0, 100_000)]
    finally:
        store.close()
        sim.stop()
    got = {(r.meter_id, r.quantity): (r.mantissa, r.exponent, r.unit) for r in recs
           if isinstance(r, Reading)}
    assert got[("smarty", "1-0:1.8.0")] == (6545766, 0, "Wh")
    assert got[("sim", "1-0:32.7.0")] == (2301, -1, "V")
    assert d.meter_stats()["sim"]["notifications"] >= 4


def test_general_block_transfer_pushes_and_a_lost_block_over_a_pty(tmp_path):
    """L+G E450-style: each ciphered notification in GBT blocks of 30 bytes, one per HDLC
    frame; every 3rd transfer loses block 2 -> one meter.frame_error each, no readings
    from it, and the next transfer reads whole."""
    sim = start(key=KEY, interval_s=3600, gbt=30, drop_block_every=3)
    sim._next = time.monotonic() + 3600  # quiet until the driver has the port open
    store = Store(tmp_path / "store.db")
    d = DlmsDriver("han", {"serial": {"port": sim.device}, "mode": "push",
                           "meters": [{"id": "han", "block_key": KEY}]}, store)
    try:
        d.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(sim.pushed_at) < 9:
            if d.state == "open" and sim.interval_s > 1000:
                sim.pushed_at.clear()  # one push may have gone out before the port was open
                sim.interval_s, sim._next = 0.05, time.monotonic() + 0.2
            time.sleep(0.02)
        sim.interval_s, sim._next = 3600.0, time.monotonic() + 3600
        time.sleep(0.1)
        pushed = len(sim.pushed_at)
        while time.monotonic() < deadline and \
                _stats(d)["notifications"] + _stats(d)["frame_errors"] < pushed:
            time.sleep(0.05)
        d.stop()
        recs = [sr.record for sr in store.read_records(0, 100_000)]
    finally:
        store.close()
        sim.stop()
    lost = pushed // 3
    s = _stats(d)
    assert s["frame_errors"] == lost and s["notifications"] == pushed - lost
    volts = [r for r in recs if isinstance(r, Reading) and r.quantity == "1-0:32.7.0"]
    assert len(volts) == pushed - lost and {(r.mantissa, r.exponent) for r in volts} == {(2301, -1)}
    errors = [r for r in recs if isinstance(r, Event) and r.kind == "meter.frame_error"]
    assert errors and "lost" in errors[0].detail["reason"]


def test_dlms_in_mbus_frames_over_a_pty(tmp_path):
    """framing: mbus -- the Austrian Kaifa MA309 HAN port: ciphered notifications in M-Bus
    long frames, with garbage between them."""
    sim = start(key=KEY, interval_s=0.05, framing="mbus",
                hostile=[b"\x68\x05\x05\x68garbage", b"\x00" * 7])
    try:
        d, recs, alive = _run(tmp_path, sim, until=lambda d: _stats(d)["notifications"] >= 3,
                              options={"framing": "mbus"}, block_key=KEY)
    finally:
        sim.stop()
    assert alive and _stats(d)["notifications"] >= 3
    volts = [r for r in recs if isinstance(r, Reading) and r.quantity == "1-0:32.7.0"]
    assert volts and {(r.mantissa, r.exponent, r.unit) for r in volts} == {(2301, -1, "V")}

"""Head-end Verifier accounting, without a broker."""

from __future__ import annotations

import os

import cbor2

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import Event, Gap, Reading, StoredRecord
from gateway.wire.cbor import bstr_head
from gateway.wire.cose import COSE_PROTECTED, SIG1_PREFIX
from gateway.wire.envelope import encode_envelope
from gateway.headend.verifier import SeqRanges, Verifier, missing

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
GW = "gw-0001"
NOW = 1_700_000_000_000
TOPIC = f"meters/{GW}/up/data"


def reading(seq: int, value: int = 0) -> StoredRecord:
    return StoredRecord(seq, Reading(f"m{seq % 7}", "1-0:1.8.0", 1000 + seq + value, -3, "kWh",
                                     NOW - 900_000, NOW - 899_700))


def msg(seqs, *, gw: str = GW, epoch: str = "e1", sent: int = NOW, key=KEY, value: int = 0,
        extra: list[StoredRecord] | None = None) -> bytes:
    recs = [reading(s, value) for s in seqs] + (extra or [])
    recs.sort(key=lambda r: r.seq)
    return encode_envelope(gw, epoch, recs, sent, key)


def verifier(**kw) -> Verifier:
    return Verifier({GW: KEY.public_key()}, **kw)


def totals(v: Verifier) -> dict:
    s = v.summary()
    return {k: s[k] for k in ("accepted", "duplicates", "gaps", "gap_records", "replays",
                              "bad_signatures", "malformed", "conflicts", "messages",
                              "readings", "events")}


def test_accept_then_duplicate_then_replay() -> None:
    v = verifier()
    first = msg(range(1, 11))
    r = v.feed(TOPIC, first, NOW + 50)
    assert [x.seq for x in r.accepted] == list(range(1, 11)) and r.ok
    # QoS 1 redelivery shortly after: duplicates, not accepted again.
    r = v.feed(TOPIC, first, NOW + 2_000)
    assert (len(r.accepted), r.duplicates, r.replay) == (0, 10, False)
    # The same bytes an hour later: a replay, rejected, and not counted as duplicates.
    r = v.feed(TOPIC, first, NOW + 3_600_000)
    assert r.replay and not r.ok and r.duplicates == 0
    assert totals(v) == dict(accepted=10, duplicates=10, gaps=0, gap_records=0, replays=1,
                             bad_signatures=0, malformed=0, conflicts=0, messages=3,
                             readings=10, events=0)


def test_stale_message_with_new_seqs_is_accepted() -> None:
    """Messages queued by the broker while the head-end was away are old but legitimate."""
    v = verifier(replay_window_s=60)
    v.feed(TOPIC, msg(range(1, 6)), NOW)
    r = v.feed(TOPIC, msg(range(4, 9), sent=NOW + 1), NOW + 10 * 3_600_000)
    assert [x.seq for x in r.accepted] == [6, 7, 8] and r.duplicates == 2 and not r.replay


def test_replay_window_is_symmetric() -> None:
    v = verifier(replay_window_s=60)
    m = msg([1, 2])
    v.feed(TOPIC, m, NOW)
    assert not v.feed(TOPIC, m, NOW - 59_000).replay
    assert v.feed(TOPIC, m, NOW - 61_000).replay
    assert v.feed(TOPIC, msg([1, 2], sent=NOW + 120_000), NOW).replay


def test_conflict_is_counted_not_accepted() -> None:
    v = verifier()
    v.feed(TOPIC, msg([1, 2, 3]), NOW)
    r = v.feed(TOPIC, msg([2, 3, 4], value=5), NOW)
    assert [x.seq for x in r.accepted] == [4] and r.conflicts == 2 and r.duplicates == 0
    s = v.summary()
    assert (s["conflicts"], s["accepted"], s["gateways"][GW]["conflicts"]) == (2, 4, 2)


def test_gaps_and_gap_records() -> None:
    v = verifier()
    v.feed(TOPIC, msg(range(1, 11)), NOW)
    v.feed(TOPIC, msg(range(21, 31)), NOW)
    ep = v.summary()["gateways"][GW]["epochs"]["e1"]
    assert (ep["first_seq"], ep["last_seq"], ep["gaps"], ep["missing_ranges"]) == \
        (1, 30, 10, [[11, 20]])
    # The gateway's store evicted 11..18 and says so with a Gap record at seq 31.
    gap = StoredRecord(31, Gap(11, 18, 8, "store.full", NOW))
    r = v.feed(TOPIC, msg([], extra=[gap]), NOW)
    assert r.accepted == [gap]
    s = v.summary()
    assert (s["gaps"], s["gap_records"], s["accepted"]) == (2, 1, 21)
    assert s["gateways"][GW]["epochs"]["e1"]["missing_ranges"] == [[19, 20]]
    # The late arrival of 19..20 closes the books.
    v.feed(TOPIC, msg([19, 20]), NOW)
    assert v.summary()["gaps"] == 0


def test_out_of_order_arrival_and_missing_from_one() -> None:
    v = verifier()
    v.feed(TOPIC, msg(range(11, 21)), NOW)
    assert v.summary()["gateways"][GW]["epochs"]["e1"]["missing_ranges"] == [[1, 10]]
    v.feed(TOPIC, msg(range(1, 11)), NOW)
    s = v.summary()
    assert (s["gaps"], s["accepted"], s["duplicates"]) == (0, 20, 0)


def test_missing_ranges_are_capped_at_20() -> None:
    v = verifier()
    v.feed(TOPIC, msg(range(2, 100, 2)), NOW)  # every odd seq missing
    ep = v.summary()["gateways"][GW]["epochs"]["e1"]
    assert ep["gaps"] == 49 and len(ep["missing_ranges"]) == 20
    assert ep["missing_ranges"][:2] == [[1, 1], [3, 3]]


def test_two_epochs_are_separate_books() -> None:
    v = verifier()
    v.feed(TOPIC, msg(range(1, 6), epoch="e1"), NOW)
    v.feed(TOPIC, msg(range(1, 4), epoch="e2"), NOW)  # store reset: numbering restarts
    v.feed(TOPIC, msg([3, 4, 5], epoch="e2"), NOW)
    v.feed(TOPIC, msg([7], epoch="e1"), NOW)
    s = v.summary()
    g = s["gateways"][GW]
    assert (s["accepted"], s["duplicates"], s["gaps"]) == (11, 1, 1)
    assert g["epochs"]["e1"] == {"first_seq": 1, "last_seq": 7, "gaps": 1,
                                 "missing_ranges": [[6, 6]]}
    assert g["epochs"]["e2"] == {"first_seq": 1, "last_seq": 5, "gaps": 0,
                                 "missing_ranges": []}
    assert (g["accepted"], g["gaps"], g["messages"]) == (11, 1, 4)


def test_kinds_are_counted() -> None:
    v = verifier()
    ev = StoredRecord(3, Event("meter.crc_error", NOW, "bus0", "m1", "warning", {"n": 1}))
    gap = StoredRecord(4, Gap(100, 100, 1, "x", NOW))  # covers nothing below max seq: harmless
    v.feed(TOPIC, msg([1, 2], extra=[ev, gap]), NOW)
    s = v.summary()
    assert (s["readings"], s["events"], s["gap_records"], s["accepted"], s["gaps"]) == \
        (2, 1, 1, 4, 0)


def test_bad_signature_unknown_signer_and_random_bytes() -> None:
    v = verifier()
    v.feed(TOPIC, msg([1]), NOW)
    r = v.feed(TOPIC, msg([2], key=OTHER), NOW)
    assert r.bad_signature and not r.malformed and not r.accepted
    r = v.feed("meters/gw-evil/up/data", msg([1], gw="gw-evil"), NOW)
    assert r.bad_signature and r.gateway_id == "gw-evil"
    r = v.feed(TOPIC, os.urandom(200), NOW)
    assert r.malformed and not r.bad_signature and not r.ok
    s = v.summary()
    assert (s["bad_signatures"], s["malformed"], s["messages"], s["accepted"]) == (2, 1, 4, 1)
    assert list(s["gateways"]) == [GW]  # a forger cannot create gateway entries
    assert s["gateways"][GW]["bad_signatures"] == 1
    assert s["gateways"][GW]["epochs"]["e1"]["last_seq"] == 1


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_random_payloads_never_raise(data: bytes) -> None:
    v = verifier()
    r = v.feed(TOPIC, data, NOW)
    assert r.malformed and not r.bad_signature
    assert v.summary()["malformed"] == 1


def signed_payload(payload: bytes, key=KEY, gw: str = GW) -> bytes:
    """A COSE_Sign1 whose signature verifies over whatever payload bytes we give it."""
    sig = key.sign(SIG1_PREFIX + bstr_head(len(payload)) + payload)
    return cbor2.dumps(cbor2.CBORTag(18, [COSE_PROTECTED, {4: gw.encode()}, payload, sig]))


def test_gateway_signed_corrupt_body_is_malformed_not_a_forgery() -> None:
    """Issue 15 item 10: the gateway signed it, the body is broken -> `malformed` only, so
    nobody goes hunting for a forger."""
    v = verifier()
    good = cbor2.loads(msg([1, 2]))
    payload = good.value[2]
    for body in (payload[:-3], b"\xff\x00garbage", cbor2.dumps([3, GW, "e1", NOW, 1, 1, 1, [[0, 0, b"\x01"]]])):
        r = v.feed(TOPIC, signed_payload(body), NOW)
        assert r.malformed and not r.bad_signature and not r.accepted, r
    s = v.summary()
    assert (s["malformed"], s["bad_signatures"]) == (3, 0)
    assert s["gateways"][GW]["malformed"] == 3 and s["gateways"][GW]["bad_signatures"] == 0


def test_wildcard_trust_and_topic_mismatch() -> None:
    v = Verifier({"*": KEY.public_key()})
    r = v.feed("meters/gw-b/up/data", msg([1], gw="gw-a"), NOW)
    assert r.accepted and r.gateway_id == "gw-a" and r.topic_mismatch
    assert v.summary()["gateways"]["gw-a"]["topic_mismatches"] == 1


def test_on_record_hook_sees_each_accepted_record_once() -> None:
    seen = []
    v = Verifier({GW: KEY.public_key()}, on_record=lambda g, e, sr: seen.append((g, e, sr.seq)))
    m = msg([1, 2, 3])
    v.feed(TOPIC, m, NOW)
    v.feed(TOPIC, m, NOW)
    assert seen == [(GW, "e1", 1), (GW, "e1", 2), (GW, "e1", 3)]


def test_digest_window_bounds_conflict_detection() -> None:
    v = verifier(digest_window=4)
    v.feed(TOPIC, msg([1, 2, 4, 5, 6, 7, 8, 9, 10]), NOW)
    r = v.feed(TOPIC, msg([2, 9], value=1), NOW)  # 2 has left the ring, 9 has not
    assert (r.duplicates, r.conflicts) == (1, 1)
    assert v.feed(TOPIC, msg([3]), NOW).accepted  # late old seq: shares 7's slot ...
    assert v.feed(TOPIC, msg([7], value=1), NOW).conflicts == 1  # ... but must not clobber it
    assert v.feed(TOPIC, msg([7]), NOW).duplicates == 1


# --------------------------------------------------------------------------- models


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(1, 200), st.integers(0, 6)), max_size=40))
def test_seq_ranges_match_a_set(adds: list[tuple[int, int]]) -> None:
    r, model = SeqRanges(), set()
    for a, n in adds:
        r.add(a, a + n)
        model.update(range(a, a + n + 1))
    assert all((s in r) == (s in model) for s in range(0, 210))
    assert all(r.overlaps(a, a + k) == bool(model & set(range(a, a + k + 1)))
               for a in range(0, 210, 7) for k in (0, 3, 20))
    pairs = list(r)
    assert all(b >= a for a, b in pairs)
    assert all(pairs[i][1] + 1 < pairs[i + 1][0] for i in range(len(pairs) - 1))  # disjoint
    if model:
        hi = max(model)
        n, ranges = missing(hi, r)
        assert n == len(set(range(1, hi + 1)) - model)
        flat = {s for a, b in ranges for s in range(a, b + 1)}
        assert flat <= set(range(1, hi + 1)) - model


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sets(st.integers(1, 40), min_size=1, max_size=6),
                          st.integers(0, 1)), min_size=1, max_size=12),
       st.sampled_from([2, 8, 1000]))
def test_verifier_matches_a_simple_model(batches, window: int) -> None:
    """Accepted/duplicate/conflict/gap figures equal those of a naive set-and-dict model.

    Variant 1 content is a conflict if the seq was first accepted with variant 0 and vice
    versa; the naive model keeps every digest, so compare only with a ring large enough.
    """
    v = verifier(digest_window=window)
    first: dict[int, int] = {}
    acc = dup = conf = 0
    for seqs, variant in batches:
        r = v.feed(TOPIC, msg(sorted(seqs), value=variant), NOW)
        for s in sorted(seqs):
            if s not in first:
                first[s] = variant
                acc += 1
            elif first[s] == variant:
                dup += 1
            else:
                conf += 1
        assert not r.replay
    s = v.summary()
    hi = max(first)
    assert s["accepted"] == acc
    assert s["gaps"] == hi - len(first)
    assert s["duplicates"] + s["conflicts"] == dup + conf
    if window >= 40:
        assert (s["duplicates"], s["conflicts"]) == (dup, conf)
    else:
        assert s["conflicts"] <= conf


def test_summary_shape() -> None:
    v = verifier()
    v.feed(TOPIC, msg([1]), NOW)
    s = v.summary()
    keys = {"accepted", "duplicates", "gaps", "gap_records", "replays", "bad_signatures",
            "malformed", "conflicts", "messages", "readings", "events"}
    assert keys <= set(s) and keys <= set(s["gateways"][GW])
    assert set(s["gateways"][GW]["epochs"]["e1"]) == {"first_seq", "last_seq", "gaps",
                                                      "missing_ranges"}


def test_verifier_is_fast_enough_for_a_bench_run() -> None:
    """Not a benchmark, a guard: 100 x 100 readings must not take seconds."""
    import time
    v = verifier()
    msgs = [msg(range(1 + 100 * i, 101 + 100 * i)) for i in range(100)]
    t = time.perf_counter()
    for m in msgs:
        v.feed(TOPIC, m, NOW)
    assert time.perf_counter() - t < 5
    assert v.summary()["accepted"] == 10_000




def test_live_head_end_shows_whether_a_status_is_signed(tmp_path, pki, broker,
                                                        mqtt_client_factory) -> None:
    """A real gateway's retained birth verifies in the live head-end; a status without a
    signature on the same topic (published with gw-0001's own certificate, which the ACL
    allows) is shown as NOT VERIFIED, never as the gateway's word."""
    import json as _json

    from tests.gwproc import start_gateway, start_headend, write_config
    from tests.waiting import wait_for

    cfg = write_config(tmp_path, pki, broker.port, drivers=[
        {"type": "simulated", "name": "sim", "meters": 1, "interval_s": 60}])
    gw = start_gateway(cfg, tmp_path / "gw.log")
    assert gw.wait_for_log("uplink: connected", 30), gw.text()[-2000:]
    assert gw.terminate() == 0  # its signed shutdown status stays retained
    head = start_headend(pki, broker.port, tmp_path / "he.log", "--until-idle", "3")
    assert wait_for(lambda: "[signed]" in head.text(), timeout=30), head.text()[-2000:]
    forger = mqtt_client_factory("gateway")  # gw-0001's own certificate: the ACL allows it
    forger.publish("meters/gw-0001/status", _json.dumps(
        {"state": "online", "gateway": "gw-0001", "firmware": "evil"}), qos=1).wait_for_publish(10)
    head.stdout(60)
    lines = [l for l in head.text().splitlines() if l.startswith("status meters/gw-0001/status")]
    assert any("(retained) [signed]" in l and '"offline"' in l for l in lines), lines
    assert any("[NOT VERIFIED" in l and "not signed" in l for l in lines), lines

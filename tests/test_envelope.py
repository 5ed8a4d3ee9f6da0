"""Envelope: exact round trip, tamper evidence, only EnvelopeError on bad input, size budget."""

from __future__ import annotations

import random
import zlib

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.model import Diag, Event, Gap, Reading, StoredRecord
from gateway.wire.cose import COSE_PROTECTED
from gateway.wire.envelope import (
    Envelope,
    EnvelopeError,
    decode_envelope,
    encode_envelope,
    peek_gateway_id,
)
from gateway.wire.errors import BadSignature, MalformedEnvelope, UnknownSigner

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
GW = "gw-0001"
TRUSTED = {GW: KEY.public_key()}
T0 = 1_700_000_100_000 // 900_000 * 900_000  # a quarter-hour boundary


def register_batch(n: int, first_seq: int = 1001, seed: int = 1) -> list[StoredRecord]:
    """n 15-minute register readings from distinct meters, as the simulator produces."""
    rnd = random.Random(seed)
    return [StoredRecord(first_seq + i, Reading(
        f"sim-{i:05d}", "1-0:1.8.0", rnd.randint(10**6, 10**9), -3, "kWh",
        T0, T0 + rnd.randint(50, 900), (), "sim")) for i in range(n)]


def mixed_batch() -> list[StoredRecord]:
    return [
        StoredRecord(7, Reading("m1", "1-0:1.8.0", 123456, -3, "kWh", T0, T0 + 300, (), "bus0")),
        StoredRecord(8, Reading("m1", "1-0:2.8.0", 5, 0, "kWh", None, T0 + 310,
                                ("estimated", "clock_unsynced"), "bus0")),
        StoredRecord(9, Gap(3, 5, 3, "store.full", T0 + 400)),
        StoredRecord(12, Event("meter.crc_error", T0 - 5, "bus0", "m1", "warning",
                               {"count": 3, "frames": [1, 2], "raw": b"\x00\xff", "ok": None})),
        StoredRecord(13, Event("uplink.connected", T0 + 9, "uplink", None)),
        StoredRecord(14, Reading("m2", "1-0:1.8.0", -(10**30), -3, "kWh", T0, T0 - 2, (), "bus0")),
        StoredRecord(15, Diag(T0 + 20, "gateway", None, {"uptime_s": 12, "load": [0.5, 0.25]})),
        StoredRecord(17, Diag(T0 + 21, "meter", "m1", {"reads_ok": 3, "rssi": {"last": -71}})),
    ]


# --------------------------------------------------------------------------- strategies

texts = st.text(max_size=12)
ints = st.integers(min_value=-(2**70), max_value=2**70)
times = st.integers(min_value=0, max_value=2**45)
json_like = st.recursive(
    st.none() | st.booleans() | ints | texts | st.binary(max_size=8)
    | st.floats(allow_nan=False),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
    max_leaves=12)

readings = st.builds(
    Reading, st.sampled_from(["m1", "m2", "sim-00042"]) | texts,
    st.sampled_from(["1-0:1.8.0", "1-0:2.8.0"]) | texts, ints,
    st.integers(min_value=-30, max_value=30), st.sampled_from(["kWh", "W"]) | texts,
    st.none() | times, times, st.lists(texts, max_size=3).map(tuple), texts)
events = st.builds(
    Event, texts, times, texts, st.none() | texts, st.sampled_from(["info", "error"]) | texts,
    st.dictionaries(texts, json_like, max_size=5))
gaps = st.builds(Gap, st.integers(1, 2**40), st.integers(1, 2**40), st.integers(0, 2**40),
                 texts, times)
diags = st.builds(Diag, times, st.sampled_from(["gateway", "meter"]) | texts,
                  st.none() | st.sampled_from(["m1", "m2"]) | texts,
                  st.dictionaries(texts, json_like, max_size=5))


@st.composite
def stored_batches(draw: st.DrawFn) -> list[StoredRecord]:
    recs = draw(st.lists(readings | events | gaps | diags, min_size=1, max_size=30))
    seq = draw(st.integers(min_value=1, max_value=2**40))
    out = []
    for r in recs:
        out.append(StoredRecord(seq, r))
        seq += draw(st.sampled_from([1, 1, 1, 2, 1000]))
    return out


# --------------------------------------------------------------------------- round trip


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(stored_batches(), times, st.booleans(), texts)
def test_round_trip_any_records(recs: list[StoredRecord], sent: int, compress: bool,
                                epoch: str) -> None:
    data = encode_envelope(GW, epoch, recs, sent, KEY, compress=compress)
    env = decode_envelope(data, TRUSTED)
    assert env == Envelope(GW, epoch, recs[0].seq, recs[-1].seq, sent, recs)
    assert peek_gateway_id(data) == GW


def test_round_trip_mixed_kinds_both_body_forms() -> None:
    recs = mixed_batch()
    for compress in (False, True):
        env = decode_envelope(encode_envelope(GW, "ep", recs, T0 + 10_000, KEY,
                                              compress=compress), TRUSTED)
        assert env.records == recs
        assert (env.first_seq, env.last_seq) == (7, 17)


def test_compressed_body_is_used_when_smaller() -> None:
    recs = register_batch(100)
    raw = encode_envelope(GW, "ep", recs, T0, KEY, compress=False)
    packed = encode_envelope(GW, "ep", recs, T0, KEY, compress=True)
    assert len(packed) < len(raw)
    assert decode_envelope(packed, TRUSTED).records == decode_envelope(raw, TRUSTED).records


def test_encode_rejects_bad_input() -> None:
    r = register_batch(2)
    with pytest.raises(ValueError):
        encode_envelope(GW, "ep", [], T0, KEY)
    with pytest.raises(ValueError):
        encode_envelope(GW, "ep", [r[1], r[0]], T0, KEY)
    with pytest.raises(ValueError):
        encode_envelope(GW, "ep", [StoredRecord(0, r[0].record)], T0, KEY)
    with pytest.raises(TypeError):
        encode_envelope(GW, "ep", [StoredRecord(1, Reading(
            "m", "q", 1.5, 0, "kWh", None, T0))], T0, KEY)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- size budget


def test_bytes_per_reading_budget() -> None:
    """Cellular backhaul is paid by the byte: <= 30 B per 15-min register reading."""
    recs = register_batch(100)
    data = encode_envelope(GW, "e1a2b3c4", recs, T0 + 60_000, KEY)
    assert len(data) / len(recs) <= 30
    uncompressed = encode_envelope(GW, "e1a2b3c4", recs, T0 + 60_000, KEY, compress=False)
    assert len(uncompressed) / len(recs) <= 30


# --------------------------------------------------------------------------- authenticity


def assert_tamper_evident(data: bytes) -> None:
    """Any flipped bit pattern in any byte, any truncation, any trailing byte: refused."""
    for i in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(EnvelopeError):
                decode_envelope(bytes(bad), TRUSTED)
    for n in range(len(data)):
        with pytest.raises(EnvelopeError):
            decode_envelope(data[:n], TRUSTED)
    with pytest.raises(MalformedEnvelope):
        decode_envelope(data + b"\x00", TRUSTED)


def test_tampering_any_byte_is_detected() -> None:
    for compress in (False, True):
        assert_tamper_evident(encode_envelope(GW, "ep", mixed_batch(), T0, KEY,
                                              compress=compress))


def test_wrong_key_is_bad_signature() -> None:
    data = encode_envelope(GW, "ep", mixed_batch(), T0, OTHER)
    with pytest.raises(BadSignature):
        decode_envelope(data, TRUSTED)


def test_unknown_kid_and_wildcard() -> None:
    data = encode_envelope("gw-9999", "ep", mixed_batch(), T0, KEY)
    with pytest.raises(UnknownSigner):
        decode_envelope(data, TRUSTED)
    assert decode_envelope(data, {"*": KEY.public_key()}).gateway_id == "gw-9999"
    with pytest.raises(BadSignature):
        decode_envelope(data, {"*": OTHER.public_key()})


def test_kid_must_match_signed_gateway_id() -> None:
    """The kid is unprotected: swapping it must not let gw-a's messages pass as gw-b's."""
    data = encode_envelope("gw-a", "ep", mixed_batch(), T0, KEY)
    tag = cbor2.loads(data)
    prot, _, payload, sig = tag.value
    forged = cbor2.dumps(cbor2.CBORTag(18, [prot, {4: b"gw-b"}, payload, sig]))
    pub = KEY.public_key()
    with pytest.raises(BadSignature):
        decode_envelope(forged, {"gw-a": pub, "gw-b": pub})
    assert peek_gateway_id(forged) == "gw-b"


def test_other_algorithm_is_rejected() -> None:
    data = encode_envelope(GW, "ep", mixed_batch(), T0, KEY)
    prot, unprot, payload, sig = cbor2.loads(data).value
    other = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -7}), dict(unprot), payload, sig]))
    with pytest.raises(MalformedEnvelope):
        decode_envelope(other, TRUSTED)


# --------------------------------------------------------------------------- robustness


def _sign_payload(payload: bytes, kid: str = GW) -> bytes:
    """A correctly signed COSE_Sign1 around an arbitrary payload (to fuzz past the signature)."""
    sig = KEY.sign(cbor2.dumps(["Signature1", COSE_PROTECTED, b"", payload]))
    return cbor2.dumps(cbor2.CBORTag(18, [COSE_PROTECTED, {4: kid.encode()}, payload, sig]))


def test_sig_structure_matches_rfc9052() -> None:
    payload = b"hello"
    assert _sign_payload(payload)  # the helper signs the textbook Sig_structure ...
    with pytest.raises(MalformedEnvelope):  # ... which verifies: only the payload is bad
        decode_envelope(_sign_payload(payload), TRUSTED)


def _only_envelope_errors(data: bytes, trusted: dict = TRUSTED) -> None:
    try:
        decode_envelope(data, trusted)
    except EnvelopeError:
        pass
    peek_gateway_id(data)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_envelope_errors(data: bytes) -> None:
    _only_envelope_errors(data)
    _only_envelope_errors(b"\xd2\x84" + data)


cbor_values = st.recursive(
    st.none() | st.booleans() | ints | texts | st.binary(max_size=8),
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(ints | texts, kids, max_size=4),
    max_leaves=30)


@settings(max_examples=400)
@given(cbor_values, cbor_values, cbor_values, cbor_values)
def test_random_cose_structures_raise_only_envelope_errors(a, b, c, d) -> None:
    _only_envelope_errors(cbor2.dumps(cbor2.CBORTag(18, [a, b, c, d])))
    _only_envelope_errors(cbor2.dumps(cbor2.CBORTag(18, [COSE_PROTECTED, {4: b"gw-0001"},
                                                         cbor2.dumps(a), b"\x00" * 64])))


@settings(max_examples=400)
@given(st.lists(cbor_values, max_size=40), st.lists(cbor_values, max_size=3),
       st.integers(-5, 5), st.integers(-5, 5), st.booleans())
def test_signed_garbage_payloads_raise_only_envelope_errors(items, profiles, first, count,
                                                            compress) -> None:
    """Even a trusted key signing nonsense must not crash the decoder."""
    body = [profiles or [["q", 0, "u", "b", []]], [0, "m", 1, 0, 0] + items]
    if compress:
        body = zlib.compress(cbor2.dumps(body))[2:-4]  # raw deflate
    for p in ([1, GW, "ep", 0, first, first + count, count, body], [1, GW], body, items):
        with pytest.raises(EnvelopeError):
            decode_envelope(_sign_payload(cbor2.dumps(p)), TRUSTED)


@settings(max_examples=200)
@given(st.data())
def test_mutated_envelopes_raise_only_envelope_errors(data: st.DataObject) -> None:
    good = encode_envelope(GW, "ep", mixed_batch(), T0, KEY, compress=data.draw(st.booleans()))
    bad = bytearray(good)
    for _ in range(data.draw(st.integers(1, 8))):
        bad[data.draw(st.integers(0, len(bad) - 1))] = data.draw(st.integers(0, 255))
    _only_envelope_errors(bytes(bad), {"*": KEY.public_key()})

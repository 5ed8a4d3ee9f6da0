"""Envelope format 2 (pre-encoded chunk bodies sealed together): exact round trip, the same
signature and tamper evidence as format 1, only EnvelopeError on bad input, size budget."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.model import KIND_OF, StoredRecord
from gateway.uplink.envelope import (
    FORMAT_VERSION_CHUNKED,
    EnvelopeError,
    MalformedEnvelope,
    decode_chunk,
    decode_envelope,
    encode_body,
    encode_readings_body,
    first_ts,
    seal,
)
from tests.test_envelope import (
    GW, KEY, OTHER, T0, TRUSTED, _only_envelope_errors, _sign_payload, cbor_values, mixed_batch,
    register_batch, stored_batches, times)
from tests.test_envelope import readings as readings_st


def rows_of(recs: list[StoredRecord]) -> list[tuple[int, int, object]]:
    return [(sr.seq, KIND_OF[type(sr.record)], sr.record.to_obj()) for sr in recs]


def make_chunk(recs: list[StoredRecord], base: int | None = None, compress: bool = True):
    rows = rows_of(recs)
    if base is None:
        base = first_ts(rows[0][1], rows[0][2])
    body = encode_body(rows, base, compress=compress)
    return (recs[0].seq, recs[-1].seq, len(recs), base, body)


def split(recs: list[StoredRecord], sizes: list[int]) -> list[list[StoredRecord]]:
    out, i = [], 0
    for n in sizes:
        if i >= len(recs):
            break
        out.append(recs[i:i + n])
        i += n
    if i < len(recs):
        out.append(recs[i:])
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(stored_batches(), times, st.booleans(), st.lists(st.integers(1, 7), max_size=8),
       st.lists(times, min_size=10, max_size=10))
def test_round_trip_any_chunking(recs, sent, compress, sizes, bases) -> None:
    parts = split(recs, sizes)
    chunks = [make_chunk(p, bases[i % 10], compress) for i, p in enumerate(parts)]
    env = decode_envelope(seal(GW, "ep", sent, chunks, KEY), TRUSTED)
    assert env.records == recs
    assert (env.first_seq, env.last_seq, env.sent_ms) == (recs[0].seq, recs[-1].seq, sent)
    for (first, _, _, base, body), p in zip(chunks, parts):
        assert decode_chunk(body, first, base) == p  # what the store reads back


def test_register_chunks_are_small_and_sealing_does_not_reencode() -> None:
    recs = register_batch(192)
    chunks = [make_chunk(p) for p in split(recs, [64, 64, 64])]
    data = seal(GW, "e1a2b3c4", T0 + 60_000, chunks, KEY)
    assert len(data) / len(recs) <= 30
    for _, _, _, _, body in chunks:
        assert body in data  # the stored bytes travel as they are
    raw = [make_chunk(p, compress=False) for p in split(recs, [64, 64, 64])]
    assert len(seal(GW, "e1a2b3c4", T0 + 60_000, raw, KEY)) / len(recs) <= 30
    assert cbor2.loads(cbor2.loads(data).value[2])[0] == FORMAT_VERSION_CHUNKED


def test_chunks_may_skip_seqs_but_not_go_back() -> None:
    recs = mixed_batch()  # seqs 7, 8, 9, 12, 13, 14, 15, 17
    chunks = [make_chunk(recs[:3]), make_chunk(recs[3:5]), make_chunk(recs[5:])]
    assert decode_envelope(seal(GW, "ep", T0, chunks, KEY), TRUSTED).records == recs
    with pytest.raises(ValueError):
        seal(GW, "ep", T0, [chunks[1], chunks[0]], KEY)
    with pytest.raises(ValueError):
        seal(GW, "ep", T0, [], KEY)


def test_tampering_any_byte_is_detected() -> None:
    recs = mixed_batch()
    for compress in (False, True):
        data = seal(GW, "ep", T0, [make_chunk(recs[:4], compress=compress),
                                   make_chunk(recs[4:], compress=compress)], KEY)
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


def test_wrong_key_and_header_mismatches() -> None:
    recs = mixed_batch()
    with pytest.raises(EnvelopeError):
        decode_envelope(seal(GW, "ep", T0, [make_chunk(recs)], OTHER), TRUSTED)
    body = make_chunk(recs)[4]
    good = [2, GW, "ep", T0, 7, 17, 8, [[0, 0, cbor2.loads(body)]]]
    assert decode_envelope(_sign_payload(cbor2.dumps(good)), TRUSTED).records == recs
    for i, v in ((4, 6), (5, 16), (6, 9), (7, []), (7, [[0, 0]]), (7, [[-1, 0, 0]]),
                 (7, [[0, 0, cbor2.loads(body)], [0, 0, cbor2.loads(body)]])):
        p = list(good)
        p[i] = v
        with pytest.raises(MalformedEnvelope):
            decode_envelope(_sign_payload(cbor2.dumps(p)), TRUSTED)


@settings(max_examples=300)
@given(st.lists(st.lists(cbor_values, max_size=4), max_size=4), cbor_values, cbor_values)
def test_signed_garbage_chunk_lists_raise_only_envelope_errors(chunks, first, count) -> None:
    p = [2, GW, "ep", T0, first, count, count, chunks]
    _only_envelope_errors(_sign_payload(cbor2.dumps(p)))


@settings(max_examples=200)
@given(st.data())
def test_mutated_v2_envelopes_raise_only_envelope_errors(data: st.DataObject) -> None:
    recs = mixed_batch()
    compress = data.draw(st.booleans())
    good = seal(GW, "ep", T0, [make_chunk(recs[:2], compress=compress),
                               make_chunk(recs[2:], compress=compress)], KEY)
    bad = bytearray(good)
    for _ in range(data.draw(st.integers(1, 8))):
        bad[data.draw(st.integers(0, len(bad) - 1))] = data.draw(st.integers(0, 255))
    _only_envelope_errors(bytes(bad), {"*": KEY.public_key()})


@settings(max_examples=300)
@given(st.lists(readings_st, min_size=1, max_size=40), times, st.booleans(), st.booleans())
def test_readings_fast_path_makes_the_same_bytes(recs, base, compress, as_tuples) -> None:
    objs = [r.to_obj() for r in recs]
    if as_tuples:  # the store hands over attrgetter tuples (quality stays a tuple)
        objs = [tuple(o[:7]) + (tuple(o[7]), o[8]) for o in objs]
    rows = [(q, 0, o) for q, o in enumerate(objs, 5)]
    assert encode_readings_body(objs, base, compress=compress) == \
        encode_body(rows, base, compress=compress)

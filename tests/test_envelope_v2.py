"""Envelope formats 2 and 3 (pre-encoded chunk bodies sealed together; 3 may carry zstd
bodies): exact round trip, the same signature and tamper evidence as format 1, only
EnvelopeError on bad input, size budget."""

from __future__ import annotations

import zlib

import cbor2
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.model import KIND_OF, StoredRecord
from gateway.wire.body import ZSTD_MAGIC, decode_chunk, encode_body, encode_readings, first_ts
from gateway.wire.envelope import (
    FORMAT_VERSION_CHUNKED,
    FORMAT_VERSION_CHUNKED_DEFLATE,
    EnvelopeError,
    decode_envelope,
    seal,
)
from gateway.wire.errors import MalformedEnvelope
from tests.test_envelope import (
    GW, KEY, OTHER, T0, TRUSTED, _only_envelope_errors, _sign_payload, assert_tamper_evident,
    cbor_values, mixed_batch, register_batch, stored_batches, times)
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
        assert_tamper_evident(seal(GW, "ep", T0, [make_chunk(recs[:4], compress=compress),
                                                  make_chunk(recs[4:], compress=compress)],
                                   KEY))


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
@given(st.lists(readings_st, min_size=1, max_size=40), times, st.booleans())
def test_readings_fast_path_makes_the_same_bytes(recs, base, compress) -> None:
    rows = [(q, 0, r.to_obj()) for q, r in enumerate(recs, 5)]
    assert encode_readings(recs, base, compress=compress) == \
        encode_body(rows, base, compress=compress)


def test_readings_fast_path_on_a_bus_poll_and_its_refusals() -> None:
    recs = [sr.record for sr in register_batch(64)]
    base = recs[0].meter_ts_ms
    body = encode_readings(recs, base)
    assert cbor2.loads(body)[:4] == ZSTD_MAGIC  # a bus poll compresses, and with zstd
    assert decode_chunk(body, 1, base) == [StoredRecord(q, r) for q, r in enumerate(recs, 1)]
    bad = [recs[0], type(recs[0])(**{**_fields(recs[1]), "mantissa": True})]
    with pytest.raises(TypeError):  # bool is not an exact int: the general path decides
        encode_readings(bad, base)
    with pytest.raises(ValueError):
        encode_readings([], base)


def _fields(r):
    return {f: getattr(r, f) for f in r.__slots__}


def _chunk_with_body(recs: list[StoredRecord], body: bytes):
    base = first_ts(0, recs[0].record.to_obj())
    return (recs[0].seq, recs[-1].seq, len(recs), base, body)


def test_format_2_deflate_chunks_still_decode() -> None:
    recs = register_batch(64)
    rows = rows_of(recs)
    base = first_ts(0, rows[0][2])
    raw = encode_body(rows, base, compress=False)
    deflated = zlib.compress(raw, 1, -15)
    body = cbor2.dumps(deflated)
    data = seal(GW, "ep", T0, [_chunk_with_body(recs, body)], KEY)
    assert decode_envelope(data, TRUSTED).records == recs  # v3 header, DEFLATE body (old store)
    payload = cbor2.loads(cbor2.loads(data).value[2])
    payload[0] = FORMAT_VERSION_CHUNKED_DEFLATE
    assert decode_envelope(_sign_payload(cbor2.dumps(payload)), TRUSTED).records == recs


def test_bad_zstd_bodies_are_malformed_envelopes() -> None:
    recs = register_batch(64)
    rows = rows_of(recs)
    base = first_ts(0, rows[0][2])
    raw = encode_body(rows, base, compress=False)
    good = zstandard.ZstdCompressor(level=1).compress(raw)
    no_size = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(raw)
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\x00" * (17 * 1024 * 1024))
    assert decode_chunk(cbor2.dumps(good), recs[0].seq, base) == recs
    for frame in (good + b"\x00", good[:-2], no_size, bomb, ZSTD_MAGIC + b"\x00" * 8,
                  good[:4] + bytes([good[4] ^ 0xFF]) + good[5:]):
        data = seal(GW, "ep", T0, [_chunk_with_body(recs, cbor2.dumps(frame))], KEY)
        with pytest.raises(MalformedEnvelope):
            decode_envelope(data, TRUSTED)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_random_zstd_looking_bodies_raise_only_envelope_errors(tail) -> None:
    recs = register_batch(2)
    data = seal(GW, "ep", T0, [_chunk_with_body(recs, cbor2.dumps(ZSTD_MAGIC + tail))], KEY)
    _only_envelope_errors(data, TRUSTED)


def test_without_zstandard_bodies_are_deflate_and_zstd_bodies_are_refused_clearly(
        monkeypatch) -> None:
    """An OTA release on a venv made before zstandard was a dependency keeps working."""
    import gateway.wire.body as envmod
    recs = register_batch(64)
    zstd_body = make_chunk(recs)[4]
    assert cbor2.loads(zstd_body).startswith(ZSTD_MAGIC)
    monkeypatch.setattr(envmod, "zstandard", None)
    assert envmod.body_compression() == "deflate"
    chunk = make_chunk(recs)
    assert not cbor2.loads(chunk[4]).startswith(ZSTD_MAGIC)
    assert decode_envelope(seal(GW, "ep", T0, [chunk], KEY), TRUSTED).records == recs
    with pytest.raises(MalformedEnvelope, match="zstandard package is not installed"):
        decode_envelope(seal(GW, "ep", T0, [(*chunk[:4], zstd_body)], KEY), TRUSTED)

"""HDLC type 3 framing: byte-exact public vectors, frame-by-length, stream resync, fuzzing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from gateway.protocols.hdlc import (NEED_DATA, Address, HdlcCrcError, HdlcDecoder, HdlcError,
                                    HdlcFrame, Reassembler, crc16_x25)

VECTORS = [v for v in json.loads((Path(__file__).parent / "vectors" / "dlms.json").read_text())
           ["vectors"] if v["protocol"] == "dlms_hdlc"]


def test_crc16_x25_check_value():
    assert crc16_x25(b"123456789") == 0x906E  # the catalogue check value


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v["name"][:40])
def test_vector_frames_parse_and_reserialize_byte_exact(v):
    raw = bytes.fromhex(v["hex"])
    frame, rest = HdlcFrame.deserialize(raw)
    assert rest == b""
    assert frame.serialize() == raw
    assert frame.apdu[0] == 0x0F  # data-notification
    assert len(raw) == (((raw[1] & 7) << 8) | raw[2]) + 2


def test_kamstrup_addresses_and_control():
    frame, _ = HdlcFrame.deserialize(bytes.fromhex(VECTORS[0]["hex"]))
    assert frame.dest == Address(21) and frame.src == Address(16)
    assert frame.kind == "UI" and not frame.segmented


def test_flag_inside_payload_is_framed_by_length():
    raw = bytes.fromhex(VECTORS[1]["hex"])
    assert 0x7E in raw[1:-1]
    dec = HdlcDecoder()
    for b in raw:  # one byte at a time, as a slow UART delivers it
        dec.receive_data(bytes([b]))
    frames = []
    while (ev := dec.next_event()) is not NEED_DATA:
        frames.append(ev)
    assert [f.serialize() for f in frames] == [raw]
    assert dec.stats.crc_errors == 0 and dec.stats.format_errors == 0


def test_stream_resyncs_after_garbage_and_counts_crc_errors():
    a, b = (bytes.fromhex(v["hex"]) for v in VECTORS)
    bad = bytearray(a)
    bad[20] ^= 0x01
    dec = HdlcDecoder()
    dec.receive_data(b"\x00\xff garbage" + bytes(bad) + a + b + a[1:])  # shared flag at the end
    out = []
    while (ev := dec.next_event()) is not NEED_DATA:
        out.append(ev.serialize())
    assert out == [a, b, a]
    assert dec.stats.crc_errors >= 1
    assert dec.stats.garbage_bytes > 0


def test_crc_error_raised_by_deserialize():
    raw = bytearray(bytes.fromhex(VECTORS[0]["hex"]))
    raw[-3] ^= 0xFF
    with pytest.raises(HdlcCrcError):
        HdlcFrame.deserialize(bytes(raw))


def test_reassembler_joins_segments_and_drops_orphans():
    info = b"\xe6\xe7\x00" + bytes(range(200))
    src = Address.server(1, 17)
    segs = [HdlcFrame(Address(16), src, 0x13, info[i:i + 64], segmented=i + 64 < len(info))
            for i in range(0, len(info), 64)]
    r = Reassembler()
    results = [r.add(HdlcFrame.deserialize(s.serialize())[0]) for s in segs]
    assert results[:-1] == [None] * (len(segs) - 1) and results[-1] == bytes(range(200))
    r.add(segs[0])                   # first segment, then a new APDU starts: the orphan goes
    assert r.add(HdlcFrame(Address(16), src, 0x13, b"\xe6\xe7\x00\x0f")) == b"\x0f"
    assert r.dropped == 1


addresses = st.one_of(
    st.builds(Address, st.integers(0, 127)),
    st.builds(lambda u, l: Address(u, l, 2), st.integers(0, 127), st.integers(0, 127)),
    st.builds(lambda u, l: Address(u, l, 4), st.integers(0, 16383), st.integers(0, 16383)))


@given(addresses, addresses, st.integers(0, 255), st.binary(max_size=300), st.booleans())
def test_roundtrip(dest, src, control, info, seg):
    f = HdlcFrame(dest, src, control, info, seg)
    assert HdlcFrame.deserialize(f.serialize()) == (f, b"")


@given(st.binary(max_size=400))
def test_random_bytes_only_raise_hdlc_error(data):
    try:
        HdlcFrame.deserialize(data)
    except HdlcError:
        pass
    dec = HdlcDecoder()
    dec.receive_data(data)
    for _ in range(len(data) + 2):
        if dec.next_event() is NEED_DATA:
            break


@given(st.binary(min_size=3, max_size=300))
def test_random_bytes_after_a_flag_and_format(data):
    try:
        HdlcFrame.deserialize(b"\x7e\xa0" + data)
    except HdlcError:
        pass

"""XBee API framing: byte-exact vectors, escaping, stream resync, frame ids, fuzzing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols import xbee

VECTORS = json.loads((Path(__file__).parent / "vectors" / "xbee.json").read_text())


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vectors_byte_exact(v):
    raw = bytes.fromhex(v["hex"])
    exp = v["expected"]
    data = xbee.decode_frame(raw, escaped=True)
    assert len(data) == exp["length"]
    assert f"0x{xbee.checksum(data):02X}" == exp["checksum"]
    if "frame_data_unescaped_hex" in exp:
        assert data.hex().upper() == exp["frame_data_unescaped_hex"].upper()
    if "frame_type" in exp:
        assert f"0x{data[0]:02X}" == exp["frame_type"]
    # and back: encoding the frame data gives exactly the captured bytes
    assert xbee.encode_frame(data, escaped=True) == raw


def test_escape_all_four_bytes_and_mode_1():
    data = bytes((0x7E, 0x7D, 0x11, 0x13))
    assert xbee.escape(data) == bytes.fromhex("7D5E7D5D7D317D33")
    assert xbee.unescape(xbee.escape(data)) == data
    assert xbee.encode_frame(data, escaped=False) == bytes.fromhex("7E00047E7D1113E0")
    assert xbee.decode_frame(bytes.fromhex("7E00047E7D1113E0"), escaped=False) == data


def test_decode_frame_errors_say_what():
    with pytest.raises(xbee.XBeeDecodeError, match="bad checksum 0xF6, expected 0xFF"):
        xbee.decode_frame(bytes.fromhex("7E000100F6"))
    with pytest.raises(xbee.XBeeDecodeError, match="truncated"):
        xbee.decode_frame(bytes.fromhex("7E0010"))
    with pytest.raises(xbee.XBeeDecodeError, match="0x7E"):
        xbee.decode_frame(bytes.fromhex("00"))


def test_typed_frames_round_trip_and_fields():
    at = xbee.ATCommand(1, "AO", b"\x01")
    assert xbee.encode(at) == bytes.fromhex("7E0005080141 4F01 65".replace(" ", ""))
    frames = [
        at,
        xbee.ATCommandResponse(1, "SH", 0, bytes.fromhex("0013A200")),
        xbee.ModemStatus(6),
        xbee.TransmitRequest(2, 0x0013A20040A1B2C3, 0xFFFE, 0, 0, b"hi"),
        xbee.ExplicitAddressingCommand(3, 0x0013A20040A1B2C3, 0x1234, 1, 1, 0x0702, 0x0104,
                                       0, 0, b"\x00\x01\x00\x00\x00"),
        xbee.TransmitStatus(3, 0x1234, 0, 0x21, 0),
        xbee.RxIndicator(0x0013A20040A1B2C3, 0x1234, 1, b"x"),
        xbee.ExplicitRxIndicator(0x0013A20040A1B2C3, 0x1234, 1, 1, 0x0702, 0x0109, 1, b"y"),
        xbee.NodeIdentification(0x1, 0x2, 2, 0x3, 0x4, "METER 7", 0xFFFE, 2, 2, 0xC105,
                                0x101E),
        xbee.UnknownFrame(0xA1, b"\x01\x02"),
    ]
    for f in frames:
        for escaped in (True, False):
            assert xbee.decode(xbee.encode(f, escaped), escaped) == f


def test_explicit_rx_layout_is_big_endian():
    f = xbee.decode(bytes.fromhex(VECTORS[2]["hex"]))
    assert isinstance(f, xbee.ExplicitRxIndicator)
    assert (f.source64, f.source16, f.cluster, f.profile) == (0x0013A20040A1B2C3, 0x7D11,
                                                              0x0702, 0x0109)
    assert f.data[:3] == bytes.fromhex("08110A")


def test_stream_decoder_resyncs_and_counts():
    good = bytes.fromhex(VECTORS[0]["hex"])
    ok2 = bytes.fromhex(VECTORS[2]["hex"])
    stream = b"\x00\x11garbage" + bytes.fromhex("7E000100F6") + good + ok2[:10] + ok2 + good
    d = xbee.FrameDecoder()
    events = []
    for i in range(len(stream)):  # worst case: one byte at a time
        d.receive_data(stream[i:i + 1])
        while (ev := d.next_event()) is not xbee.NEED_DATA:
            events.append(ev)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["BadFrame", "UnknownFrame", "BadFrame", "ExplicitRxIndicator",
                     "UnknownFrame"]
    assert "checksum" in events[0].reason and "truncated" in events[2].reason
    assert d.checksum_errors == 1 and d.bad_frames == 2 and d.frames == 3
    assert d.garbage_bytes == 9


def test_stream_decoder_mode_1_skips_bad_delimiter_only():
    f = xbee.ModemStatus(2)
    stream = xbee.encode(f, False)[:-1] + b"\x00" + xbee.encode(f, False)
    d = xbee.FrameDecoder(escaped=False)
    d.receive_data(stream)
    events = []
    while (ev := d.next_event()) is not xbee.NEED_DATA:
        events.append(ev)
    assert events[0].__class__ is xbee.BadFrame and events[-1] == f


def test_implausible_length_is_skipped():
    d = xbee.FrameDecoder(max_frame_data=100)
    d.receive_data(b"\x7e\xff\xff" + xbee.encode(xbee.ModemStatus(0)))
    assert isinstance(d.next_event(), xbee.BadFrame)
    assert d.next_event() == xbee.ModemStatus(0)


def test_frame_id_allocator_matches_and_expires_without_a_clock():
    ids = xbee.FrameIdAllocator()
    a = ids.allocate("first", deadline=10)
    b = ids.allocate("second", deadline=20)
    assert (a, b) == (1, 2) and len(ids) == 2
    assert ids.resolve(a) == "first" and ids.resolve(a) is None
    assert ids.expire(15) == [] and ids.expire(20) == [(2, "second")]
    for i in range(255):
        ids.allocate(i, 100)
    with pytest.raises(xbee.FrameIdsExhausted):
        ids.allocate("one too many", 100)
    assert 0 not in ids


def test_local_misuse_is_not_a_decode_error():
    with pytest.raises(ValueError) as exc:
        xbee.ATCommand(256, "AO").serialize()
    assert not isinstance(exc.value, xbee.XBeeDecodeError)
    with pytest.raises(ValueError):
        xbee.ATCommand(1, "AOX").serialize()


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_the_codec_error(raw):
    for escaped in (True, False):
        try:
            xbee.decode(raw, escaped)
        except xbee.XBeeDecodeError:
            pass
    try:
        xbee.parse_frame(raw)
    except xbee.XBeeDecodeError:
        pass


@given(st.lists(st.binary(max_size=80), max_size=20), st.booleans())
def test_stream_decoder_never_raises_and_never_loses_a_good_frame(chunks, escaped):
    marker = xbee.ExplicitRxIndicator(0x0102030405060708, 0x7E7D, 1, 1, 0x0702, 0x0104, 0,
                                      b"\x11\x13\x7e")
    d = xbee.FrameDecoder(escaped=escaped)
    for c in chunks:
        d.receive_data(c)
        while d.next_event() is not xbee.NEED_DATA:
            pass
    # after any garbage, a good frame (preceded by a delimiter that ends any partial frame)
    d.receive_data(b"\x7e" if escaped else b"")
    d.receive_data(xbee.encode(marker, escaped))
    seen = []
    while (ev := d.next_event()) is not xbee.NEED_DATA:
        seen.append(ev)
    if escaped:
        assert marker in seen


_u64 = st.integers(0, 2**64 - 1)
_u16 = st.integers(0, 0xFFFF)
_u8 = st.integers(0, 0xFF)


@given(st.one_of(
    st.builds(xbee.ExplicitRxIndicator, _u64, _u16, _u8, _u8, _u16, _u16, _u8, st.binary()),
    st.builds(xbee.ExplicitAddressingCommand, _u8, _u64, _u16, _u8, _u8, _u16, _u16, _u8, _u8,
              st.binary()),
    st.builds(xbee.TransmitStatus, _u8, _u16, _u8, _u8, _u8),
    st.builds(xbee.ATCommandResponse, _u8, st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2,
                                                   max_size=2), _u8, st.binary()),
), st.booleans())
def test_round_trip_property(frame, escaped):
    assert xbee.decode(xbee.encode(frame, escaped), escaped) == frame

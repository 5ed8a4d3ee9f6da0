"""The public ZCL corpus (tests/corpus/zcl.json, copied from ../shared/corpus/dlms_zigbee.json):
XBee API frames carrying ZCL (real captures and zigpy-serialised Report Attributes of every
Metering / Electrical Measurement attribute) decode to zigpy's reading; XBee frames to their
source's fields. Exceptions are listed with the reason. Plus issue 14 item 10 regressions and
mutations of the corpus frames with the checksum recomputed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from gateway.subcommands.decode_xbee import describe
from gateway.protocols import xbee, zcl, zdo

CORPUS = json.loads((Path(__file__).parent / "corpus" / "zcl.json").read_text())["zcl"]
ZCL = [z for z in CORPUS if z["kind"] != "xbee-frame"]
FRAMES = [z for z in CORPUS if z["kind"] == "xbee-frame"]

# Frames where we read something else than zigpy on purpose.
EXCEPTIONS: dict[str, str] = {
    "synthetic-report:196":
        "octet string with length 0xFF: zigpy raises 'Data is too short'; ZCL 2.6.2 makes a "
        "length of 0xFF the invalid value of the type, so we read it as invalid (None).",
}


def _zcl_of(z: dict) -> tuple[xbee.ExplicitRxIndicator, zcl.ZCLFrame]:
    data = xbee.decode_frame(bytes.fromhex(z["frame_hex"]), z["api_mode"] == 2)
    frame = xbee.parse_frame(data)
    assert isinstance(frame, xbee.ExplicitRxIndicator)
    assert frame.data == bytes.fromhex(z["zcl_hex"]) and frame.cluster == z["cluster"]
    return frame, zcl.parse_zcl(frame.data)


def _same(expected: dict, tv: zcl.TypedValue) -> bool:
    ev, kind = expected["value"], expected["kind"]
    if kind == "bool":
        return tv.value is None if ev == 255 else tv.value is bool(ev)
    if kind == "float" and str(ev).lower() in ("nan", "-nan"):
        return tv.value is None and tv.invalid  # NaN is the invalid value of a float
    if kind == "float":
        # zigpy prints the float's shortest repr, we keep its exact binary value: the same
        # IEEE number, so compare them as floats.
        return tv.value is not None and float(tv.value) == float(ev)
    if kind == "str" and expected.get("invalid_len"):
        return tv.value is None and tv.invalid  # zigpy: '' flagged invalid_len
    if kind == "bytes":
        return tv.value == bytes.fromhex(ev)
    return tv.value == ev


@pytest.mark.parametrize("z", ZCL, ids=[z["id"] for z in ZCL])
def test_every_zcl_frame_reads_as_zigpy_reads_it(z):
    if z["id"] in EXCEPTIONS:
        pytest.skip(EXCEPTIONS[z["id"]])
    assert z["oracle_error"] is None
    _, frame = _zcl_of(z)
    h = frame.header
    exp = z["expected_header"]
    assert (h.command, h.direction, h.manufacturer, h.seq) == (
        exp["command"], exp["direction"], exp["manufacturer"], exp["seq"])
    assert h.command == z["expected_command"]
    p = frame.payload
    if isinstance(p, zcl.ReportAttributes):
        got = [(r.attribute_id, r.value) for r in p.reports]
    elif isinstance(p, zcl.ReadAttributesResponse):
        got = [(r.attribute_id, r.value) for r in p.records if r.value is not None]
    else:
        got = []  # a command without attribute records (cluster-specific, Default Response)
    assert [(a, v.type_id) for a, v in got] == [
        (e["id"], e["type"]) for e in z["expected_records"]]
    for e, (_a, v) in zip(z["expected_records"], got):
        assert _same(e, v), (e, v)


def test_the_listed_exception_reads_as_the_zcl_invalid_value():
    z = next(z for z in ZCL if z["id"] == "synthetic-report:196")
    assert z["oracle_error"]
    _, frame = _zcl_of(z)
    (r,) = frame.payload.reports
    assert r.value.type_name == "octstr" and r.value.value is None and r.value.invalid


@pytest.mark.parametrize("z", FRAMES, ids=[z["id"] for z in FRAMES])
def test_xbee_frames_decode_to_their_fields(z):
    info = describe(bytes.fromhex(z["frame_hex"]), z["api_mode"] == 2)
    assert {k: info.get(k) for k in z["expected_fields"]} == z["expected_fields"]


# --------------------------------------------------------------------------- item 10

DIGI = next(z for z in FRAMES if z["id"] == "xbee-frame:211")


def test_a_0x91_frame_on_a_digi_profile_is_a_raw_payload_not_zcl():
    info = describe(bytes.fromhex(DIGI["frame_hex"]), False)
    assert info["profile"] == "0xC105" and info["payload"].startswith("raw")
    assert info["data"] == "527844617461" and "zcl" not in info
    # a payload that is no ZCL header at all (1 byte) is fine too on that profile
    short = xbee.encode(xbee.ExplicitRxIndicator(0x0013A20040522BAA, 0x7D84, 0xE0, 0xE0,
                                                 0x0011, 0xC105, 0x01, b"\x00"), False)
    info = describe(short, False)
    assert info["payload"].startswith("raw") and info["data"] == "00"
    assert not zcl.is_zcl_profile(0xC105) and zcl.is_zcl_profile(0x0104)
    assert zcl.is_zcl_profile(0x0109) and not zcl.is_zcl_profile(zdo.ZDO_PROFILE)


@pytest.mark.parametrize("fc", [0x02, 0x03, 0x1A, 0x0B])
def test_reserved_zcl_frame_types_are_reported_as_reserved(fc):
    f = zcl.parse_zcl(bytes([fc, 0x42, 0x0A]) + b"\x00\x00\x20\x01")
    assert f.header.is_reserved and not f.header.is_global
    assert f.header.frame_type_name == f"reserved ({fc & 3:02b})"
    assert isinstance(f.payload, zcl.RawPayload) and f.payload.data == b"\x00\x00\x20\x01"
    assert "reserved frame type" in f.command_name
    frame = xbee.encode(xbee.ExplicitRxIndicator(1, 2, 1, 1, zcl.METERING, 0x0104, 1,
                                                 bytes([fc, 0x42, 0x0A])), False)
    assert describe(frame, False)["zcl"]["frame_type"].startswith("reserved")


@pytest.mark.parametrize("raw,flag", [(0x80, True), (0x82, True), (0x01, False),
                                      (0x00, False)])
def test_a_non_canonical_boolean_is_true_and_flagged(raw, flag):
    tv, rest = zcl.decode_value(zcl.BOOL, bytes([raw]) + b"x")
    assert (tv.value, tv.noncanonical, rest) == (raw != 0, flag, b"x")
    z = next(z for z in ZCL if z["id"] == "real-zcl:6")  # konke: bool 0x80 in a report
    info = describe(bytes.fromhex(z["frame_hex"]), False)
    (a,) = info["attributes"]
    assert a["value"] is True and a["noncanonical"] is True and a["invalid"] is False


# --------------------------------------------------------------------------- robustness

@settings(max_examples=400, deadline=None)
@given(st.sampled_from(CORPUS), st.data())
def test_mutated_corpus_frames_with_the_checksum_recomputed_raise_only_decode_errors(z, data):
    body = bytearray(xbee.decode_frame(bytes.fromhex(z["frame_hex"]), z["api_mode"] == 2))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "byte"]))
    pos = data.draw(st.integers(0, len(body) - 1))
    if kind == "flip":
        body[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del body[max(1, pos):]
    elif kind == "insert":
        body[pos:pos] = data.draw(st.binary(min_size=1, max_size=6))
    else:
        body[pos] = data.draw(st.integers(0, 255))
    for escaped in (False, True):
        raw = xbee.encode_frame(bytes(body), escaped)  # the checksum recomputed
        try:
            describe(raw, escaped)
        except (xbee.XBeeDecodeError, zcl.ZCLDecodeError, zdo.ZDODecodeError):
            pass
        dec = xbee.FrameDecoder(escaped=escaped)
        dec.receive_data(raw)
        for _ in range(len(raw) + 2):
            if dec.next_event() is xbee.NEED_DATA:
                break


def test_arrays_and_structures_decode_as_zcl_2_6_2_says():
    # Xiaomi-style 0xFF02 structure: 3 elements (bool, uint16, int8), then another record
    struct = bytes.fromhex("0300" "1001" "21e40c" "28ec") + b"rest"
    tv, rest = zcl.decode_value(0x4C, struct)
    assert rest == b"rest" and [(e.type_name, e.value) for e in tv.value] == [
        ("bool", True), ("uint16", 3300), ("int8", -20)]
    arr, rest = zcl.decode_value(0x48, bytes.fromhex("21020001000200"))
    assert [e.value for e in arr.value] == [1, 2] and rest == b""
    assert zcl.decode_value(0x48, arr.serialize())[0] == arr
    assert zcl.decode_value(0x4C, tv.serialize())[0] == tv
    assert zcl.decode_value(0x4C, b"\xff\xff")[0].invalid  # count 0xFFFF: invalid value
    for bad in ("4c0500" "1001", "48", "4821ffee", "4c01004c01004c0100" * 4):
        with pytest.raises(zcl.ZCLDecodeError):
            zcl.decode_value(bytes.fromhex(bad)[0], bytes.fromhex(bad)[1:])
    report = bytes.fromhex("1c5f11010a02ff4c0300100121e40c28ec")
    frame = xbee.encode(xbee.ExplicitRxIndicator(1, 2, 1, 1, 0x0000, 0x0104, 1, report), False)
    (a,) = describe(frame, False)["attributes"]
    assert a["type"] == "struct" and a["value"][1] == {"type": "uint16", "value": 3300}


def test_remote_at_command_response_is_decoded():
    # Digi: frame id 0x55, from 0013A20040522BAA / 0x7D84, "SL" OK, value 40522BAA
    f = xbee.RemoteATCommandResponse(0x55, 0x0013A20040522BAA, 0x7D84, "SL", 0, b"\x40\x52\x2b\xaa")
    raw = xbee.encode(f, False)
    assert xbee.decode(raw, False) == f
    info = describe(raw, False)
    assert (info["frame_type"], info["source64"], info["source16"], info["command"],
            info["status_name"], info["data"]) == ("0x97", "0013a20040522baa", "0x7D84", "SL",
                                                   "OK", "40522baa")


def test_character_strings_end_at_the_first_nul_octet_strings_do_not():
    assert zcl.decode_value(zcl.STR, b"\x08lumi.ab\x00x")[0].value == "lumi.ab"
    assert zcl.decode_value(zcl.STR, b"\x07lumi.ab\x00")[0].value == "lumi.ab"
    assert zcl.decode_value(zcl.OCTSTR, b"\x03a\x00b")[0].value == b"a\x00b"

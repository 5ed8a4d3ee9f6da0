"""ZCL: data types and sentinels, header, general commands, exact scaling, fuzzing; ZDO."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols import zcl, zdo


def test_data_type_table_sizes_and_sentinels():
    assert zcl.DATA_TYPES[0x25].name == "uint48" and zcl.DATA_TYPES[0x25].size == 6
    assert zcl.DATA_TYPES[0x25].invalid == 0xFFFFFFFFFFFF
    assert zcl.DATA_TYPES[0x2A].name == "int24" and zcl.DATA_TYPES[0x2A].invalid == -0x800000
    assert zcl.DATA_TYPES[0x30].invalid == 0xFF and zcl.DATA_TYPES[0x1B].invalid is None
    for name in ("uint8", "uint16", "uint24", "uint32", "uint40", "uint48", "int8", "int16",
                 "int24", "int32", "int40", "int48", "enum8", "bitmap8", "bitmap16",
                 "bitmap24", "bitmap32", "bool", "string", "UTC"):
        assert name in zcl.TYPE_BY_NAME


@pytest.mark.parametrize("type_id,raw,value,invalid", [
    (0x25, "FFFFFFFFFFFF", 0xFFFFFFFFFFFF, True),
    (0x25, "5F2A1E000000", 1976927, False),
    (0x2A, "000080", -0x800000, True),
    (0x2A, "FEFFFF", -2, False),
    (0x22, "FFFFFF", 0xFFFFFF, True),
    (0x21, "FFFF", 0xFFFF, True),
    (0x20, "FF", 0xFF, True),
    (0x28, "80", -128, True),
    (0x30, "FF", 0xFF, True),
    (0x18, "FF", 0xFF, False),          # bitmaps have no invalid value
    (0x10, "01", True, False),
    (0x10, "FF", None, True),
    (0xE2, "FFFFFFFF", 0xFFFFFFFF, True),
    (0x42, "05536D617274", "Smart", False),
    (0x42, "FF", None, True),
])
def test_decode_values_little_endian_and_invalid(type_id, raw, value, invalid):
    tv, rest = zcl.decode_value(type_id, bytes.fromhex(raw) + b"\xAA")
    assert tv.value == value and tv.invalid is invalid and rest == b"\xAA"
    assert zcl.encode_value(type_id, value) == bytes.fromhex(raw)


def test_header_with_manufacturer_code_round_trips():
    h = zcl.ZCLHeader(1, 0x05, 0x42, 1, True, 0x115F)
    data = h.serialize()
    assert data == bytes.fromhex("1D5F114205")
    assert zcl.ZCLHeader.deserialize(data + b"x") == (h, b"x")


def test_read_attributes_response_with_unsupported_record():
    data = bytes.fromhex("18 07 01 0003 00 30 00 0103 86 0203 00 22 e8 03 00".replace(" ", ""))
    f = zcl.parse_zcl(data)
    assert f.header.seq == 7 and f.header.direction == 1 and f.header.disable_default_response
    recs = f.payload.records
    assert recs[0] == zcl.AttributeStatus(0x0300, 0, zcl.TypedValue(0x30, 0))
    assert recs[1] == zcl.AttributeStatus(0x0301, zcl.UNSUPPORTED_ATTRIBUTE)
    assert recs[2].value.value == 1000
    assert f.serialize() == data


def test_configure_reporting_and_response_forms():
    cfg = zcl.ConfigureReporting((
        zcl.ReportingConfig(0, 0x0000, zcl.U48, 30, 300, 1),
        zcl.ReportingConfig(0, 0x0200, zcl.BMP8, 0, 600),   # discrete: no change field
        zcl.ReportingConfig(1, 0x0400, timeout=900),
    ))
    data = zcl.general_frame(cfg, 9)
    assert data.hex() == ("000906" "00000025" "1e002c01" "010000000000" "00000218" "00005802"
                          "010004" "8403")
    assert zcl.parse_zcl(data).payload == cfg
    short = zcl.parse_zcl(bytes.fromhex("18090700"))
    assert short.payload.all_success and short.payload.records[0].attribute_id is None
    long = zcl.parse_zcl(bytes.fromhex("1809078c000000"))
    assert not long.payload.all_success
    assert long.payload.records[0] == zcl.ReportingStatus(0x8C, 0, 0)


def test_default_response_and_cluster_specific_payload():
    assert zcl.parse_zcl(bytes.fromhex("18010b0682")).payload == zcl.DefaultResponse(6, 0x82)
    raw = zcl.parse_zcl(bytes.fromhex("1901000102"))
    assert raw.payload == zcl.RawPayload(b"\x01\x02") and not raw.header.is_global


def test_metering_and_electrical_tables():
    m = zcl.CLUSTERS[zcl.METERING]
    assert m.attributes[0x0000] == zcl.Attribute(0x0000, "CurrentSummationDelivered", 0x25)
    assert m.attributes[0x0301].type_id == 0x22 and m.attributes[0x0302].type_id == 0x22
    assert m.attributes[0x0400].type_id == 0x2A
    assert m.by_name("SummationFormatting") == 0x0303
    e = zcl.CLUSTERS[zcl.ELECTRICAL_MEASUREMENT]
    assert (e.attributes[0x0505].name, e.attributes[0x0508].name,
            e.attributes[0x050B].name) == ("RMSVoltage", "RMSCurrent", "ActivePower")
    assert e.by_name("ACPowerDivisor") == 0x0605
    assert zcl.CLUSTERS[zcl.BASIC].attributes[0x0005].name == "ModelIdentifier"
    assert zcl.unit_of_measure(0x00) == ("kWh", "kW", False)
    assert zcl.unit_of_measure(0x81) == ("m3", "m3/h", True)
    assert zcl.device_type_name(0x82) == "water"


@pytest.mark.parametrize("raw,mult,div,dec,expected,rounded", [
    (1976927, 1, 1000, 3, "1976.927", False),
    (1976927, 1, 100, 3, "19769.270", False),      # the "100x too high" bug, done right
    (1976927, 1, 1, 0, "1976927", False),
    (5, 10, 1, 0, "50", False),
    (7, 1, 8, 0, "0.875", False),
    (1976927, 1, 3600000, 3, "0.54914639", True),  # 1/3600000: a tenth of a count
    (1012373, 10, 3, 2, "3374576.67", True),
    (-1204, 1, 1000, 3, "-1.204", False),
])
def test_scale_is_exact(raw, mult, div, dec, expected, rounded):
    mantissa, exponent, was_rounded = zcl.scale(raw, mult, div, dec)
    assert format(Decimal(mantissa).scaleb(exponent), "f") == expected
    assert was_rounded is rounded


@given(st.integers(0, 2**48 - 1), st.integers(1, 2**24 - 1), st.integers(1, 2**24 - 1),
       st.integers(0, 7))
def test_scale_property_exact_or_within_a_tenth_of_a_count(raw, mult, div, dec):
    from fractions import Fraction
    mantissa, exponent, rounded = zcl.scale(raw, mult, div, dec)
    got = Fraction(mantissa) * Fraction(10) ** exponent
    want = Fraction(raw * mult, div)
    if rounded:
        assert abs(got - want) <= Fraction(mult, div) / 20
    else:
        assert got == want
    assert exponent <= -dec


def test_formatting_and_bcd():
    f = zcl.Formatting.from_bits(0x2B)
    assert (f.left, f.right, f.suppress_leading_zeros) == (5, 3, False)
    assert zcl.Formatting.from_bits(0xB2).suppress_leading_zeros
    assert zcl.bcd_value(0x001234567890, 6) == 1234567890
    with pytest.raises(ValueError):
        zcl.bcd_value(0x00000000000A, 6)


def test_status_bits():
    assert zcl.status_bits(0x09) == ["check_meter", "power_failure"]


@given(st.binary(max_size=120))
def test_random_bytes_only_raise_zcl_decode_error(data):
    try:
        zcl.parse_zcl(data)
    except zcl.ZCLDecodeError:
        pass
    for type_id in (0x25, 0x2A, 0x42, 0x44, 0x10, 0x39, 0xFF, data[0] if data else 0):
        try:
            zcl.decode_value(type_id, data)
        except zcl.ZCLDecodeError:
            pass


_typed = st.one_of(
    st.builds(zcl.TypedValue, st.just(0x25), st.integers(0, 2**48 - 1)),
    st.builds(zcl.TypedValue, st.just(0x2A), st.integers(-2**23, 2**23 - 1)),
    st.builds(zcl.TypedValue, st.just(0x22), st.integers(0, 2**24 - 1)),
    st.builds(zcl.TypedValue, st.just(0x18), st.integers(0, 255)),
    st.builds(zcl.TypedValue, st.just(0x10), st.sampled_from([True, False, None])),
    st.builds(zcl.TypedValue, st.just(0x42), st.text("abcXYZ 0-9", max_size=30)),
    st.builds(zcl.TypedValue, st.just(0xE2), st.integers(0, 2**32 - 1)),
)


@given(st.lists(st.tuples(st.integers(0, 0xFFFF), _typed), max_size=8), st.integers(0, 255))
def test_report_round_trip_property(records, seq):
    payload = zcl.ReportAttributes(tuple(zcl.AttributeReport(a, v) for a, v in records))
    data = zcl.general_frame(payload, seq, to_client=True)
    f = zcl.parse_zcl(data)
    assert f.payload == payload and f.header.seq == seq and f.serialize() == data


@given(st.lists(st.integers(0, 0xFFFF), max_size=10))
def test_read_attributes_round_trip_property(ids):
    payload = zcl.ReadAttributes(tuple(ids))
    assert zcl.parse_zcl(zcl.general_frame(payload, 1)).payload == payload


# --------------------------------------------------------------------------- ZDO


def test_device_announce_layout():
    data = bytes.fromhex("2a3412efcdab8967452301" + "8e")
    msg = zdo.parse_zdo(zdo.DEVICE_ANNCE, data)
    assert msg == zdo.DeviceAnnounce(0x2A, 0x1234, 0x0123456789ABCDEF, 0x8E)
    assert msg.serialize() == data
    assert "mains_powered" in zdo.capability_names(msg.capability)


def test_bind_request_and_status_response():
    req = zdo.BindRequest(5, 0x00124B0001A00001, 1, 0x0702, 0x0013A20041A2B3C4, 1)
    assert zdo.parse_zdo(zdo.BIND_REQ, req.serialize()) == req
    assert req.serialize()[12] == 0x03
    assert zdo.parse_zdo(zdo.BIND_RSP, b"\x05\x84") == zdo.StatusResponse(5, 0x84)
    assert zdo.parse_zdo(0x8034, b"\x00\x00") == zdo.StatusResponse(0, 0)
    assert zdo.parse_zdo(0x8002, b"\x00") is None  # not modelled: ignored, not an error


# A public Mgmt_Lqi_rsp capture: 3 of 8 neighbors (a coordinator, two routers).
LQI_RSP = bytes.fromhex(
    "6e00080003"
    "50533a0d00df6615" "e9a6c917006f0d00" "0000" "240200cf"
    "50533a0d00df6615" "80bfca6b6a38c1a4" "4a16" "05020fcd"
    "50533a0d00df6615" "d3fae125004b1200" "6417" "25020f36")


# A public Simple_Desc_rsp capture: endpoint 3, HA, in 0000/0003/FC80, out 0003/0004/FC80.
SIMPLE_DESC_RSP = bytes.fromhex("b700184a14" "03" "0401" "0600" "01"
                                "03" "0000" "0300" "80fc" "03" "0300" "0400" "80fc")


def test_endpoint_discovery_messages():
    r = zdo.parse_zdo(zdo.SIMPLE_DESC_RSP, SIMPLE_DESC_RSP)
    assert (r.seq, r.status, r.nwk, r.endpoint, r.profile, r.device_id, r.version) == \
        (0xB7, 0, 0x4A18, 3, 0x0104, 0x0006, 1)
    assert r.in_clusters == (0x0000, 0x0003, 0xFC80) and r.out_clusters == (0x0003, 0x0004,
                                                                             0xFC80)
    assert r.serialize() == SIMPLE_DESC_RSP
    assert zdo.parse_zdo(zdo.SIMPLE_DESC_RSP, b"\xb7\x82\x18\x4a\x00") == \
        zdo.SimpleDescResponse(0xB7, 0x82, 0x4A18)  # INVALID_EP
    with pytest.raises(zdo.ZDODecodeError):
        zdo.parse_zdo(zdo.SIMPLE_DESC_RSP, SIMPLE_DESC_RSP[:-1])
    with pytest.raises(zdo.ZDODecodeError):  # cluster count beyond the descriptor length
        zdo.parse_zdo(zdo.SIMPLE_DESC_RSP, SIMPLE_DESC_RSP[:11] + b"\x09" + SIMPLE_DESC_RSP[12:])
    req = zdo.SimpleDescRequest(9, 0x4A18, 3)
    assert req.serialize() == bytes.fromhex("09184a03") and \
        zdo.parse_zdo(zdo.SIMPLE_DESC_REQ, req.serialize()) == req
    a = zdo.ActiveEpResponse(7, 0, 0x4A18, (1, 3, 0xF2))
    assert a.serialize() == bytes.fromhex("0700184a030103f2")
    assert zdo.parse_zdo(zdo.ACTIVE_EP_RSP, a.serialize()) == a
    assert zdo.parse_zdo(zdo.ACTIVE_EP_REQ, bytes.fromhex("07184a")) == \
        zdo.ActiveEpRequest(7, 0x4A18)
    with pytest.raises(zdo.ZDODecodeError):
        zdo.parse_zdo(zdo.ACTIVE_EP_RSP, bytes.fromhex("0700184a0301"))  # 3 said, 1 given


def test_mgmt_lqi_response_vector_and_round_trip():
    r = zdo.parse_zdo(zdo.MGMT_LQI_RSP, LQI_RSP)
    assert (r.seq, r.status, r.total, r.start) == (0x6E, 0, 8, 0)
    assert [(n.ieee, n.nwk, n.lqi, n.depth) for n in r.neighbors] == [
        (0x000D6F0017C9A6E9, 0x0000, 207, 0), (0xA4C1386A6BCABF80, 0x164A, 205, 15),
        (0x00124B0025E1FAD3, 0x1764, 54, 15)]
    c, r1, r2 = r.neighbors
    assert (zdo.DEVICE_TYPES[c.device_type], zdo.RELATIONSHIPS[c.relationship]) == \
        ("coordinator", "sibling")
    assert (zdo.DEVICE_TYPES[r1.device_type], zdo.RELATIONSHIPS[r1.relationship]) == \
        ("router", "parent")
    assert all(n.extended_pan == 0x1566DF000D3A5350 for n in r.neighbors)
    assert r.serialize() == LQI_RSP
    assert zdo.parse_zdo(zdo.MGMT_LQI_REQ, b"\x07\x03") == zdo.LqiRequest(7, 3)
    assert zdo.LqiRequest(7, 3).serialize() == b"\x07\x03"
    assert zdo.parse_zdo(zdo.MGMT_LQI_RSP, b"\x07\x84") == \
        zdo.LqiResponse(7, 0x84, 0, 0, ())  # NOT_SUPPORTED: no table fields
    with pytest.raises(zdo.ZDODecodeError):
        zdo.parse_zdo(zdo.MGMT_LQI_RSP, LQI_RSP[:-1])  # truncated last record
    with pytest.raises(zdo.ZDODecodeError):
        zdo.parse_zdo(zdo.MGMT_LQI_RSP, LQI_RSP[:2] + b"\x02" + LQI_RSP[3:])  # 3 of 2?


@given(st.integers(0, 0xFFFF), st.binary(max_size=40))
def test_random_bytes_only_raise_zdo_decode_error(cluster, data):
    try:
        zdo.parse_zdo(cluster, data)
    except zdo.ZDODecodeError:
        pass
    for c in zdo.ZDO_MESSAGES:
        try:
            zdo.parse_zdo(c, data)
        except zdo.ZDODecodeError:
            pass

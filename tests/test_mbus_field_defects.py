"""Issue 12's defects, each pinned by the exact bytes that showed it: zero-length BCD,
frame format B's CRC offset, plain-text VIFs before their VIFEs, the wired signature
field, one bad record in a frame, more than 10 VIFEs, exact values beyond 28 digits,
bytes after the L field's length, and CI 0x70 application errors."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.model import Reading
from gateway.protocols.mbus import records, wired, wireless
from gateway.protocols.mbus.crc import crc_en13757
from gateway.protocols.mbus.errors import ApplicationError, FrameError, MBusError
from tests.mbus_corpus_compare import CORPUS

LIBMBUS = {f["name"]: f["hex"] for f in CORPUS["libmbus_frames"]}
WMBUS = {x["cid"]: x["hex"] for x in CORPUS["wmbus"]}
HEADER = "7278563412" "2D2C" "01" "07" "00" "00" "0000"  # CI 72, id 12345678 KAM, water


def long_frame(records_hex: str, ci_and_header: str = HEADER) -> bytes:
    body = bytes.fromhex("0801" + ci_and_header + records_hex)
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) & 0xFF, 0x16))


# 1 ------------------------------------------------------------------ zero-length BCD

def test_zero_length_bcd_is_a_bad_record_not_an_index_error() -> None:
    raw = bytes.fromhex("68121268080172785634122D2C0107000000000D13C0D016")
    t = wired.decode_rsp_ud(raw)
    (r,) = t.records
    assert r.quantity == "Volume" and r.value is None and r.error == "BCD of zero length"
    assert records.decode_bcd(b"") is None
    # the negative-BCD LVAR (0xD0) too, and over radio
    t = wired.decode_rsp_ud(long_frame("0D13D0"))
    assert t.records[0].error == "BCD of zero length"
    radio = wireless.encode_wmbus("KAM", "12345678", 1, 7, bytes.fromhex("0D13C00C1378563412"))
    t = wireless.decode_wmbus(radio)
    assert [r.error for r in t.records] == ["BCD of zero length", None]
    assert t.records[1].value == 12345678


# 2 ------------------------------------------------------------------ frame format B

def test_format_b_crc_of_block_2_is_at_offset_126() -> None:
    raw = bytes.fromhex(WMBUS["xmq:HEAD:drivers/src/hcae2.xmq:272"])  # C1, 206 bytes
    assert len(raw) >= 128
    assert crc_en13757(raw[:126]) == int.from_bytes(raw[126:128], "big")
    stripped, fmt = wireless.strip_crc(raw)
    assert fmt == "B" and len(stripped) == len(raw) - 4 and stripped[0] == len(stripped) - 1
    assert wireless.strip_crc(raw, "B")[0] == stripped
    # the encoder puts the CRCs where the capture has them
    assert wireless.add_crc(stripped, "B") == raw
    t = wireless.decode_wmbus(raw)
    assert t.id == "54423117" and t.extra["frame_format"] == "B" and len(t.records) > 30


@pytest.mark.parametrize("size", [20, 125, 126, 127, 200, 250])
def test_format_b_round_trip_around_the_block_boundary(size: int) -> None:
    apl = bytes.fromhex("0C13") + bytes(4)
    apl += bytes.fromhex("2F") * max(0, size - 11 - 4 - len(apl))
    plain = wireless.encode_wmbus("KAM", "12345678", 1, 7, apl)
    with_crc = wireless.add_crc(plain, "B")
    assert wireless.strip_crc(with_crc, "B") == (plain, "B")
    assert wireless.strip_crc(with_crc) == (plain, "B")


# 3 ------------------------------------------------------------------ plain-text VIF

def test_plain_text_vif_text_comes_before_the_vifes() -> None:
    # %RH, VIFE 0x74 (x 10^-2): the records of libmbus' premature_end_of_var_vif1 frame
    vib = records.encode_plain_text_vib("%RH", bytes((0x74,)))
    assert vib == bytes.fromhex("FC0348522574")
    raw = long_frame("02" + vib.hex() + "D411" + "22" + vib.hex() + "C811")
    t = wired.decode_rsp_ud(raw)
    a, b = t.records
    assert (a.quantity, a.unit, a.value_text(), a.function) == ("%RH", "", "45.64", "instantaneous")
    assert (b.quantity, b.value_text(), b.function) == ("%RH", "45.52", "minimum")


def test_plain_text_vif_against_the_cyble_capture() -> None:
    raw = bytes.fromhex(LIBMBUS["ACW_Itron-CYBLE-M-Bus-14"])
    text = records.encode_plain_text_vib("cust. ID")
    assert text.hex().upper() in raw.hex().upper()  # the encoder writes what the meter sent
    t = wired.decode_rsp_ud(raw)
    r = next(r for r in t.records if r.quantity == "cust. ID")
    assert (r.kind, r.value) == ("text", "09LA076755")


def test_elvaco_style_plain_text_with_several_vifes() -> None:
    # 0xFC, 2 characters "°C" (last first), VIFE 0x3E (at base conditions) and 0x72 (10^-4)
    vib = records.encode_plain_text_vib("°C", bytes((0xBE, 0x72)))
    assert vib == bytes.fromhex("FC0243B0BE72")
    t = wired.decode_rsp_ud(long_frame("04" + vib.hex() + "39300000"))
    (r,) = t.records
    assert r.quantity.startswith("°C") and r.value_text() == "1.2345"


# 4 ------------------------------------------------------------------ wired signature

def test_aquametro_signature_is_not_a_security_mode() -> None:
    raw = bytes.fromhex(LIBMBUS["amt_calec_mb"])
    assert "B405B004C910FFFF03229A" in raw.hex().upper()
    t = wired.decode_rsp_ud(raw)
    assert t.security_mode == 0 and t.extra["signature"] == "FFFF"
    assert t.manufacturer == "AMT" and len(t.records) == 7
    # a wired frame with a real security mode still needs its key
    enc = long_frame("00" * 16, "72785634122D2C01070000" + "1005")
    with pytest.raises(MBusError, match="no key"):
        wired.decode_rsp_ud(enc)


# 5 ------------------------------------------------------------------ one bad record

def test_vif_7b_without_extension_loses_only_its_record() -> None:
    raw = long_frame("0C1378563412" "027B3412" "0C1311223344")
    t = wired.decode_rsp_ud(raw)
    assert [r.error is None for r in t.records] == [True, False, True]
    assert t.records[1].error == "VIF 0x7B without its extension byte"
    assert t.records[1].value is None and t.records[2].value == 44332211


# 6 ------------------------------------------------------------------ too many VIFEs

def test_more_than_ten_vifes_are_refused() -> None:
    ten = long_frame("04" + "93" + "80" * 9 + "00" + "01000000")
    assert len(wired.decode_rsp_ud(ten).records) == 1
    eleven = long_frame("04" + "93" + "80" * 10 + "00" + "01000000")
    with pytest.raises(FrameError, match="more than 10 VIFEs"):
        wired.decode_rsp_ud(eleven)
    # an FD/FB table byte counts as one of the ten
    with pytest.raises(FrameError, match="more than 10 VIFEs"):
        wired.decode_rsp_ud(long_frame("04" + "FD" + "80" * 10 + "00" + "01000000"))


# 7 ------------------------------------------------------------------ exact values

def test_values_beyond_28_digits_stay_exact() -> None:
    value = 2 ** 127 - 12345  # 39 digits, a 16-byte integer (LVAR 0xF0)
    raw = long_frame("0D13F0" + value.to_bytes(16, "little").hex())
    (r,) = wired.decode_rsp_ud(raw).records
    assert r.value == value and r.exponent == -3
    assert r.decimal() == Decimal(f"{value}E-3")
    assert r.value_text() == f"{str(value)[:-3]}.{str(value)[-3:]}"
    reading = Reading("m", "Volume", r.value, r.exponent, "m3", None, 0)
    assert reading.value == Decimal(f"{value}E-3")


# 8 ------------------------------------------------------------------ L-field leniency

def test_bytes_after_the_l_field_length_are_reported_not_refused() -> None:
    good = bytes.fromhex(WMBUS["xmq:HEAD:drivers/src/cma12w.xmq:54"])
    t0 = wireless.decode_wmbus(good)
    t = wireless.decode_wmbus(good + bytes.fromhex("ABCD"))
    assert t.extra["trailing_bytes"] == "ABCD"
    assert [r.to_json() for r in t.records] == [r.to_json() for r in t0.records]
    assert "trailing_bytes" not in t0.extra
    # the same for a format A frame with its CRCs, and for a wired frame
    a = wireless.add_crc(good, "A")
    assert wireless.decode_wmbus(a + b"\x00").extra["trailing_bytes"] == "00"
    raw = bytes.fromhex(LIBMBUS["GWF-MTKcoder"])
    assert wired.decode_rsp_ud(raw + b"\x00\x00").extra["trailing_bytes"] == "0000"


# 9 ------------------------------------------------------------------ CI 0x70

@pytest.mark.parametrize("name,code,reason", [
    ("premature_end_of_record", 4, "premature end of record"),
    ("too_many_vifes", 6, "more than 10 VIFEs"),
    ("buffer_too_long", 2, "buffer too long, truncated"),
    ("error", None, "unspecified error"),
])
def test_application_error_is_the_meters_error(name: str, code: int | None, reason: str) -> None:
    raw = next(bytes.fromhex(f["hex"]) for f in CORPUS["libmbus_error_frames"]
               if f["name"] == name)
    with pytest.raises(ApplicationError) as info:
        wired.decode_rsp_ud(raw)
    exc = info.value
    assert exc.event == "meter.application_error"
    assert (exc.code, exc.reason) == (code, reason)
    assert reason in str(exc) and "\n" not in str(exc)


def test_application_error_with_a_long_header_names_the_meter() -> None:
    raw = long_frame("05", "6F78563412" "2D2C" "01" "07" "2A" "00" "0000")
    with pytest.raises(ApplicationError) as info:
        wired.decode_rsp_ud(raw)
    assert info.value.code == 5 and info.value.header["id"] == "12345678"
    assert info.value.header["manufacturer"] == "KAM"


def test_manufacturer_payloads_stay_available_for_profiles() -> None:
    from gateway.protocols.mbus.errors import UnsupportedError
    raw = bytearray.fromhex(WMBUS["xmq:HEAD:drivers/src/compact5.xmq:80"])  # CI 0xA2
    raw[8] = 0x99  # a version no meter profile describes (issue 13 reads the real one)
    raw = bytes(raw)
    with pytest.raises(UnsupportedError) as info:
        wireless.decode_wmbus(raw)
    assert info.value.payload == raw[10:] and info.value.payload[0] == 0xA2
    assert info.value.header["id"] == "66336633"
    # DIF 0x0F data after the records stay raw on the telegram
    t = wired.decode_rsp_ud(bytes.fromhex(LIBMBUS["ACW_Itron-BM-plus-m"]))
    assert t.manufacturer_data == bytes.fromhex("00017513")


def test_plain_text_after_the_vifes_is_read_when_the_standard_layout_cannot_be() -> None:
    # libmbus' example_plain_text_placement: 0xFC, VIFE 0x20 (per second), then "ABC"
    raw = bytes.fromhex("6819196808027278563412244001075500000003FC200343424115310007F16"
                        .replace("07F16", "7F16"))
    (r,) = wired.decode_rsp_ud(raw).records
    assert (r.quantity, r.unit, r.value) == ("ABC", "/s", 12565)
    # the standard layout wins whenever it fits (Elvaco CMa10, text then VIFE 0x74)
    t = wired.decode_rsp_ud(long_frame("02FC0348522574D411"))
    assert t.records[0].quantity == "%RH" and t.records[0].value_text() == "45.64"
    # and a text running past the frame either way stays refused
    with pytest.raises(MBusError):
        wired.decode_rsp_ud(long_frame("12FC1348522574B416"))

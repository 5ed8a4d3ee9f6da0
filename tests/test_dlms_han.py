"""Issue 14's HAN push defects, each with a byte-exact regression test: truncated
notifications, odd scaler_units and deviations, exact long values, SC 0x20 with a wrong
key, list identifiers, push object lists, P1 inside glo-ciphering, General-Block-Transfer."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.subcommands.decode_common import exact_str
from gateway.model import Reading
from gateway.protocols.dlms import DecryptError, DlmsError, axdr, cipher
from gateway.protocols.dlms.gbt import GbtAssembler, GbtError
from gateway.protocols.dlms.notification import (NoValidApdu, PushDecoder, PushError, Pushed,
                                                 PushParser, map_body, notification_values)
from gateway.protocols.dlms.values import datetime_ms, exact
from gateway.protocols.hdlc import LLC_RESPONSE, Address, HdlcFrame

ROOT = Path(__file__).resolve().parent.parent
CORPUS = {e["id"]: e for e in json.loads((ROOT / "tests/corpus/han.json").read_text())["han"]}
KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
ST = b"SIMPUSH1"

E_1_8_0 = bytes([1, 0, 1, 8, 0, 255])
E_1_7_0 = bytes([1, 0, 1, 7, 0, 255])
W = b"\x02\x02\x0f\x00\x16\x1b"  # scaler_unit {0, W}
HEADER = bytes.fromhex("0F40000001") + bytes.fromhex("0C07E6011801123A32FF800000")  # dev. unspec.


def entry(obis: bytes, value: bytes, su: bytes | None = b"\x02\x02\x0f\x00\x16\x1e") -> bytes:
    """structure{obis, value[, scaler_unit]} (su given raw)."""
    return (b"\x02" + bytes([3 if su is not None else 2]) + b"\x09\x06" + obis + value
            + (su or b""))


def notification(*entries: bytes) -> bytes:
    return HEADER + b"\x01" + bytes([len(entries)]) + b"".join(entries)


def frame(info: bytes, segmented: bool = False) -> bytes:
    return HdlcFrame(Address(16), Address.server(1, 17), 0x13, info, segmented).serialize()


def decode(*args: str, capsys) -> tuple[int, dict | None, str]:
    rc = main(["decode", "hdlc", *args, "--json"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


# ------------------------------------------------------------------ item 5: truncation

def test_structure_shorter_than_its_count_is_an_error():
    apdu = notification(entry(E_1_8_0, b"\x06\x00\x00\x10\x00"), entry(E_1_7_0, b"\x12\x05\xdc", W))
    assert [v.mantissa for v in map_body(PushParser().parse(apdu).body)] == [4096, 1500]
    for cut in range(len(HEADER) + 1, len(apdu)):
        with pytest.raises(DlmsError):
            PushParser().parse(apdu[:cut])
    # the array says 3 entries, 2 follow
    with pytest.raises(DlmsError, match="truncated after 2"):
        PushParser().parse(apdu[:len(HEADER) + 1] + b"\x03" + apdu[len(HEADER) + 2:])
    with pytest.raises(DlmsError, match="bytes after"):
        PushParser().parse(apdu + b"\x00")


def test_truncated_notification_in_hdlc_exits_2(capsys):
    apdu = notification(entry(E_1_8_0, b"\x06\x00\x00\x10\x00"), entry(E_1_7_0, b"\x12\x05\xdc", W))
    rc, _, err = decode(frame(LLC_RESPONSE + apdu[:-4]).hex(), capsys=capsys)
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1


# ------------------------------------------------------------------ item 6

@pytest.mark.parametrize("su", [b"\x00", b"\x02\x01\x0f\x00", b"\x02\x02\x00\x16\x1e",
                                b"\x01\x02\x0f\x00\x16\x1e", b"\x04\x08\xff",
                                b"\x02\x02\x09\x00\x16\x1e"])
def test_odd_scaler_unit_is_a_decode_error_or_unscaled(su):
    apdu = notification(entry(E_1_8_0, b"\x06\x00\x00\x10\x00", su))
    body = PushParser().parse(apdu).body
    try:
        values = map_body(body)
    except DlmsError as exc:
        assert "scaler_unit" in str(exc)
    else:  # null: as if absent (the unit the OBIS code implies, no scaling)
        assert su == b"\x00" and [(v.mantissa, v.exponent, v.unit) for v in values] == \
            [(4096, 0, "Wh")]


def test_deviation_8001_means_not_specified_and_odd_ones_never_raise_value_error():
    raw = bytes.fromhex("07E6011801123A32FF800100")
    assert datetime_ms(raw, "Europe/Oslo") == 1643047130000  # 18:58:50 Oslo = 17:58:50Z
    assert datetime_ms(raw) == datetime_ms(bytes.fromhex("07E6011801123A32FF800000"))
    for dev in (0x7FFF, 0x8001, 0x0385, 0xFC7B, 0x0001):
        b = raw[:9] + dev.to_bytes(2, "big") + raw[11:]
        assert isinstance(datetime_ms(b), int)
    for bad in ("07E6023001123A32FF000000", "07E6011801183A32FF000000"):  # 30 Feb, 24:58
        with pytest.raises(DlmsError):
            datetime_ms(bytes.fromhex(bad))
    apdu = HEADER[:5] + bytes.fromhex("0C07E6011801123A32FF800100") + HEADER[18:] + \
        b"\x01\x01" + entry(E_1_7_0, b"\x12\x05\xdc", W)
    assert PushParser(default_tz="Europe/Oslo").parse(apdu).time_ms == 1643047130000


# ------------------------------------------------------------------ item 7

def test_values_exact_at_any_length():
    big = 2 ** 64 - 1
    apdu = notification(entry(E_1_8_0, b"\x15" + big.to_bytes(8, "big"), b"\x02\x02\x0f\xfd\x16\x1e"))
    [v] = map_body(PushParser().parse(apdu).body)
    assert (v.mantissa, v.exponent) == (big, -3)
    assert exact_str(v.mantissa, v.exponent) == "18446744073709551.615"
    long_m = 12345678901234567890123456789012345678901234567890
    assert exact_str(long_m, -7) == "1234567890123456789012345678901234567890123.4567890"
    assert exact(long_m, 3) == Decimal(f"{long_m}000")
    assert Reading("m", "q", long_m, -2, "Wh", None, 0).value == Decimal(f"{long_m}E-2")


# ------------------------------------------------------------------ item 9

def test_sc_0x20_with_a_wrong_key_says_wrong_key_and_exits_3(capsys):
    plain = notification(entry(E_1_7_0, b"\x12\x05\xdc", W))
    g = cipher.encrypt(plain, ST, 9, KEY, None, 0x20).serialize()
    n = PushParser(KEY).parse(g)
    assert n.ciphered and map_body(n.body)[0].mantissa == 1500
    with pytest.raises(NoValidApdu, match="decryption gave no valid APDU: wrong key?"):
        PushParser(bytes(16)).parse(g)
    assert issubclass(NoValidApdu, DecryptError)
    rc, _, err = decode(g.hex(), "--key", "00" * 16, capsys=capsys)
    assert rc == 3 and "decryption gave no valid APDU: wrong key?" in err and err.count("\n") == 1
    rc, out, _ = decode(frame(LLC_RESPONSE + g).hex(), "--key", KEY.hex(), capsys=capsys)
    assert rc == 0 and out["readings"] == [{"obis": "1-0:1.7.0", "value": "1500", "unit": "W"}]


# ------------------------------------------------------------------ item 4

def test_positional_list_after_a_list_identifier():
    e = CORPUS["shrdzm:IM350:0"]
    body = [bytes([0, 6, 25, 9, 0, 255]), b"2221202033801", b"\x0e7!\x00", b"\x07\xe5\x03\x07\x07",
            2946830, 0, 887, 2116972, 73, 0, b"", b""]
    positional = e["cli_args"][1].split(",")
    got = {v.obis: (v.mantissa, v.unit) for v in map_body(body, positional=positional)}
    assert got == {"1-0:1.8.0": (2946830, "Wh"), "1-0:2.8.0": (0, "Wh"),
                   "1-0:3.8.0": (887, "varh"), "1-0:4.8.0": (2116972, "varh"),
                   "1-0:1.7.0": (73, "W"), "1-0:2.7.0": (0, "W")}


def test_im350_frame_byte_exact(capsys):
    e = CORPUS["shrdzm:IM350:0"]
    rc, out, err = decode(e["input_hex"], "--key", e["key"], *e["cli_args"], capsys=capsys)
    assert rc == 0, err
    assert out["ciphered"] and out["system_title"] == "534D53677004C446"
    assert {"obis": "1-0:1.7.0", "value": "73", "unit": "W"} in out["readings"]
    assert len(out["readings"]) == 6


# ------------------------------------------------------------------ item 12

def _def(cls: int, obis: bytes, attr: int) -> bytes:
    return b"\x02\x04\x12" + cls.to_bytes(2, "big") + b"\x09\x06" + obis + b"\x0f" + \
        bytes([attr]) + b"\x12\x00\x00"


PUSH_SETUP = bytes([0, 0, 25, 9, 0, 255])
CLOCK = bytes([0, 0, 1, 0, 0, 255])


def object_list_notification(extra: bytes = b"", count_delta: int = 0) -> bytes:
    defs = [_def(40, PUSH_SETUP, 2), _def(8, CLOCK, 2), _def(3, E_1_8_0, 2),
            _def(3, E_1_8_0, 3), _def(3, E_1_7_0, 2)]
    object_list = b"\x01" + bytes([len(defs)]) + b"".join(defs)
    values = [object_list, b"\x09\x0c" + bytes.fromhex("07E6011801123A32FF800000"),
              b"\x06" + (123456).to_bytes(4, "big"), b"\x02\x02\x0f\x02\x16\x1e",
              b"\x12\x05\xdc"]
    n = len(values) + count_delta
    return HEADER[:5] + b"\x00" + b"\x02" + bytes([n]) + b"".join(values) + extra


def test_push_object_list_maps_values_by_the_list():
    n = PushParser(default_tz="Europe/Oslo").parse(object_list_notification())
    assert n.time_ms == 1643047130000  # no header time: the pushed Clock object's
    got = map_body(n.body)
    assert [(v.obis, v.mantissa, v.exponent, v.unit) for v in got] == \
        [("1-0:1.8.0", 123456, 2, "Wh"), ("1-0:1.7.0", 1500, 0, "W")]


def test_push_object_list_with_more_or_fewer_values_is_reported():
    with pytest.raises(DlmsError, match="declares 5 objects, the notification carries 6"):
        map_body(PushParser().parse(object_list_notification(b"\x11\x07", 1)).body)
    apdu = object_list_notification()
    short = apdu[:apdu.rindex(b"\x12\x05\xdc")]
    short = short[:6] + b"\x02\x04" + short[8:]
    with pytest.raises(DlmsError, match="declares 5 objects, the notification carries 4"):
        map_body(PushParser().parse(short).body)


# ------------------------------------------------------------------ item 3

def test_p1_text_inside_general_glo_ciphering():
    e = CORPUS["dsmr_parser:test_parse_sagemcom_t210_d_r:encrypted"]
    n = PushParser(bytes.fromhex(e["key"]), bytes.fromhex(e["auth_key"])).parse(
        bytes.fromhex(e["input_hex"]))
    assert n.telegram is not None and n.telegram.check == "crc16" and n.body is None
    got = {v.obis: (v.mantissa, v.exponent, v.unit) for v in notification_values(n)}
    assert got["1-0:1.8.0"] == (6545766, 0, "Wh") and got["1-0:4.7.0"] == (166, 0, "var")
    bad = bytearray(cipher.decrypt(cipher.parse_glo(bytes.fromhex(e["input_hex"])),
                                   bytes.fromhex(e["key"]), bytes.fromhex(e["auth_key"])))
    bad[bad.index(b"!") + 1] ^= 0x01  # its CRC no longer matches
    g = cipher.encrypt(bytes(bad), ST, 1, KEY, KEY).serialize()
    with pytest.raises(DlmsError, match="P1 telegram"):
        PushParser(KEY, KEY).parse(g)


# ------------------------------------------------------------------ item 11

def gbt_blocks(apdu: bytes, size: int, first: int = 1) -> list[bytes]:
    parts = [apdu[i:i + size] for i in range(0, len(apdu), size)]
    return [b"\xe0" + bytes([0xC0 if i == len(parts) - 1 else 0x40]) + (first + i).to_bytes(2, "big")
            + b"\x00\x00" + cipher.encode_length(len(p)) + p for i, p in enumerate(parts)]


def test_gbt_reassembly_and_a_lost_block():
    plain = notification(entry(E_1_8_0, b"\x06\x00\x00\x10\x00"), entry(E_1_7_0, b"\x12\x05\xdc", W))
    g = cipher.encrypt(plain, ST, 5, KEY, KEY).serialize()
    blocks = gbt_blocks(g, 20)
    assert len(blocks) >= 3
    a = GbtAssembler()
    assert [a.add(b) for b in blocks[:-1]] == [None] * (len(blocks) - 1)
    assert a.add(blocks[-1]) == g
    assert a.add(plain) == plain  # not GBT: passes through
    errors = 0
    for b in [blocks[0]] + blocks[2:]:  # block 2 lost
        try:
            assert a.add(b) is None
        except GbtError:
            errors += 1
    assert errors == 1 and a.lost == 1
    assert [a.add(b) for b in blocks][-1] == g  # the next transfer is whole again


def test_gbt_in_hdlc_through_the_push_decoder_one_frame_error_no_partial_readings():
    plain = notification(entry(E_1_8_0, b"\x06\x00\x00\x10\x00"), entry(E_1_7_0, b"\x12\x05\xdc", W))
    g = cipher.encrypt(plain, ST, 5, KEY, KEY).serialize()
    blocks = gbt_blocks(g, 24)
    lost = [b for i, b in enumerate(blocks) if i != 1]
    dec = PushDecoder(PushParser(KEY, KEY))
    events = []
    for b in lost + blocks:
        dec.receive_data(frame(LLC_RESPONSE + b))
        while (ev := dec.next_event()) is not None and isinstance(ev, (Pushed, PushError)):
            events.append(ev)
    assert [type(e).__name__ for e in events] == ["PushError", "Pushed"]
    assert events[0].kind == "meter.frame_error" and "lost" in events[0].reason
    got = [(v.obis, v.mantissa) for v in notification_values(events[1].notification)]
    assert got == [("1-0:1.8.0", 4096), ("1-0:1.7.0", 1500)]


def test_gbt_frames_decode_with_the_command(capsys):
    plain = notification(entry(E_1_7_0, b"\x12\x05\xdc", W))
    hexes = "".join(frame(LLC_RESPONSE + b).hex() for b in gbt_blocks(plain, 10))
    rc, out, err = decode(hexes, capsys=capsys)
    assert rc == 0, err
    assert out["readings"] == [{"obis": "1-0:1.7.0", "value": "1500", "unit": "W"}]
    rc, _, err = decode("".join(frame(LLC_RESPONSE + b).hex() for b in gbt_blocks(plain, 10)[:-1]),
                        capsys=capsys)
    assert rc == 2 and "last block" in err


def test_axdr_types():
    v = axdr.decode_all(bytes.fromhex("0208" "0300" "0403A0" "1400000000000000FF" "173FC00000"
                                      "1A07E60118FF" "0A0141" "1603" "00"))
    assert v == (False, axdr.BitString(3, b"\xa0"), 255, 1.5,
                 axdr.CosemTime(bytes.fromhex("07E60118FF")), "A", 3, None)
    assert isinstance(v[6], axdr.EnumValue) and str(v[1]) == "101"
    for bad in ("13", "FF", "0182", "020300", "0904AABB", "01" + "81FF" + "00", "2A"):
        with pytest.raises(DlmsError):
            axdr.decode_all(bytes.fromhex(bad))
    deep = bytes.fromhex("0201" * 40 + "00")
    with pytest.raises(DlmsError, match="nested"):
        axdr.decode_all(deep)


# A real push with a version-1 push object list (6-element capture definitions: restriction
# and columns), in an IEC 62056-47 wrapper, from a public test of another project.
WRAPPED_OBJECT_LIST_PUSH = (
    "000100010040018f0f400000010c07ea0a07030e3129fffed400020c010c0206120028"
    "09060001190900ff0f0212000002021600000100020612000109060001600586ff0f02"
    "120000020216000001000206120001090600002a0000ff0f02120000020216000001"
    "00020612000109060000600100ff0f02120000020216000001000206120003090601"
    "00010800ff0f0212000002021600000100020612000309060100010800ff0f031200"
    "0002021600000100020612000309060100020800ff0f021200000202160000010002"
    "0612000309060100020800ff0f031200000202160000010002061200030906010003"
    "0800ff0f0212000002021600000100020612000309060100030800ff0f031200000202"
    "1600000100020612000309060100040800ff0f02120000020216000001000206120003"
    "09060100040800ff0f031200000202160000010016020910454c433038323653334430"
    "3031393531090b3937363030303031393531060000005102020f01161e060000000d"
    "02020f01161e060000005502020f011620060000000602020f011620")


def test_real_push_object_list_with_capture_definitions_v1(capsys):
    rc, out, err = decode(WRAPPED_OBJECT_LIST_PUSH, capsys=capsys)
    assert rc == 0, err
    assert out["readings"] == [{"obis": "1-0:1.8.0", "value": "810", "unit": "Wh"},
                               {"obis": "1-0:2.8.0", "value": "130", "unit": "Wh"},
                               {"obis": "1-0:3.8.0", "value": "850", "unit": "varh"},
                               {"obis": "1-0:4.8.0", "value": "60", "unit": "varh"}]
    assert out["time"] == "2026-10-07T09:49:41Z"  # 14:49:41 local, deviation -300 (UTC+5)
    for cut in (20, 200, 398):  # each cut (with the wrapper's length kept right) refused
        raw = bytes.fromhex(WRAPPED_OBJECT_LIST_PUSH)[8:8 + cut]
        wrapped = bytes.fromhex("0001000100400000")[:6] + len(raw).to_bytes(2, "big") + raw
        rc, _, err = decode(wrapped.hex(), capsys=capsys)
        assert rc == 2 and err.count("\n") == 1


def test_meter_time_from_the_pushed_clock_when_the_header_has_none(capsys):
    e = CORPUS["amshan:test_aidon:se_list"]
    assert e["input_hex"][10:12] == "00"  # no date-time in the header
    rc, out, err = decode(e["input_hex"], "--tz", "Europe/Stockholm", capsys=capsys)
    assert rc == 0, err
    assert out["time"] == "2019-12-16T06:59:40Z"  # 07:59:40 Stockholm (CET), 0-0:1.0.0


def test_polled_scaler_unit_and_gurux_datetimes_never_raise_other_errors():
    import datetime as dt
    from gateway.protocols.dlms import load_gurux
    from gateway.protocols.dlms.client import scaler_unit
    assert scaler_unit([-1, 35], "1-0:32.7.0") == (-1, "V")
    for bad in (None, [None, 30], [b"\x01", 30], [[1], 30], 5, [300, 30], [1, 2, 3]):
        with pytest.raises(DlmsError):
            scaler_unit(bad, "1-0:1.8.0")
    load_gurux()
    from gurux_dlms import GXDateTime
    naive = GXDateTime()
    naive.value = dt.datetime(2022, 1, 24, 18, 58, 50)  # as gurux parses deviation 0x8000
    assert datetime_ms(naive, "Europe/Oslo") == 1643047130000  # no deviation: local time
    naive.skip = 0x01  # year not specified
    assert datetime_ms(naive) is None
    with pytest.raises(DlmsError):
        datetime_ms(object())


def test_push_decoding_does_not_import_gurux():
    """A HAN-only gateway has no business loading gurux (issue 17's memory budget)."""
    import subprocess
    import sys
    code = ("import sys; from gateway.drivers.dlms import DlmsDriver; "
            "from gateway.protocols.dlms.notification import PushDecoder, PushParser; "
            "from tests.test_dlms_han import CORPUS; "
            "e = CORPUS['amshan:test_kamstrup:comment_frame_7EA0E2']; "
            "d = PushDecoder(PushParser()); d.receive_data(bytes.fromhex(e['input_hex'])); "
            "ev = d.next_event(); assert ev.notification.body, ev; "
            "assert 'gurux_dlms' not in sys.modules, 'gurux imported'")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()[-500:]


def test_a_lost_hdlc_segment_is_one_frame_error_and_the_next_apdu_reads():
    plain = notification(entry(E_1_8_0, b"\x06\x00\x00\x10\x00"), entry(E_1_7_0, b"\x12\x05\xdc", W))
    info = LLC_RESPONSE + plain
    segs = [info[i:i + 20] for i in range(0, len(info), 20)]
    frames = [frame(p, i < len(segs) - 1) for i, p in enumerate(segs)]
    dec = PushDecoder(PushParser())
    dec.receive_data(b"".join(frames[:1] + frames[2:-1]))  # segment 2 lost, no last one
    dec.receive_data(frame(info))  # the next APDU, unsegmented
    events = []
    while not isinstance(ev := dec.next_event(), type(None)) and hasattr(ev, "route"):
        events.append(ev)
    assert [type(e).__name__ for e in events] == ["PushError", "Pushed"]
    assert events[0].kind == "meter.frame_error" and "segment lost" in events[0].reason
    assert [v.mantissa for v in notification_values(events[1].notification)] == [4096, 1500]


# ------------------------------------------------------------------ DLMS in M-Bus frames

def mbus_frames(apdu: bytes, size: int = 200) -> list[bytes]:
    from gateway.protocols.dlms import mbus_link
    parts = [apdu[i:i + size] for i in range(0, len(apdu), size)]
    return [mbus_link.frame(p, i, i == len(parts) - 1) for i, p in enumerate(parts)]


def test_dlms_in_mbus_long_frames_kaifa_ma309(capsys):
    """Austrian Kaifa MA309: general-glo-ciphered (SC 0x20) notification split over M-Bus
    long frames (CI 0x00, 0x11: sequence and last-segment bit)."""
    body = b"".join(entry(bytes([1, 0, c, d, 0, 255]), b"\x06" + v.to_bytes(4, "big"), su)
                    for c, d, v, su in ((1, 8, 14159934, b"\x02\x02\x0f\x00\x16\x1e"),
                                        (1, 7, 544, W)))
    pad = entry(bytes([0, 0, 96, 1, 0, 255]), b"\x09\x40" + b"K" * 64, None)
    plain = HEADER + b"\x01\x03" + pad + body
    g = cipher.encrypt(plain, b"KFM\x10\x20\x30\x40\x50", 77, KEY, None, 0x20).serialize()
    frames = mbus_frames(g, 100)
    assert len(frames) == 2 and frames[0][6] == 0x00 and frames[1][6] == 0x11
    rc, out, err = decode("".join(f.hex() for f in frames), "--key", KEY.hex(), capsys=capsys)
    assert rc == 0, err
    assert out["readings"] == [{"obis": "1-0:1.8.0", "value": "14159934", "unit": "Wh"},
                               {"obis": "1-0:1.7.0", "value": "544", "unit": "W"}]
    bad = bytearray(frames[1])
    bad[-2] ^= 1  # checksum
    rc, _, err = decode(frames[0].hex() + bytes(bad).hex(), "--key", KEY.hex(), capsys=capsys)
    assert rc == 2 and "no complete DLMS APDU" in err
    # the push decoder: each APDU that lost a segment is one frame error (here: one that
    # lost its first, one that lost its last), garbage is skipped, the next APDU reads
    dec = PushDecoder(PushParser(KEY), framing="mbus")
    events = []
    for chunk in (frames[1], frames[0], b"\x68garbage", frames[0], frames[1]):
        dec.receive_data(chunk)
        while hasattr(ev := dec.next_event(), "route"):
            events.append(ev)
    assert [type(e).__name__ for e in events] == ["PushError", "PushError", "Pushed"]
    assert {e.kind for e in events[:2]} == {"meter.frame_error"}
    assert [v.mantissa for v in notification_values(events[2].notification)] == [14159934, 544]

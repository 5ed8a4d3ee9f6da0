"""Issue 12's new capabilities in the codec: payloads stored already decrypted, the wired
fixed data structure (CI 0x73/0x77), DES-CBC security modes 2/3, compact frames decoded
with a format learned from the meter's full frame, and decoding several telegrams as one
listening session. Property-based where the path parses bytes."""

from __future__ import annotations



import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.drivers.mbus import telegram_readings
from gateway.model import QUALITY_NOT_ENCRYPTED
from gateway.protocols.mbus import compact, fixed, records, security, wired, wireless
from gateway.protocols.mbus.errors import (
    ChecksumError, DecryptError, FrameError, MBusError, NoKeyError,
)
from tests.mbus_corpus_compare import CORPUS

WMBUS = {x["cid"]: x for x in CORPUS["wmbus"]}
KEY = bytes(range(16))


def frame(body: bytes) -> bytes:
    b = bytes.fromhex("0801") + body
    return bytes((0x68, len(b), len(b), 0x68)) + b + bytes((sum(b) & 0xFF, 0x16))


# --------------------------------------------------------------------------- already decrypted

@pytest.mark.parametrize("cid", ["xmq:HEAD:drivers/src/amiplus.xmq:184",
                                 "xmq:HEAD:drivers/src/dme173.xmq:74",
                                 "xmq:HEAD:drivers/src/kamheat.xmq:653"])
def test_payload_stored_decrypted_is_read_and_flagged(cid: str) -> None:
    raw = bytes.fromhex(WMBUS[cid]["hex"])
    t = wireless.decode_wmbus(raw)  # no key configured
    assert t.extra["not_encrypted"] is True and t.records
    readings = telegram_readings(t, "m", "radio", 0)
    assert readings and all(QUALITY_NOT_ENCRYPTED in r.quality for r in readings)
    # with a key configured it is decrypted as always, and that fails: no silent fallback
    with pytest.raises(DecryptError):
        wireless.decode_wmbus(raw, KEY)


def test_encrypted_payload_without_key_is_still_no_key() -> None:
    raw = wireless.encode_wmbus("KAM", "12345678", 1, 7, bytes.fromhex("0C1301000000"),
                                key=KEY, mode=5)
    with pytest.raises(NoKeyError):
        wireless.decode_wmbus(raw)
    t = wireless.decode_wmbus(raw, KEY)
    assert "not_encrypted" not in t.extra and t.records[0].value == 1
    assert not any(QUALITY_NOT_ENCRYPTED in r.quality for r in telegram_readings(t, "m", "b", 0))


# --------------------------------------------------------------------------- fixed structure

def test_fixed_data_structure_example() -> None:
    # ident 12345678, access 0x0A, status 0 (BCD, actual), counter 1 in litres (unit 0x29,
    # medium bits 11), counter 2 "same unit, historic" (0x3E, medium bits 01): water
    body = bytes.fromhex("73" "78563412" "0A" "00" "E9" "7E" "01000000" "35010000")
    t = wired.decode_rsp_ud(frame(body))
    assert (t.id, t.device_type, t.access_number, t.ci) == ("12345678", 0x07, 0x0A, 0x73)
    a, b = t.records
    assert (a.quantity, a.unit, a.value_text(), a.storage) == ("Volume", "m3", "0.001", 0)
    assert (b.quantity, b.unit, b.value_text(), b.storage) == ("Volume", "m3", "0.135", 1)
    assert t.extra["fixed_structure"] == {"medium": 0x0D, "counter_coding": "BCD",
                                          "historic": False}
    assert fixed.encode_fixed("12345678", 0x0A, 0, 0xE9, 0x7E, 1, 135) == body[1:]


@settings(max_examples=300)
@given(ident=st.integers(0, 99_999_999), access=st.integers(0, 255),
       status=st.integers(0, 255), u1=st.sampled_from(sorted(fixed.UNITS)),
       u2=st.sampled_from(sorted(fixed.UNITS) + [fixed.SAME_BUT_HISTORIC]),
       m1=st.integers(0, 3), m2=st.integers(0, 3), c1=st.integers(0, 99_999_999),
       c2=st.integers(0, 99_999_999), msb=st.booleans())
def test_fixed_structure_round_trip(ident: int, access: int, status: int, u1: int, u2: int,
                                    m1: int, m2: int, c1: int, c2: int, msb: bool) -> None:
    ident_s = f"{ident:08d}"
    b = fixed.encode_fixed(ident_s, access, status, u1 | m1 << 6, u2 | m2 << 6, c1, c2,
                           msb=msb)
    t = wired.decode_rsp_ud(frame(bytes((0x77 if msb else 0x73,)) + b))
    assert t.id == ident_s and t.access_number == access and t.status == status & 0x3F
    assert t.extra["fixed_structure"]["medium"] == (m1 << 2 | m2)
    assert [r.value for r in t.records] == [c1, c2]
    hist = 1 if status & 0x40 else 0
    assert t.records[0].storage == hist
    assert t.records[1].storage == (1 if u2 == fixed.SAME_BUT_HISTORIC else hist)


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=40))
def test_fixed_structure_random_bytes_raise_only_mbus_errors(data: bytes) -> None:
    for ci in (0x73, 0x77):
        try:
            wired.decode_rsp_ud(frame(bytes((ci,)) + data))
        except MBusError as exc:
            assert "internal decoder error" not in str(exc)


# --------------------------------------------------------------------------- DES (modes 2/3)

def test_des_cbc_against_fips_81() -> None:
    key = bytes.fromhex("0123456789ABCDEF")
    iv = bytes.fromhex("1234567890ABCDEF")
    plain = b"Now is the time for all "
    cipher = bytes.fromhex("E5C7CDDE872BF27C43E934008C389C0F683788499A7C05F6")
    assert security.des_cbc_encrypt(key, iv, plain) == cipher
    assert security.des_cbc_decrypt(key, iv, cipher) == plain


def des_frame(key: bytes, apl: bytes, mode: int, *, blocks: bool = True) -> bytes:
    mfr, ident = bytes.fromhex("2D2C"), bytes.fromhex("78563412")
    plain = b"\x2f\x2f" + apl
    plain += b"\x2f" * (-len(plain) % 8)
    n = len(plain) // 8
    iv = security.des_iv(mfr, ident + bytes((1, 7))) if mode == 3 else bytes(8)
    config = (mode << 8) | ((n if blocks else 0) << 4)
    head = ident + mfr + bytes((1, 7, 0x2A, 0)) + config.to_bytes(2, "little")
    return frame(b"\x72" + head + security.des_cbc_encrypt(key, iv, plain))


records_strategy = st.lists(
    st.tuples(st.sampled_from([b"\x13", b"\x06", b"\x2b", b"\x5b", b"\xfd\x17"]),
              st.sampled_from([1, 2, 4]), st.integers(0, 2 ** 31 - 1)),
    min_size=1, max_size=12)


def build_apl(recs: list[tuple[bytes, int, int]]) -> bytes:
    return b"".join(records.encode_record(vib, *records.encode_int(v % (1 << (8 * n - 1)), n))
                    for vib, n, v in recs)


@settings(max_examples=200)
@given(key=st.binary(min_size=8, max_size=8), recs=records_strategy,
       mode=st.sampled_from([2, 3]), blocks=st.booleans())
def test_des_modes_round_trip(key: bytes, recs: list[tuple[bytes, int, int]], mode: int,
                              blocks: bool) -> None:
    apl = build_apl(recs)
    assume(len(apl) + 2 <= 15 * 8 or not blocks)
    raw = des_frame(key, apl, mode, blocks=blocks)
    t = wired.decode_rsp_ud(raw, key)
    assert t.security_mode == mode
    assert [r.raw for r in t.records] == [r.raw for r in records.parse_records(apl)[0]]
    other = bytes(b ^ 0xFE for b in key)  # flips key bits, not only DES parity bits
    try:
        wired.decode_rsp_ud(raw, other)
    except DecryptError:
        pass
    with pytest.raises(NoKeyError):
        wired.decode_rsp_ud(raw)


# --------------------------------------------------------------------------- compact frames

def decode(frame: bytes, key: bytes | None = None, **kw: object) -> object:
    """As a dongle delivers telegrams: block CRCs removed (so no frame format guessing,
    which a random payload could fool)."""
    return wireless.decode_wmbus(frame, key, fmt="none", **kw)  # type: ignore[arg-type]


def radio(apl_ci: int, body: bytes, ident: str = "12345678") -> bytes:
    return wireless.finish(wireless.dll(0x44, "KAM", ident, 0x1B, 0x16) + bytes((apl_ci,)) + body)


@settings(max_examples=300)
@given(recs=records_strategy, values=st.lists(st.integers(0, 127), min_size=12, max_size=12))
def test_compact_frame_decodes_after_its_full_frame(recs: list[tuple[bytes, int, int]],
                                                    values: list[int]) -> None:
    apl = build_apl(recs)
    later = build_apl([(v, n, values[i]) for i, (v, n, _) in enumerate(recs)])
    fmt, payload = compact.compact_payload(later)
    assert compact.signature(fmt) == int.from_bytes(payload[:2], "little")
    full = radio(0x78, apl)
    short = radio(0x79, payload)
    formats = compact.Formats()
    with pytest.raises(compact.CompactFormatUnknown) as info:
        decode(short, formats=formats)
    assert info.value.event == "meter.compact_format_unknown"
    assert info.value.signature == compact.signature(fmt)
    t_full = decode(full, formats=formats)
    t = decode(short, formats=formats)
    assert t.extra["compact"] is True
    expect = records.parse_records(later)[0]
    assert [(r.key, r.value, r.unit) for r in t.records] == \
        [(r.key, r.value, r.unit) for r in expect]
    assert len(t.records) == len(t_full.records)
    # what the driver keeps in its cursor brings the format back after a restart
    saved = formats.export("KAM:12345678")
    again = compact.Formats()
    again.load("KAM:12345678", saved)
    assert decode(short, formats=again).records == t.records
    # another meter's compact frame does not use this meter's format
    with pytest.raises(compact.CompactFormatUnknown):
        decode(radio(0x79, payload, "87654321"), formats=formats)


def test_compact_frame_with_short_header_and_mode5() -> None:
    apl = bytes.fromhex("0413" "39300000" "02FD17" "0000")
    fmt, payload = compact.compact_payload(apl)
    full = wireless.encode_wmbus("KAM", "12345678", 0x1B, 0x16, apl, key=KEY, mode=5,
                                 access=1)
    head = wireless.dll(0x44, "KAM", "12345678", 0x1B, 0x16)
    cw, enc = wireless.encrypt_mode5(KEY, head[1:3], head[3:9], 2, payload)
    short = wireless.finish(head + bytes((0x7B, 2, 0)) + cw.to_bytes(2, "little") + enc)
    t_full, t = wireless.decode_session([full, short], KEY, fmt="none")
    assert t.records[0].value == 12345 and t.ci == 0x7B and t.extra["compact"]


def test_session_decodes_several_telegrams_in_order() -> None:
    apl = bytes.fromhex("0413" "39300000")
    _, payload = compact.compact_payload(bytes.fromhex("0413" "3A300000"))
    short, full = radio(0x79, payload), radio(0x78, apl)
    first, second, third = wireless.decode_session([short, full, short], fmt="none")
    assert isinstance(first, compact.CompactFormatUnknown)
    assert second.records[0].value == 12345 and third.records[0].value == 12346


def test_compact_frame_whose_data_do_not_fit_the_format_is_refused() -> None:
    apl = bytes.fromhex("0413" "39300000")
    formats = compact.Formats()
    decode(radio(0x78, apl), formats=formats)
    _, payload = compact.compact_payload(apl)
    with pytest.raises(FrameError, match="more than its format"):
        decode(radio(0x79, payload + b"\x00"), formats=formats)
    with pytest.raises(MBusError, match="needs 4 data bytes"):
        decode(radio(0x79, payload[:-1]), formats=formats)


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_compact_frames_with_random_data_raise_only_mbus_errors(data: bytes) -> None:
    formats = compact.Formats()
    decode(radio(0x78, bytes.fromhex("0413393000000259BC06")), formats=formats)
    sig = compact.signature(bytes.fromhex("04130259")).to_bytes(2, "little")
    for body in (data, sig + data):
        for ci in (0x79, 0x7B, 0x73):
            try:
                decode(radio(ci, body), formats=formats)
            except MBusError as exc:
                assert "internal decoder error" not in str(exc)


def test_formats_load_ignores_what_is_not_a_format() -> None:
    f = compact.Formats()
    for junk in (None, 5, "x", {"ZZZZ": "00"}, {"0000": "nothex"}, {"1234": "0413"}):
        f.load("m", junk)
    assert f.by_meter == {}


def test_formats_are_bounded_per_meter() -> None:
    f = compact.Formats()
    for i in range(40):
        recs = records.parse_records(records.encode_record(b"\x13", *records.encode_int(0, 4))
                                     * (i + 1))[0]
        f.learn("m", recs)
    assert len(f.by_meter["m"]) == compact.MAX_FORMATS_PER_METER




# --------------------------------------------------------------------------- the CLI

def test_decode_cli_takes_several_telegrams_as_one_session(
        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from gateway.cli import main as cli_main
    _, payload = compact.compact_payload(bytes.fromhex("0413" "3A300000"))
    short, full = radio(0x79, payload).hex(), radio(0x78, bytes.fromhex("0413" "39300000")).hex()
    assert cli_main(["decode", "wmbus", full, short, "--json"]) == 0
    a, b = json.loads(capsys.readouterr().out)
    assert a["records"][0]["value"] == "12.345" and b["records"][0]["value"] == "12.346"
    assert b["compact"] is True
    # a compact frame before its full frame: that telegram fails in one line, the rest decode
    assert cli_main(["decode", "wmbus", short, full, short]) == 2
    cap = capsys.readouterr()
    assert cap.err.strip().startswith("error: telegram 1: wmbus: compact frame with format")
    assert cap.err.count("\n") == 1 and "telegram 3:" in cap.out and "12.346" in cap.out
    # wired frames too, and one HEX still prints one object
    wired_hex = CORPUS["libmbus_frames"][0]["hex"]
    assert cli_main(["decode", "mbus", wired_hex, wired_hex, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert cli_main(["decode", "mbus", wired_hex, "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), dict)


def test_meter_keys_are_aes_or_des_sized() -> None:
    from gateway.drivers.mbus import meter_key
    check = meter_key()
    assert check.convert("00" * 16) == bytes(16) and check.convert("01" * 8) == b"\x01" * 8
    for bad in ("00" * 12, "0" * 31, "zz" * 8):
        with pytest.raises(ValueError):
            check.convert(bad)
    # a 16-byte key on a DES frame, or an 8-byte key on an AES frame, is a decrypt failure
    raw = des_frame(b"\x01" * 8, bytes.fromhex("0C1301000000"), 3)
    with pytest.raises(DecryptError, match="8-byte key"):
        wired.decode_rsp_ud(raw, KEY)
    aes = wireless.encode_wmbus("KAM", "12345678", 1, 7, bytes.fromhex("0C1301000000"),
                                key=KEY, mode=5)
    with pytest.raises(DecryptError, match="16-byte key"):
        decode(aes, b"\x01" * 8)


def test_kamstrup_style_compact_frame_inside_an_encrypted_ell() -> None:
    # the records of a real flowIQ full frame (CI 0x78 in an ELL), then its compact frame
    full_hex = WMBUS["xmq:HEAD:drivers/src/kamwater.xmq:500"]["hex"]
    full = bytes.fromhex(full_hex)
    t_full = decode(full)
    apl = b"".join(r.dib + r.vib + r.raw for r in t_full.records)
    fmt, body = compact.compact_payload(apl)
    assert fmt.hex().upper().startswith("04FF23")  # DIB/VIB bytes as the meter sent them
    head = dict(manufacturer=t_full.manufacturer, ident=t_full.id, version=t_full.version,
                device_type=t_full.device_type)
    full_enc = wireless.encode_ell_ctr(head["manufacturer"], head["ident"], head["version"],
                                       head["device_type"], b"\x78" + apl, key=KEY, session=1)
    short_enc = wireless.encode_ell_ctr(head["manufacturer"], head["ident"], head["version"],
                                        head["device_type"], b"\x79" + body, key=KEY, session=2)
    first, second = wireless.decode_session([full_enc, short_enc], KEY, fmt="none")
    assert second.extra["compact"] and second.extra["ell"]["encryption"] == 1
    assert [(r.key, r.value) for r in second.records] == [(r.key, r.value) for r in first.records]
    assert any(r.quantity == "Volume" and r.value_text() == "44.206" for r in second.records)


def test_compact_signature_starting_with_2f_is_not_taken_for_check_bytes() -> None:
    # records whose format signature begins with 0x2F (found by varying a storage number),
    # sent compactly without encryption: there are no check bytes to skip
    for storage in range(1, 1 << 20):
        apl = records.encode_record(b"\x13", *records.encode_int(7, 4)) \
            + records.encode_record(b"\x13", *records.encode_int(5, 4), storage=storage)
        fmt, payload = compact.compact_payload(apl)
        if payload[0] == 0x2F:
            break
    assert payload[0] == 0x2F
    formats = compact.Formats()
    decode(radio(0x78, apl), formats=formats)
    t = decode(radio(0x79, payload), formats=formats)
    assert [(r.key, r.value) for r in t.records] == [("Volume", 7),
                                                     (f"Volume/storage={storage}", 5)]


def test_compact_frame_from_a_real_meter_pair_checks_its_full_frame_crc() -> None:
    # a full frame (CI 0x78) and the same meter's compact frame (CI 0x79), as captured and
    # published in another project's regression tests: signature F1E7, full-frame CRC FCA3
    full_apl = bytes.fromhex("780306EB24004306E723000314285E00426CBF2C022D030001FF2100")
    compact_apl = bytes.fromhex("79E7F1A3FCED2400E723002E5E00BF2C0D0000")
    fmt = compact.format_bytes(records.parse_records(full_apl, 1)[0])
    assert fmt == bytes.fromhex("030643060314426C022D01FF21")
    assert compact.signature(fmt) == 0xF1E7
    full, short = radio(full_apl[0], full_apl[1:]), radio(compact_apl[0], compact_apl[1:])
    t_full, t = wireless.decode_session([full, short], fmt="none")
    assert [r.key for r in t.records] == [r.key for r in t_full.records]
    assert t.records[0].value == 0x0024ED and t.records[2].value == 0x005E2E
    # one data bit changed: the rebuilt records no longer match the meter's CRC
    bad = bytearray(short)
    bad[-3] ^= 0x01
    _, refused = wireless.decode_session([full, bytes(bad)], fmt="none")
    assert isinstance(refused, ChecksumError) and "full-frame CRC" in str(refused)

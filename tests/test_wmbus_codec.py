"""Wireless M-Bus: the real-meter vectors (mode 5, ELL AES-CTR, plain), block CRCs of
frame formats A and B, security mode 7 built from the OMS key derivation and AES-CMAC
definitions (no public capture exists), RFC 4493 CMAC vectors, distinct failures, the two
dongle framings, and random input raising only the codec's error."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli import main as cli_main
from gateway.protocols.mbus import amb8465, im871a, security, wireless
from gateway.protocols.mbus import records as rec
from gateway.protocols.mbus.crc import crc_en13757, crc_x25
from gateway.protocols.mbus.errors import (
    AuthError, ChecksumError, DecryptError, FrameError, MBusError, NoKeyError, TruncatedError,
    UnsupportedError, UnsupportedSecurityError,
)
from gateway.protocols.mbus.wireless import decode_wmbus

DATA = json.loads((Path(__file__).parent / "vectors" / "mbus.json").read_text())
WMBUS = [v for v in DATA["vectors"] if v["protocol"] == "wmbus"]
BY_NAME = {v["name"].split()[0]: v for v in WMBUS}


def key_of(v: dict) -> bytes | None:
    return bytes.fromhex(v["key"]) if v["key"] else None


@pytest.mark.parametrize("vector", WMBUS, ids=[v["name"].split()[0] for v in WMBUS])
def test_real_meter_vectors(vector: dict) -> None:
    frame = bytes.fromhex(vector["hex"])
    g = vector["gateway"]
    exp = vector["expected"]
    if g.get("error"):
        with pytest.raises(FrameError) as exc:
            decode_wmbus(frame, key_of(vector))
        assert exc.value.header["id"] == exp["id"]
        return
    t = decode_wmbus(frame, key_of(vector))
    assert t.id == exp["id"]
    by_key: dict[str, object] = {}
    for r in t.records:
        by_key.setdefault(r.key, r)
    for check in g["records"]:
        r = by_key[check["key"]]
        assert r.unit == check["unit"], check
        if r.is_numeric:
            assert r.decimal() == Decimal(check["value"]), check
        else:
            assert r.value == check["value"], check
    assert t.status_flags == g.get("status_flags", [])
    if "frame_format" in g:
        assert t.extra["frame_format"] == g["frame_format"]


def test_mode5_details_and_iv_from_long_header() -> None:
    elf = decode_wmbus(bytes.fromhex(BY_NAME["elf2"]["hex"]), key_of(BY_NAME["elf2"]))
    assert (elf.security_mode, elf.access_number, elf.manufacturer) == (5, 0x35, "APA")
    # CI 0x72: the IV takes M and A from the long TPL header
    av = decode_wmbus(bytes.fromhex(BY_NAME["aventieswm"]["hex"]), key_of(BY_NAME["aventieswm"]))
    assert av.ci == 0x72 and av.id == "61070071" and "dll" not in av.extra
    # a long header naming another meter than the DLL (e.g. behind a repeater) is kept apart
    apl = rec.encode_record(b"\x13", *rec.encode_int(5, 4))
    body = wireless.dll(0x44, "KAM", "99999999", 1, 0x31) + bytes((0x72,)) + \
        bytes.fromhex("78563412") + (0x2C2D).to_bytes(2, "little") + bytes((3, 7)) + \
        wireless.tpl_short(1, 0, 0)[1:] + apl
    t = decode_wmbus(wireless.finish(body))
    assert t.id == "12345678" and t.extra["dll"]["id"] == "99999999"
    # unencrypted trailing records after the encrypted blocks are decoded too
    ws = decode_wmbus(bytes.fromhex(BY_NAME["waterstarm"]["hex"]), key_of(BY_NAME["waterstarm"]))
    assert ws.records[-1].quantity == "Parameter set identification"


def test_ell_aes_ctr_kamstrup() -> None:
    v = BY_NAME["kamwater"]
    t = decode_wmbus(bytes.fromhex(v["hex"]), key_of(v))
    assert t.extra["ell"]["encryption"] == 1 and t.access_number == 0x91
    assert t.ci == 0x78 and t.manufacturer == "KAM" and t.device_type_name == "cold water"
    with pytest.raises(DecryptError, match="decrypt failed"):
        decode_wmbus(bytes.fromhex(v["hex"]), bytes(16))
    with pytest.raises(NoKeyError):
        decode_wmbus(bytes.fromhex(v["hex"]))


def test_failures_are_told_apart() -> None:
    v = BY_NAME["elf2"]
    frame = bytes.fromhex(v["hex"])
    with pytest.raises(NoKeyError) as e1:
        decode_wmbus(frame)
    with pytest.raises(DecryptError) as e2:
        decode_wmbus(frame, bytes(16))
    with pytest.raises(TruncatedError) as e3:
        decode_wmbus(frame[:60])
    damaged = wireless.add_crc(frame, "A")
    damaged = damaged[:30] + bytes((damaged[30] ^ 1,)) + damaged[31:]
    with pytest.raises(ChecksumError) as e4:
        decode_wmbus(damaged, key_of(v))
    gcm = frame[:13] + bytes((frame[13], (frame[14] & 0xE0) | 9)) + frame[15:]
    with pytest.raises(UnsupportedSecurityError) as e5:
        decode_wmbus(gcm, key_of(v))
    kinds = [e.value.event for e in (e1, e2, e3, e4, e5)]
    assert kinds == ["meter.no_key", "meter.decrypt_failed", "meter.truncated",
                     "meter.crc_error", "meter.unsupported_security"]
    assert all(e.value.header["id"] == "24271170" for e in (e1, e2, e3, e4, e5))


# --------------------------------------------------------------------------- block CRCs

def test_crc_definitions() -> None:
    # CRC-16/EN-13757 and CRC-16/X-25 check values ("123456789")
    assert crc_en13757(b"123456789") == 0xC2B7
    assert crc_x25(b"123456789") == 0x906E


@pytest.mark.parametrize("fmt", ["A", "B"])
@pytest.mark.parametrize("name", ["elf2", "iperl", "aventieswm", "kamwater"])
def test_frame_formats_with_crcs(fmt: str, name: str) -> None:
    v = BY_NAME[name]
    stripped = bytes.fromhex(v["hex"])
    with_crc = wireless.add_crc(stripped, fmt)
    assert wireless.strip_crc(with_crc, fmt) == (stripped, fmt)
    assert wireless.strip_crc(with_crc)[0] == stripped  # auto recognises both
    t1 = decode_wmbus(with_crc, key_of(v))
    t2 = decode_wmbus(stripped, key_of(v))
    assert [r.value for r in t1.records] == [r.value for r in t2.records]
    bad = bytearray(with_crc)
    bad[12] ^= 0x40
    with pytest.raises(ChecksumError):
        wireless.strip_crc(bytes(bad), fmt)


def test_long_format_b_frame_has_three_blocks() -> None:
    apl = b"".join(rec.encode_record(b"\x13", *rec.encode_int(i, 4), storage=i)
                   for i in range(1, 22))
    frame = wireless.encode_wmbus("KAM", "12345678", 1, 7, apl)
    assert len(frame) > 126
    b = wireless.add_crc(frame, "B")
    assert len(b) == len(frame) + 4 and b[0] == len(b) - 1
    assert decode_wmbus(b).records[-1].value == 21
    assert decode_wmbus(wireless.add_crc(frame, "A"), fmt="A").records[-1].storage == 21


# --------------------------------------------------------------------------- mode 7

KEY7 = bytes.fromhex("000102030405060708090A0B0C0D0E0F")


def _cmac(key: bytes, msg: bytes) -> bytes:
    c = cmac.CMAC(algorithms.AES(key))
    c.update(msg)
    return c.finalize()


def test_rfc4493_aes_cmac_vectors() -> None:
    v = DATA["rfc4493_cmac"]
    for msg, tag in v["cases"]:
        assert security.aes_cmac(bytes.fromhex(v["key"]), bytes.fromhex(msg)).hex() == tag


def build_mode7(key: bytes, counter: int, apl: bytes) -> bytes:
    """A mode 7 telegram assembled by hand from EN 13757-7 / OMS Vol. 2 definitions."""
    dll = bytes.fromhex("44" "2D2C" "78563412" "01" "07")      # SND_NR, KAM, id 12345678
    meter_id = bytes.fromhex("78563412")
    c = counter.to_bytes(4, "little")
    kenc = _cmac(key, b"\x00" + c + meter_id + b"\x07" * 7)     # KDF-A, DC 00: Kenc
    kmac = _cmac(key, b"\x01" + c + meter_id + b"\x07" * 7)     # DC 01: Kmac
    plain = b"\x2f\x2f" + apl
    plain += b"\x2f" * (-len(plain) % 16)
    n = len(plain) // 16
    enc = Cipher(algorithms.AES(kenc), modes.CBC(bytes(16))).encryptor()
    cipher = enc.update(plain) + enc.finalize()
    cw = (7 << 8) | (n << 4)
    tpl = bytes((0x7A, 0x21, 0x00)) + cw.to_bytes(2, "little") + b"\x10" + cipher  # CFE: KDF-A
    mcl = 0x25                                                    # AT 5: CMAC, 8 bytes
    mac = _cmac(kmac, bytes((mcl,)) + c + tpl)[:8]
    fcl = 0x2000 | 0x0800 | 0x0400                                # MCL, MCR, MAC present
    afl = bytes((0x90, 2 + 1 + 4 + 8)) + fcl.to_bytes(2, "little") + bytes((mcl,)) + c + mac
    body = dll + afl + tpl
    return bytes((len(body),)) + body


def test_mode7_from_the_oms_definitions() -> None:
    apl = rec.encode_record(b"\x13", *rec.encode_int(4711, 4)) + \
        rec.encode_record(b"\x3b", *rec.encode_int(12, 2))
    frame = build_mode7(KEY7, 0x1234, apl)
    t = decode_wmbus(frame, KEY7)
    assert t.security_mode == 7 and t.extra["afl"]["counter"] == 0x1234
    assert [r.value_text() for r in t.records] == ["4.711", "0.012"]
    # the codec's own encoder produces the same bytes
    assert wireless.encode_wmbus("KAM", "12345678", 1, 7, apl, access=0x21, key=KEY7, mode=7,
                                 counter=0x1234) == frame
    with pytest.raises(AuthError, match="decrypt failed") as exc:
        decode_wmbus(frame, bytes(16))
    assert exc.value.event == "meter.auth_failed"
    tampered = frame[:-1] + bytes((frame[-1] ^ 1,))
    with pytest.raises(AuthError):
        decode_wmbus(tampered, KEY7)
    with pytest.raises(NoKeyError):
        decode_wmbus(frame)
    # without the AFL there is no counter, so no key can be derived
    assert frame[10] == 0x90 and frame[11] == 15
    no_afl = bytes((frame[0] - 17,)) + frame[1:10] + frame[10 + 17:]
    assert no_afl[10] == 0x7A
    with pytest.raises(UnsupportedSecurityError, match="AFL"):
        decode_wmbus(no_afl, KEY7)


def test_kdf_matches_definition() -> None:
    c, ident = 7, bytes.fromhex("78563412")
    assert security.oms_kdf(KEY7, 0, c, ident) == _cmac(KEY7, b"\x00" + c.to_bytes(4, "little")
                                                        + ident + b"\x07" * 7)


def test_encoders_round_trip_all_modes() -> None:
    apl = rec.encode_record(b"\x13", *rec.encode_int(99, 4))
    for mode in (0, 5, 7):
        f = wireless.encode_wmbus("LAS", "00010206", 0x14, 7, apl, access=9, key=KEY7, mode=mode,
                                  counter=3)
        t = decode_wmbus(f, KEY7)
        assert (t.security_mode, t.records[0].value, t.access_number) == (mode, 99, 9)
    ell = wireless.encode_ell_ctr("KAM", "76348799", 0x1B, 0x16, b"\x78" + apl, key=KEY7, acc=5)
    assert decode_wmbus(ell, KEY7).records[0].value == 99


# --------------------------------------------------------------------------- decode CLI

def test_decode_wmbus_command(capsys: pytest.CaptureFixture[str]) -> None:
    v = BY_NAME["kamwater"]
    assert cli_main(["decode", "wmbus", v["hex"], "--key", v["key"], "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    for k in ("manufacturer", "id", "version", "device_type", "access_number", "status",
              "records"):
        assert k in obj
    assert (obj["manufacturer"], obj["id"], obj["version"], obj["access_number"]) == \
        ("KAM", "76348799", 27, 145)
    vol = next(r for r in obj["records"] if r["quantity"] == "Volume" and r["storage"] == 0)
    assert vol == {"quantity": "Volume", "value": "6.408", "unit": "m3", "storage": 0,
                   "tariff": 0, "subunit": 0, "function": "instantaneous", "type": "number"}
    assert cli_main(["decode", "wmbus", v["hex"], "--key", "00" * 16]) == 3
    assert "decrypt failed" in capsys.readouterr().err
    elf = BY_NAME["elf2"]
    assert cli_main(["decode", "wmbus", elf["hex"], "--key", "11" * 16]) == 3
    assert "decrypt failed" in capsys.readouterr().err
    assert cli_main(["decode", "wmbus", elf["hex"]]) == 3  # encrypted, no key given
    assert "decrypt failed" in capsys.readouterr().err
    assert cli_main(["decode", "wmbus", elf["hex"][:40]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated" in err
    assert cli_main(["decode", "wmbus", "0011"]) == 2
    assert cli_main(["decode", "wmbus", elf["hex"], "--key", "abcd"]) == 2
    assert cli_main(["decode", "wmbus", BY_NAME["iperl"]["hex"]]) == 0
    assert "123.529 m3" in capsys.readouterr().out


# --------------------------------------------------------------------------- dongle framings

@pytest.mark.parametrize("ts,rssi,crc", [(None, None, False), (123456, 200, True),
                                         (None, 90, True), (7, None, False)])
def test_hci_round_trip(ts: int | None, rssi: int | None, crc: bool) -> None:
    msg = im871a.HciMessage(im871a.RADIOLINK, im871a.WMBUSMSG_IND, b"\x44\x2d\x2c" + bytes(20),
                            ts, rssi)
    raw = im871a.encode(msg, crc=crc)
    assert im871a.deserialize(raw + b"rest") == (msg, b"rest")
    assert msg.telegram()[0] == 23


def test_hci_requests_and_crc() -> None:
    assert im871a.ping() == bytes.fromhex("A58101" "00") + crc_x25(
        bytes.fromhex("810100")).to_bytes(2, "little")
    raw = im871a.set_mode("T1")
    msg, _ = im871a.deserialize(raw)
    assert im871a.parse_set_mode(msg.payload) == ("T1", True, True)
    bad = raw[:-1] + bytes((raw[-1] ^ 0xFF,))
    with pytest.raises(ChecksumError):
        im871a.deserialize(bad)
    dec = im871a.HciDecoder()
    dec.receive_data(b"\x00\x13" + bad + raw)
    first = dec.next_event()
    assert first is not None and first.damaged and dec.crc_errors == 1
    assert dec.next_event() == msg and dec.skipped == 2


def test_amber_round_trip_and_checksum() -> None:
    assert amb8465.ping() == bytes.fromhex("FF0B00F4")
    msg = amb8465.AmberMessage(amb8465.CMD_DATA_IND, bytes(range(30)), 0x9C)
    raw = amb8465.encode(msg)
    assert amb8465.deserialize(raw) == (msg, b"")
    assert msg.rssi_dbm == (0x9C - 256) // 2 - 74
    assert amb8465.deserialize(amb8465.set_mode("C1"))[0].payload == b"\x0e"
    dec = amb8465.AmberDecoder()
    stream = b"\x01\x02" + raw[:-1] + bytes((raw[-1] ^ 1,)) + raw
    for b in stream:  # byte by byte
        dec.receive_data(bytes((b,)))
    assert dec.next_event().damaged and dec.next_event() == msg and dec.next_event() is None


@given(st.binary(max_size=300))
def test_random_telegrams_raise_only_mbus_errors(data: bytes) -> None:
    for key in (None, KEY7):
        try:
            decode_wmbus(data, key).to_json()
        except MBusError:
            pass


@given(st.binary(min_size=11, max_size=200), st.sampled_from([0x7A, 0x72, 0x8C, 0x8D, 0x90,
                                                             0x78, 0x8F]))
def test_random_payloads_after_a_valid_header_raise_only_mbus_errors(rest: bytes,
                                                                     ci: int) -> None:
    body = bytes.fromhex("442D2C7856341201") + bytes((7, ci)) + rest
    frame = bytes((len(body),)) + body
    for key in (None, KEY7):
        try:
            decode_wmbus(frame, key)
        except MBusError:
            pass


@given(st.binary(max_size=400))
def test_random_bytes_into_dongle_decoders(data: bytes) -> None:
    for dec in (im871a.HciDecoder(), amb8465.AmberDecoder(), amb8465.AmberDecoder(rssi=False)):
        dec.receive_data(data)
        for _ in range(400):
            if dec.next_event() is None:
                break
    for fn in (im871a.deserialize, amb8465.deserialize):
        try:
            fn(data)
        except MBusError:
            pass


def test_unsupported_ci_and_compact_frames() -> None:
    body = bytes.fromhex("442D2C7856341201" "07" "79" "00112233")
    with pytest.raises(UnsupportedError, match="compact"):
        decode_wmbus(bytes((len(body),)) + body)
    body = bytes.fromhex("442D2C7856341201" "07" "A0" "00112233")
    with pytest.raises(UnsupportedError, match="0xA0"):
        decode_wmbus(bytes((len(body),)) + body)

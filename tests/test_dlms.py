"""DLMS push decoding: Green Book / glo-ciphering vectors, OBIS mapping, fuzzing, the
`gateway decode hdlc|iec62056-21` command, and gurux's prints kept off stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from gateway.protocols.dlms import DlmsError, cipher
from gateway.protocols.dlms.notification import PushParser, map_body
from gateway.protocols.dlms.values import datetime_ms, obis_bytes, obis_text
from gateway.protocols.hdlc import HdlcFrame

ROOT = Path(__file__).resolve().parent.parent
V = {v["name"]: v for v in json.loads((ROOT / "tests/vectors/dlms.json").read_text())["vectors"]}
KAMSTRUP = next(v for n, v in V.items() if n.startswith("Kamstrup"))
KAIFA = next(v for n, v in V.items() if n.startswith("HDLC frame containing"))
GREEN = next(v for n, v in V.items() if n.startswith("DLMS Green Book"))
GLO = next(v for n, v in V.items() if n.startswith("general-glo"))


def test_green_book_gcm_example():
    e = GREEN["expected"]
    g = cipher.GloCiphered(bytes.fromhex(e["system_title"]), 0x30, int(e["invocation_counter"], 16),
                           bytes.fromhex(GREEN["hex"]))
    key, ak = bytes.fromhex(GREEN["key"]), bytes.fromhex(e["authentication_key"])
    pt = cipher.decrypt(g, key, ak)
    assert pt.hex().upper() == e["plaintext_hex"]
    assert cipher.encrypt(pt, g.system_title, g.invocation_counter, key, ak) == g
    with pytest.raises(cipher.DecryptError):
        cipher.decrypt(g, key, bytes(16))


def test_general_glo_ciphering_vector_byte_exact():
    raw, key = bytes.fromhex(GLO["hex"]), bytes.fromhex(GLO["key"])
    g = cipher.parse_glo(raw)
    e = GLO["expected"]
    assert (g.system_title.hex().upper(), g.invocation_counter, g.security_control) == \
        (e["system_title_hex"], e["invocation_counter"], 0x30)
    assert cipher.decrypt(g, key, key).hex().upper() == e["plaintext_hex"]
    assert g.serialize() == raw
    n = PushParser(key, key).parse(raw)
    assert n.ciphered and n.invoke_id == 0x000001DB and n.time_ms is None


@pytest.mark.parametrize("sc", [0x00, 0x10, 0x20, 0x30])
def test_security_control_modes_roundtrip(sc):
    key, ak = os.urandom(16), os.urandom(16)
    g = cipher.encrypt(b"\x0f\x00\x00\x00\x01\x00\x11\x05", b"ABCDEFGH", 7, key, ak, sc)
    parsed = cipher.parse_glo(g.serialize())
    assert cipher.decrypt(parsed, key, ak) == b"\x0f\x00\x00\x00\x01\x00\x11\x05"


def test_kamstrup_push_maps_to_exact_readings():
    frame, _ = HdlcFrame.deserialize(bytes.fromhex(KAMSTRUP["hex"]))
    n = PushParser(default_tz="Europe/Oslo").parse(frame.apdu)
    assert n.time_ms == 1643047130000  # 2022-01-24 18:58:50 Oslo (deviation unspecified)
    got = {v.obis: (v.mantissa, v.exponent, v.unit) for v in map_body(n.body)}
    assert got["1-1:1.7.0"] == (826, 0, "W")
    assert got["1-1:31.7.0"] == (237, -2, "A")     # Kamstrup: 0.01 A
    assert got["1-1:32.7.0"] == (232, 0, "V")
    assert got["1-1:4.7.0"] == (176, 0, "var")
    assert len(got) == 10  # ids and the meter type are not readings


def test_kaifa_tagged_datetime_and_positional_list():
    frame, _ = HdlcFrame.deserialize(bytes.fromhex(KAIFA["hex"]))
    n = PushParser().parse(frame.apdu)
    assert n.invoke_id == 0x40000000 and n.time_ms == 1581729934000
    assert map_body(n.body) == []
    [v] = map_body(n.body, positional=("1-0:1.7.0",))
    assert (v.obis, v.mantissa, v.unit) == ("1-0:1.7.0", 5502, "W")


def test_obis_and_datetime_helpers():
    assert obis_text(obis_bytes("1-0:1.8.0")) == "1-0:1.8.0"
    assert obis_text(bytes([1, 0, 1, 8, 0, 1])) == "1-0:1.8.0*1"
    raw = bytes.fromhex("07E6011801123A32FF003C00")  # deviation +60: UTC = local + 60 min
    assert datetime_ms(raw) == 1643054330000


@given(st.binary(max_size=200))
def test_random_apdus_only_raise_dlms_error(data):
    p = _parser()
    for apdu in (data, b"\x0f" + data, b"\xdb\x08" + data):
        try:
            p.parse(apdu)
        except DlmsError:
            pass


_local = threading.local()


def _parser() -> PushParser:
    if not hasattr(_local, "p"):
        _local.p = PushParser(bytes(16), bytes(16))
    return _local.p


def test_gurux_prints_do_not_reach_stdout(capfd):
    """gurux prints "Encryption is applied." while decrypting ciphered APDUs: run its own
    decryption path (in a thread, as drivers do) and check the process's fd 1 stays empty."""
    from gateway.protocols.dlms import load_gurux
    load_gurux()
    from gurux_dlms import GXByteBuffer, GXDLMSClient, GXReplyData
    from gurux_dlms.enums import InterfaceType
    from gurux_dlms.secure import GXDLMSSecureClient
    key = bytes.fromhex(GLO["key"])

    def run():
        c = GXDLMSSecureClient(True, 16, 1, interfaceType=InterfaceType.PDU)
        c.ciphering.blockCipherKey = bytearray(key)
        c.ciphering.authenticationKey = bytearray(key)
        r, n = GXReplyData(), GXReplyData()
        c.getData(GXByteBuffer(bytes.fromhex(GLO["hex"])), r, n)
        assert n.command == 0x0F
    t = threading.Thread(target=run)
    t.start()
    t.join()
    out, _ = capfd.readouterr()
    assert out == ""


def _gateway(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "decode", *args], cwd=ROOT,
                          input=stdin, capture_output=True, timeout=60)


def test_decode_hdlc_json():
    p = _gateway("hdlc", KAMSTRUP["hex"], "--json", "--tz", "Europe/Oslo")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert {"obis": "1-1:31.7.0", "value": "2.37", "unit": "A"} in out["readings"]
    assert out["time"] == "2022-01-24T17:58:50Z" and out["frames"][0]["kind"] == "UI"


def test_decode_hdlc_ciphered_and_errors():
    p = _gateway("hdlc", GLO["hex"], "--key", GLO["key"], "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["invocation_counter"] == 485
    assert b"applied" not in p.stdout
    p = _gateway("hdlc", GLO["hex"], "--key", "00" * 16)
    assert p.returncode == 3 and p.stderr.count(b"\n") == 1 and b"decryption failed" in p.stderr
    for bad in ("7EA0zz", "7EA02701", "0F00"):
        p = _gateway("hdlc", bad)
        assert p.returncode == 2 and p.stderr.startswith(b"error: ") and p.stderr.count(b"\n") == 1


def test_decode_iec62056_21_json_from_stdin():
    raw = bytes.fromhex(json.loads((ROOT / "tests/vectors/iec62056_21.json").read_text())
                        ["vectors"][1]["hex"])
    p = _gateway("iec62056-21", "-", "--json", stdin=raw)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert {"obis": "1-0:1.8.0", "value": "896.020", "unit": "kWh"} in out["readings"]
    assert out["check"] == "crc16" and out["identification"]["manufacturer"] == "LGF"
    p = _gateway("iec62056-21", "-", stdin=raw[:-1] + b"0")
    assert p.returncode == 2 and b"CRC" in p.stderr

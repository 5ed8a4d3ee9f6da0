"""Meter keys given as files, for every driver that takes them."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config
from gateway.drivers.keys import KeyFileError, read_key_file
from tests.gwproc import write_config

KEY = "000102030405060708090A0B0C0D0E0F"


def test_hex_and_raw_key_files(tmp_path):
    hexfile = tmp_path / "k.hex"
    hexfile.write_text(KEY.lower() + "\n")
    raw = tmp_path / "k.bin"
    raw.write_bytes(bytes(range(0xF0, 0x100)))
    assert read_key_file(str(hexfile)) == bytes.fromhex(KEY)
    assert read_key_file(str(raw)) == bytes(range(0xF0, 0x100))


@pytest.mark.parametrize("content", ["0011", "zz" * 16, KEY + "00"])
def test_bad_key_file_says_which_and_why(tmp_path, content):
    f = tmp_path / "bad.key"
    f.write_text(content)
    with pytest.raises(KeyFileError, match="bad.key: expected 32 hex digits"):
        read_key_file(str(f))


@pytest.mark.parametrize("dtype,meter", [
    ("wmbus", {"id": "22222222"}), ("mbus", {"primary": 5})])
def test_key_file_in_config_is_checked_and_warned(tmp_path, pki, dtype, meter):
    key = tmp_path / "meter.key"
    key.write_text(KEY)
    key.chmod(0o644)
    drv = {"type": dtype, "name": "bus", "serial": {"port": "/dev/ttyUSB0", "baud": 2400},
           "meters": [{**meter, "key_file": str(key)}]}
    if dtype == "wmbus":
        drv.update(dongle="im871a", mode="t1")
    cfg = load_config(write_config(tmp_path, pki, 8883, drivers=[drv]))
    assert any("meters[0].key_file" in str(w) and "readable by group/other" in str(w)
               for w in cfg.warnings)
    drv["meters"][0]["key"] = KEY
    with pytest.raises(ConfigError):  # both key and key_file: ambiguous
        load_config(write_config(tmp_path, pki, 8883, drivers=[drv]))

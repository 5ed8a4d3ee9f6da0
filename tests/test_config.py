"""Tests for gateway.config: positions and wording of errors, defaults, warnings, fuzzing."""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.drivers.registry import DRIVER_MODULES
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import (
    DRIVER_SCHEMAS,
    ID,
    PATH,
    RS485_SCHEMA,
    SERIAL_SCHEMA,
    Config,
    ConfigError,
    ConfigIssue,
    DriverSchema,
    FieldSpec,
    Schema,
    any_mapping,
    file_field,
    hex_bytes,
    integer,
    list_of,
    load_config,
    mapping,
    one_of_keys,
    parse_size,
    register_driver_schema,
    text,
)

PKI = ("ca.pem", "gateway.pem", "gateway.key", "gateway-sign.key")

VALID = """\
gateway:
  id: gw-0001
store:
  path: data/store.db
uplink:
  host: broker.example.net
  port: 8883
  ca: pki/ca.pem
  cert: pki/gateway.pem
  key: pki/gateway.key
  signing_key: pki/gateway-sign.key
drivers:
  - {type: simulated, name: sim, meters: 20, interval_s: 1}
"""


def make_pki(root: Path) -> None:
    (root / "pki").mkdir(exist_ok=True)
    for name in PKI:
        p = root / "pki" / name
        p.write_text("dummy\n")
        os.chmod(p, 0o600)


@pytest.fixture
def write(tmp_path):
    make_pki(tmp_path)

    def _write(text: str, name: str = "gateway.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        os.chmod(p, 0o600)
        return p

    return _write


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    return [str(i) for i in ei.value.issues]


def replace(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new)


# --------------------------------------------------------------------------- happy path


def test_valid_config_defaults_and_resolved_paths(write, tmp_path):
    p = write(VALID)
    c = load_config(p)
    assert isinstance(c, Config)
    assert c.warnings == []
    assert c.source_path == str(p)
    assert c.config_hash == hashlib.sha256(p.read_bytes()).hexdigest()
    assert c.gateway.id == "gw-0001" and c.gateway.board == "generic-linux"
    # Relative paths are resolved against the config file's directory, not the cwd.
    assert c.store.path == str(tmp_path / "data" / "store.db")
    assert c.uplink.ca == str(tmp_path / "pki" / "ca.pem")
    assert c.uplink.signing_key == str(tmp_path / "pki" / "gateway-sign.key")
    assert c.store.max_bytes == 512 * 1024**2
    assert c.store.max_rows is None
    assert (c.store.commit_interval_ms, c.store.commit_max_records) == (50, 5000)
    u = c.uplink
    assert (u.port, u.topic_prefix, u.client_id, u.keepalive_s, u.inflight) == \
        (8883, "meters", "gw-0001", 30, 20)
    assert (u.batch_max_records, u.batch_max_bytes, u.reconnect_min_s, u.reconnect_max_s) == \
        (64, 65536, 1, 60)
    assert u.tls_version == "1.2"
    assert c.logging.level == "info"
    assert len(c.drivers) == 1
    d = c.drivers[0]
    assert (d.type, d.name, d.line) == ("simulated", "sim", 13)
    assert d.options == {"meters": 20, "interval_s": 1, "meter_prefix": "sim-", "seed": 0}


def test_relative_path_resolution_independent_of_cwd(write, tmp_path, monkeypatch):
    p = write(VALID)
    monkeypatch.chdir("/")
    c = load_config(os.path.relpath(p, "/"))
    assert c.uplink.key == str(tmp_path / "pki" / "gateway.key")


def test_absolute_paths_kept(write, tmp_path):
    ca = tmp_path / "pki" / "ca.pem"
    c = load_config(write(replace("ca: pki/ca.pem", f"ca: {ca}")))
    assert c.uplink.ca == str(ca)


def test_driver_defaults_and_name_defaults_to_type(write):
    c = load_config(write(replace("  - {type: simulated, name: sim, meters: 20, interval_s: 1}",
                                  "  - type: simulated")))
    d = c.drivers[0]
    assert d.name == "simulated"
    assert d.options == {"meters": 1, "interval_s": 60, "meter_prefix": "sim-", "seed": 0}


def test_string_fields_keep_text_as_written(write):
    src = replace("  id: gw-0001", "  id: 0001").replace("  port: 8883", "  port: 8883\n"
                                                           "  tls_version: 1.3")
    c = load_config(write(src))
    assert c.gateway.id == "0001"
    assert c.uplink.tls_version == "1.3"


def test_null_means_default(write):
    c = load_config(write(replace("  port: 8883", "  port:\n  client_id: null") + "logging:\n"))
    assert c.uplink.port == 8883 and c.uplink.client_id == "gw-0001"
    assert c.logging.level == "info"


def test_yaml_merge_keys(write):
    src = replace("drivers:\n  - {type: simulated, name: sim, meters: 20, interval_s: 1}\n",
                  "drivers:\n  - &base {type: simulated, name: a, meters: 3}\n"
                  "  - {<<: *base, name: b}\n")
    c = load_config(write(src))
    assert [(d.name, d.options["meters"]) for d in c.drivers] == [("a", 3), ("b", 3)]


def test_summary_contents(write):
    src = replace("  port: 8883", "  port: 1883\n  topic_prefix: utility/north")
    src = src.replace("  path: data/store.db", "  path: data/store.db\n  max_bytes: 10MiB")
    c = load_config(write(src))
    s = c.summary()
    assert "gw-0001" in s and "generic-linux" in s
    assert c.store.path in s and "10 MiB" in s
    assert "broker.example.net:1883" in s
    assert '"utility/north"' in s
    assert "sim (simulated)" in s and "meters=20" in s and "interval_s=1" in s
    assert c.config_hash[:16] in s


# --------------------------------------------------------------------------- error format


def test_exact_error_format_with_line_and_column(write):
    p = write(replace("  port: 8883", '  port: "88x3"'))
    assert errors(p) == [f'{p}:7:9: uplink.port: expected an integer 1-65535, got "88x3"']


def test_issue_str_and_error_str():
    i = ConfigIssue("config/x.yaml", 12, 5, "uplink.port", 'expected an integer 1-65535, got "88x3"')
    assert str(i) == 'config/x.yaml:12:5: uplink.port: expected an integer 1-65535, got "88x3"'
    j = ConfigIssue("config/x.yaml", 0, 0, "", "cannot read: No such file or directory")
    assert str(j) == "config/x.yaml: cannot read: No such file or directory"
    e = ConfigError([i, j])
    assert str(e) == f"{i}\n{j}"


def test_unknown_key_did_you_mean(write):
    p = write(replace("  port: 8883", "  prot: 8883"))
    assert errors(p) == [f'{p}:7:3: uplink.prot: unknown key; did you mean "port"?']


def test_unknown_top_level_key_and_no_close_match(write):
    p = write(VALID + "logg: {level: debug}\nzzz: 1\n")
    errs = errors(p)
    assert errs[0] == f'{p}:14:1: logg: unknown key; did you mean "logging"?'
    assert errs[1].startswith(f"{p}:15:1: zzz: unknown key; expected one of gateway, store")


@pytest.mark.parametrize("old,new,expected", [
    ("  port: 8883", "  port: 70000", 'uplink.port: expected an integer 1-65535, got 70000'),
    ("  port: 8883", "  port: true", 'uplink.port: expected an integer 1-65535, got true'),
    ("  port: 8883", "  port: [1, 2]", 'uplink.port: expected an integer 1-65535, got a list'),
    ("  port: 8883", "  keepalive_s: 2.5",
     'uplink.keepalive_s: expected a whole number of seconds 5-3600, got 2.5'),
    ("  port: 8883", "  reconnect_min_s: 0",
     'uplink.reconnect_min_s: expected a number of seconds > 0, got 0'),
    ("  port: 8883", "  reconnect_min_s: .nan",
     'uplink.reconnect_min_s: expected a number of seconds > 0, got nan'),
    ("  port: 8883", "  topic_prefix: meters/#",
     'uplink.topic_prefix: expected an MQTT topic prefix'),
    ("  port: 8883", "  topic_prefix: /meters",
     'uplink.topic_prefix: expected an MQTT topic prefix'),
    ("  port: 8883", "  tls_version: 1.1",
     'uplink.tls_version: expected "1.2" (1.2 or newer) or "1.3", got "1.1"'),
    ("  host: broker.example.net", "  host: mqtts://broker",
     'uplink.host: expected a host name or IP address (no scheme, port or path), '
     'got "mqtts://broker"'),
    ("  id: gw-0001", "  id: gw 0001",
     'gateway.id: expected an id of 1-64 characters from A-Z a-z 0-9 . _ -, got "gw 0001"'),
    ("  path: data/store.db", "  path: data/store.db\n  max_bytes: 1KiB",
     'store.max_bytes: expected a size of at least 64 KiB (e.g. 512MiB, 10MB, 4096), '
     'got "1KiB"'),
    ("  path: data/store.db", "  path: data/store.db\n  max_bytes: 12XB",
     'store.max_bytes: expected a size of at least 64 KiB (e.g. 512MiB, 10MB, 4096), '
     'got "12XB"; unknown unit "XB"'),
    ("  path: data/store.db", "  path: data/store.db\n  commit_interval_ms: 0",
     'store.commit_interval_ms: expected an integer 1-10000, got 0'),
    ("  path: data/store.db", "  path: data/store.db\n  max_rows: 0",
     'store.max_rows: expected an integer >= 1, got 0'),
    ("interval_s: 1", "interval_s: soon",
     'drivers[0].interval_s: expected a number of seconds > 0, got "soon"'),
    ("meters: 20", "meters: 0", 'drivers[0].meters: expected an integer 1-100000, got 0'),
])
def test_bad_values(write, old, new, expected):
    errs = errors(write(replace(old, new)))
    assert len(errs) == 1, errs
    assert expected in errs[0]


def test_logging_level_did_you_mean(write):
    errs = errors(write(VALID + "logging: {level: warn}\n"))
    assert errs == [f'{errs[0].split(":")[0]}:14:18: logging.level: expected one of "debug", '
                    '"info", "warning", "error", got "warn"; did you mean "warning"?']


def test_reconnect_max_below_min(write):
    p = write(replace("  port: 8883", "  reconnect_min_s: 10\n  reconnect_max_s: 5"))
    assert errors(p) == [f"{p}:8:20: uplink.reconnect_max_s: expected a number >= "
                         "reconnect_min_s (10), got 5"]


def test_duplicate_key(write):
    p = write(replace("  port: 8883", "  port: 8883\n  port: 1883"))
    assert errors(p) == [f"{p}:8:3: uplink.port: duplicate key (first given at line 7)"]


def test_duplicate_driver_names(write):
    p = write(VALID + "  - {type: simulated, name: sim}\n")
    assert errors(p) == [f'{p}:14:29: drivers[1].name: expected a unique driver name, '
                         'got "sim" again (first used at line 13)']


def test_unknown_driver_type(write):
    p = write(replace("type: simulated", "type: simulted"))
    errs = errors(p)
    assert errs == [f'{p}:13:12: drivers[0].type: expected a registered driver type: '
                    f'{", ".join(chr(34) + t + chr(34) for t in sorted(set(DRIVER_SCHEMAS) | set(DRIVER_MODULES)))}, '
                    'got "simulted"; did you mean "simulated"?']


def test_unknown_driver_option(write):
    p = write(replace("meters: 20", "meter: 20"))
    assert errors(p) == [f'{p}:13:34: drivers[0].meter: unknown key; did you mean "meters"?']


def test_drivers_must_be_nonempty_list(write):
    src = VALID.split("drivers:")[0]
    assert errors(write(src + "drivers: []\n"))[0].endswith(
        "drivers: expected at least one driver, got an empty list")
    assert errors(write(src + "drivers: {type: simulated}\n"))[0].endswith(
        "drivers: expected a list of driver entries, got a mapping")


def test_missing_required_section_and_key(write):
    src = VALID.split("uplink:")[0] + "drivers:\n  - {type: simulated}\n"
    p = write(src)
    assert errors(p) == [f"{p}:1:1: uplink: required section is missing"]
    p = write(replace("  host: broker.example.net\n", ""))
    assert errors(p) == [f"{p}:5:1: uplink.host: required key is missing "
                         "(the MQTT broker host name)"]


def test_multiple_errors_collected_in_order(write):
    src = (replace("  id: gw-0001", "  id: ''")
           .replace("  port: 8883", "  port: -1\n  inflight: lots")
           .replace("meters: 20", "meters: 0"))
    p = write(src)
    errs = errors(p)
    assert [e.split(": ")[1] for e in errs] == [
        "gateway.id", "uplink.port", "uplink.inflight", "drivers[0].meters"]
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(ei.value) == "\n".join(errs)


def test_yaml_syntax_error_position(write):
    p = write("gateway:\n  id: gw-0001\nstore: [\n  path: x\n")
    errs = errors(p)
    assert len(errs) == 1
    assert re.match(rf"{re.escape(str(p))}:5:1: YAML syntax error: ", errs[0]), errs


def test_yaml_syntax_error_bad_indent(write):
    p = write("gateway:\n  id: a\n   board: b\n")
    (err,) = errors(p)
    assert err.startswith(f"{p}:3:9: YAML syntax error: mapping values are not allowed here")


def test_bad_encoding_and_control_characters(write):
    p = write("gateway:\n  id: x\n")
    p.write_bytes(b"gateway:\n  id: \xff\n")
    assert errors(p) == [f"{p}:2:7: expected UTF-8 text, got an invalid byte 0xff"]
    p.write_bytes(b"gateway:\n  id: a\x01b\n")
    assert errors(p) == [f"{p}:2:8: expected printable text, got character U+0001"]


def test_huge_integers(write):
    p = write(replace("  path: data/store.db", "  path: data/store.db\n  max_bytes: 0x" + "f" * 5000)
              .replace("meters: 20", "seed: 0x" + "f" * 5000))
    errs = errors(p)
    assert len(errs) == 1 and "got an integer of more than 128 bits" in errs[0]
    c = load_config(write(replace("meters: 20", "seed: 0x" + "f" * 5000)))
    assert "seed=an integer of more than 128 bits" in c.summary()


def test_bad_explicit_tags(write):
    p = write(replace("  port: 8883", "  port: !!int abc\n  inflight: !weird 3"))
    assert errors(p) == [f'{p}:7:9: uplink.port: expected a valid !!int value, got "abc"',
                         f'{p}:8:13: uplink.inflight: expected an untagged value, '
                         'got one tagged "!weird"']


def test_empty_and_non_mapping_file(write):
    p = write("# nothing\n")
    assert errors(p)[0].startswith(f"{p}: file is empty; expected a mapping")
    p = write("- a\n- b\n")
    assert errors(p)[0].startswith(f"{p}:1:1: expected a mapping with the sections")


def test_unreadable_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert errors(missing) == [f"{missing}: cannot read: No such file or directory"]
    assert errors(tmp_path) == [f"{tmp_path}: cannot read: Is a directory"]


def test_referenced_file_not_found(write, tmp_path):
    p = write(replace("ca: pki/ca.pem", "ca: pki/missing.pem"))
    assert errors(p) == [f"{p}:8:7: uplink.ca: file not found: {tmp_path}/pki/missing.pem"]


# --------------------------------------------------------------------------- warnings


def test_group_readable_key_warning(write, tmp_path):
    os.chmod(tmp_path / "pki" / "gateway.key", 0o644)
    p = write(VALID)
    c = load_config(p)
    key = tmp_path / "pki" / "gateway.key"
    assert [str(w) for w in c.warnings] == [
        f"{p}:10:8: uplink.key: {key} is readable by group/other (mode 0644); chmod 600 it"]


def test_warnings_survive_into_config_error(write, tmp_path):
    os.chmod(tmp_path / "pki" / "gateway-sign.key", 0o640)
    with pytest.raises(ConfigError) as ei:
        load_config(write(replace("  port: 8883", "  port: 0")))
    assert "mode 0640" in str(ei.value.warnings[0])


def test_plugin_driver_schema_secrets(write, tmp_path):
    schema = DriverSchema((
        FieldSpec("port", text("a serial port path"), "/dev/ttyUSB0"),
        FieldSpec("address", integer(0, 250), help="primary address"),
        file_field("key_file", "AES key file", secret=True),
        FieldSpec("aes_key", text("32 hex digits", r"[0-9A-Fa-f]{32}"), None, secret=True),
    ))
    register_driver_schema("testbus", schema)
    register_driver_schema("testbus", schema)  # re-registering the same schema is harmless
    try:
        with pytest.raises(ValueError):
            register_driver_schema("testbus", DriverSchema(()))
        with pytest.raises(ValueError):
            register_driver_schema("bad", DriverSchema((FieldSpec("name", integer()),)))
        os.chmod(tmp_path / "pki" / "gateway.pem", 0o644)  # not secret: no warning
        src = VALID + ("  - type: testbus\n    address: 5\n    key_file: pki/ca.pem\n"
                       "    aes_key: 000102030405060708090a0b0c0d0e0f\n")
        p = write(src)
        os.chmod(tmp_path / "pki" / "ca.pem", 0o644)
        os.chmod(p, 0o644)
        c = load_config(p)
        d = c.drivers[1]
        assert d.options["key_file"] == str(tmp_path / "pki" / "ca.pem")
        assert d.options["port"] == "/dev/ttyUSB0"
        ws = [str(w) for w in c.warnings]
        assert len(ws) == 2
        assert "drivers[1].key_file:" in ws[0] and "mode 0644" in ws[0]
        assert "drivers[1].aes_key: secret written in" in ws[1]
        assert "000102" not in c.summary() and "aes_key=***" in c.summary()
        # Missing required plugin option is reported against the entry.
        p = write(VALID + "  - {type: testbus, key_file: pki/ca.pem}\n")
        assert errors(p) == [f"{p}:14:5: drivers[1].address: required key is missing "
                             "(primary address)"]
    finally:
        DRIVER_SCHEMAS.pop("testbus", None)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("s,n", [
    ("4096", 4096), (4096, 4096), ("10MB", 10_000_000), ("512MiB", 512 * 2**20),
    ("64KiB", 65536), ("1k", 1000), ("1K", 1000), ("2KB", 2000), ("3 GiB", 3 * 2**30),
    ("1GB", 10**9), ("1.5KiB", 1536), ("100B", 100), ("0", 0),
])
def test_parse_size(s, n):
    assert parse_size(s) == n


@pytest.mark.parametrize("s", ["", "MiB", "12XB", "-1", "1.2.3", "0.3KiB", "1e3", "ten"])
def test_parse_size_rejects(s):
    with pytest.raises(ValueError):
        parse_size(s)


@pytest.mark.parametrize("v", [True, 1.5, None, [1]])
def test_parse_size_rejects_types(v):
    with pytest.raises(TypeError):
        parse_size(v)


# --------------------------------------------------------------------------- fuzzing

_FUZZ = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    """One file rewritten per example (module scope: hypothesis reuses it across examples)."""
    root = tmp_path_factory.mktemp("fuzz")
    make_pki(root)
    return root / "fuzz.yaml"


def _load_never_crashes(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        c = load_config(path)
    except ConfigError as e:
        assert e.issues
        str(e).encode("utf-8")
    else:
        c.summary().encode("utf-8")


@_FUZZ
@given(st.text(max_size=300))
def test_fuzz_random_text(fuzz_file, s):
    _load_never_crashes(fuzz_file, s.encode("utf-8", "surrogatepass"))


@_FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(fuzz_file, b):
    _load_never_crashes(fuzz_file, b)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                     st.text(max_size=20), st.sampled_from(["512MiB", "1.2", "pki/ca.pem", ""]))
_keys = st.one_of(st.sampled_from(["gateway", "store", "uplink", "drivers", "logging", "id",
                                   "path", "port", "type", "name", "meters", "<<"]),
                  st.text(max_size=8))
_trees = st.recursive(_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(_keys, kids, max_size=5)), max_leaves=20)


@_FUZZ
@given(_trees)
def test_fuzz_random_structures(fuzz_file, tree):
    _load_never_crashes(fuzz_file, yaml.safe_dump(tree, allow_unicode=True).encode("utf-8"))


@_FUZZ
@given(st.sampled_from(["gateway", "store", "uplink", "logging"]), _keys, _trees)
def test_fuzz_mutated_valid_config(fuzz_file, section, key, value):
    tree = yaml.safe_load(VALID)
    target = tree.setdefault(section, {})
    if isinstance(target, dict):
        target[key] = value
    _load_never_crashes(fuzz_file, yaml.safe_dump(tree, allow_unicode=True).encode("utf-8"))


@pytest.mark.parametrize("src", [
    "a: &x [*x]\n",
    "gateway: &g {<<: *g}\n",
    "uplink: {port: !!int abc, host: !!bool maybe, ca: !!binary '%%', cert: !!timestamp x}\n",
    "uplink: {port: !!map x, host: !custom y}\n",
    "store: {max_bytes: 0x" + "f" * 5000 + "}\n",
    "store: {max_bytes: !!float 1e999}\n",
    "drivers: [{type: simulated, meters: &m [*m]}]\n",
    "drivers: [{type: [simulated]}, 3, {? [a]: b}]\n",
    "[" * 2000 + "]" * 2000,
    "a: 1\n---\nb: 2\n",
    "x: '\\ud800'\n",
    'x: "\\ud800"\n',
    "? [a, b]\n: c\n",
    "lol: &a [1,1,1,1,1,1,1,1,1]\nlol2: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nlol3: &c [*b,*b,*b,*b,*b]\n"
    "uplink: {port: [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]}\n",
])
def test_odd_yaml_gives_config_error(fuzz_file, src):
    fuzz_file.write_text(src, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(ConfigError) as ei:
        load_config(fuzz_file)
    assert ei.value.issues
    str(ei.value).encode("utf-8")


# --------------------------------------------------------------------------- nested schemas

METER_SCHEMA = Schema((
    FieldSpec("id", ID, help="meter id"),
    FieldSpec("address", text("8 hex digits", r"[0-9A-Fa-f]{8}"), help="bus address"),
    FieldSpec("manufacturer", text("a 3-letter manufacturer code", r"[A-Z]{3}"), None),
    FieldSpec("key", PATH, None, help="AES key file", secret=True, path=True, must_exist=True),
    FieldSpec("key_hex", hex_bytes(16), None, help="AES key", secret=True),
    FieldSpec("expected_interval_s", integer(1, 86400), None),
    FieldSpec("tags", any_mapping(), None),
), check=one_of_keys("key", "key_hex"))

METERS_DRIVER_SCHEMA = DriverSchema((
    FieldSpec("meters", list_of(METER_SCHEMA, min_items=1, max_items=4, unique_key="id")),
    FieldSpec("serial", mapping(SERIAL_SCHEMA)),
    FieldSpec("extra_keys", list_of(PATH), [], secret=True, path=True, must_exist=True),
))

# Appended to VALID: the entry starts at line 14.
METERS = """\
  - type: testmeters
    name: radio1
    meters:
      - {id: water-17, address: "12345678", manufacturer: KAM, key: keys/water17.key}
      - id: heat-3
        address: "87654321"
        key_hex: 000102030405060708090A0B0C0D0E0F
        tags: {building: B, floor: 3}
    serial: {port: /dev/ttyUSB0, parity: e, rs485: {mode: rts}}
"""


@contextmanager
def registered(type_name: str, schema: DriverSchema):
    register_driver_schema(type_name, schema)
    try:
        yield
    finally:
        DRIVER_SCHEMAS.pop(type_name, None)


@pytest.fixture
def meters(write, tmp_path):
    """write(src) with the testmeters driver registered and keys/water17.key (mode 0600)."""
    (tmp_path / "keys").mkdir()
    key = tmp_path / "keys" / "water17.key"
    key.write_bytes(bytes(16))
    os.chmod(key, 0o600)
    with registered("testmeters", METERS_DRIVER_SCHEMA):
        yield write


def nested(old: str, new: str) -> str:
    assert old in METERS
    return VALID + METERS.replace(old, new)


def test_nested_values_defaults_and_resolved_paths(meters, tmp_path):
    c = load_config(meters(VALID + METERS))
    assert c.warnings == []
    d = c.drivers[1]
    assert (d.type, d.name, d.line) == ("testmeters", "radio1", 14)
    assert d.options == {
        "meters": [
            {"id": "water-17", "address": "12345678", "manufacturer": "KAM",
             "key": str(tmp_path / "keys" / "water17.key"), "key_hex": None,
             "expected_interval_s": None, "tags": None},
            {"id": "heat-3", "address": "87654321", "manufacturer": None, "key": None,
             "key_hex": bytes(range(16)), "expected_interval_s": None,
             "tags": {"building": "B", "floor": 3}},
        ],
        "serial": {"port": "/dev/ttyUSB0", "baud": 9600, "bytesize": 8, "parity": "E",
                   "stopbits": 1, "timeout_ms": 1000,
                   "rs485": {"mode": "rts", "rts_level_for_tx": True,
                             "delay_before_tx_ms": 0, "delay_before_rx_ms": 0}},
        "extra_keys": [],
    }
    assert type(d.options) is dict and type(d.options["meters"]) is list
    s = c.summary()
    assert "radio1 (testmeters): meters=[2 entries], serial={port=\"/dev/ttyUSB0\"" in s
    assert "rs485={mode=\"rts\"" in s and "extra_keys=***" in s


def test_relative_paths_at_depth_independent_of_cwd(meters, tmp_path, monkeypatch):
    (tmp_path / "keys" / "extra.key").write_text("k")
    os.chmod(tmp_path / "keys" / "extra.key", 0o600)
    p = meters(VALID + METERS + "    extra_keys: [keys/extra.key, ./keys/../keys/water17.key]\n")
    monkeypatch.chdir("/")
    c = load_config(os.path.relpath(p, "/"))
    o = c.drivers[1].options
    assert o["meters"][0]["key"] == str(tmp_path / "keys" / "water17.key")
    assert o["extra_keys"] == [str(tmp_path / "keys" / "extra.key"),
                               str(tmp_path / "keys" / "water17.key")]
    p = meters(VALID + METERS + "    extra_keys: [keys/extra.key, keys/gone.key]\n")
    assert errors(p) == [f"{p}:23:34: drivers[1].extra_keys[1]: file not found: "
                         f"{tmp_path}/keys/gone.key"]
    p = meters(nested("key: keys/water17.key", "key: water17.key"))
    assert errors(p) == [f"{p}:17:69: drivers[1].meters[0].key: file not found: "
                         f"{tmp_path}/water17.key"]


def test_nested_errors_exact_positions(meters):
    src = (nested('address: "12345678"', 'address: "1234567z"')
           .replace("parity: e", "parity: x, baud: 9601")
           .replace("{mode: rts}", "{mode: rts, delay_before_tx_ms: 101}")
           .replace("floor: 3", "floor: [3]"))
    p = meters(src)
    assert errors(p) == [
        f'{p}:17:33: drivers[1].meters[0].address: expected 8 hex digits, got "1234567z"',
        f'{p}:21:36: drivers[1].meters[1].tags.floor: expected a string, number or '
        'true/false, got a list',
        f'{p}:22:42: drivers[1].serial.parity: expected one of "N", "E", "O", got "x"',
        f'{p}:22:51: drivers[1].serial.baud: expected one of 300, 600, 1200, 2400, 4800, '
        '9600, 19200, 38400, 57600, 115200, 230400, got 9601',
        f'{p}:22:96: drivers[1].serial.rs485.delay_before_tx_ms: expected an integer 0-100, '
        'got 101',
    ]


def test_did_you_mean_at_depth(meters):
    src = (nested('address: "87654321"', 'adress: "87654321"')
           .replace("parity: e", "bud: 9600")
           .replace("{mode: rts}", "{mdoe: rts}"))
    p = meters(src)
    assert errors(p) == [
        f"{p}:18:9: drivers[1].meters[1].address: required key is missing (bus address)",
        f'{p}:19:9: drivers[1].meters[1].adress: unknown key; did you mean "address"?',
        f'{p}:22:34: drivers[1].serial.bud: unknown key; did you mean "baud"?',
        f'{p}:22:53: drivers[1].serial.rs485.mdoe: unknown key; did you mean "mode"?',
    ]


def test_missing_keys_at_depth_blame_the_item_or_the_key(meters):
    p = meters(nested("{port: /dev/ttyUSB0, ", "{"))
    assert errors(p) == [f"{p}:22:5: drivers[1].serial.port: required key is missing "
                         "(serial device, e.g. /dev/serial/by-id/usb-FTDI_...; "
                         "it need not exist yet)"]
    p = meters(nested("    serial: {port: /dev/ttyUSB0, parity: e, rs485: {mode: rts}}\n", ""))
    assert errors(p) == [f"{p}:14:5: drivers[1].serial: required key is missing"]
    p = meters(nested("    serial: {port: /dev/ttyUSB0, parity: e, rs485: {mode: rts}}",
                      "    serial:"))
    assert errors(p) == [f"{p}:22:12: drivers[1].serial: expected a mapping with the keys "
                         "port, baud, bytesize, parity, stopbits, rs485, timeout_ms, got null"]


def test_duplicate_unique_key(meters):
    p = meters(VALID + METERS.replace("    serial:", '      - {id: water-17, address: "00000001"}\n'
                                                    "    serial:"))
    assert errors(p) == [f'{p}:22:14: drivers[1].meters[2].id: duplicate id "water-17" '
                         "(first at line 17)"]
    # Still found when the duplicate item has other errors, which are reported too.
    p = meters(VALID + METERS.replace("    serial:", "      - {id: heat-3, address: x}\n"
                                                    "    serial:"))
    assert errors(p) == [
        f'{p}:22:14: drivers[1].meters[2].id: duplicate id "heat-3" (first at line 18)',
        f'{p}:22:31: drivers[1].meters[2].address: expected 8 hex digits, got "x"',
    ]


def test_list_shape_errors(meters):
    src = VALID + METERS.replace("    serial:", "      -\n      - 5\n      - [a]\n    serial:")
    p = meters(src)
    keys = ("a mapping with the keys id, address, manufacturer, key, key_hex, "
            "expected_interval_s, tags")
    assert errors(p) == [
        f"{p}:22:8: drivers[1].meters[2]: expected {keys}, got null",
        f"{p}:23:9: drivers[1].meters[3]: expected {keys}, got 5",
        f"{p}:24:9: drivers[1].meters[4]: expected at most 4 items, got 5",
        f"{p}:24:9: drivers[1].meters[4]: expected {keys}, got a list",
    ]
    start = "    meters:\n"
    end = "    serial:"
    body = METERS[METERS.index(start):METERS.index(end)]
    p = meters(VALID + METERS.replace(body, "    meters: []\n"))
    assert errors(p) == [f"{p}:16:13: drivers[1].meters: expected at least 1 item, "
                         "got an empty list"]
    p = meters(VALID + METERS.replace(body, "    meters: {id: x}\n"))
    assert errors(p) == [f"{p}:16:13: drivers[1].meters: expected a list of mappings with "
                         "the keys id, address, manufacturer, key, key_hex, "
                         "expected_interval_s, tags, got a mapping"]
    p = meters(VALID + METERS + "    extra_keys: keys/water17.key\n")
    assert errors(p) == [f'{p}:23:17: drivers[1].extra_keys: expected a list, each item a '
                         'file path, got "keys/water17.key"']


def test_free_form_tags(meters):
    p = meters(nested("tags: {building: B, floor: 3}",
                      "tags: {building: B, building: C, ? [x]: 1, when: 2024-01-01, n: .inf}"))
    assert errors(p) == [
        f"{p}:21:29: drivers[1].meters[1].tags.building: duplicate key "
        "(first given at line 21)",
        f"{p}:21:44: drivers[1].meters[1].tags: expected a key name, got a list",
        f"{p}:21:58: drivers[1].meters[1].tags.when: expected a string, number or "
        "true/false, got a date 2024-01-01",
        f"{p}:21:73: drivers[1].meters[1].tags.n: expected a string, number or true/false, "
        "got inf",
    ]


def test_one_of_keys_rejects_both(meters):
    p = meters(nested("key: keys/water17.key}", "key: keys/water17.key, key_hex: " + "ab" * 16
                      + "}"))
    assert errors(p) == [f"{p}:17:96: drivers[1].meters[0].key_hex: expected only one of "
                         "key, key_hex, got key and key_hex"]


def test_secret_hex_key_errors_do_not_echo_it(meters):
    p = meters(nested("000102030405060708090A0B0C0D0E0F", "000102030405060708090A0B0C0D0E"))
    assert errors(p) == [f"{p}:20:18: drivers[1].meters[1].key_hex: expected 32 hex digits "
                         "(a 16-byte key), got 30 characters (not shown: secret)"]
    p = meters(nested("000102030405060708090A0B0C0D0E0F", "000102030405060708090A0B0C0D0E0G"))
    (err,) = errors(p)
    assert err.endswith('got 32 characters (not shown: secret); "G" is not a hex digit')
    assert "0001" not in err


def test_secrets_at_depth_warn(meters, tmp_path):
    key = tmp_path / "keys" / "water17.key"
    os.chmod(key, 0o640)
    p = meters(VALID + METERS)
    os.chmod(p, 0o644)
    c = load_config(p)
    assert [str(w) for w in c.warnings] == [
        f"{p}:17:69: drivers[1].meters[0].key: {key} is readable by group/other (mode 0640); "
        "chmod 600 it",
        f"{p}:20:18: drivers[1].meters[1].key_hex: secret written in {p}, which is readable "
        "by group/other (mode 0644); chmod 600 it",
    ]
    s = c.summary()
    assert "0001020304" not in s and "000102030405060708090a0b0c0d0e0f" not in s
    # Masked inside a nested mapping shown in the summary, too.
    with registered("testnested", DriverSchema((FieldSpec("m", mapping(METER_SCHEMA)),))):
        c = load_config(meters(VALID + "  - {type: testnested, m: {id: a, address: "
                               '"00000001", key_hex: ' + "ab" * 16 + ", tags: {x: 1}}}\n"))
        s = c.summary()
    assert 'm={id="a", address="00000001", manufacturer=null, key=***, key_hex=***, ' \
           'expected_interval_s=null, tags={x=1}}' in s
    assert "abab" not in s


def test_yaml_merge_and_aliases_at_depth(meters):
    src = nested("      - id: heat-3\n", "      - <<: &common {manufacturer: KAM, "
                 "expected_interval_s: 900, tags: {site: north}}\n        id: heat-3\n")
    src = src.replace("    serial:", '      - {<<: *common, id: gas-1, address: "00000002"}\n'
                      "    serial:")
    c = load_config(meters(src))
    _, heat, gas = c.drivers[1].options["meters"]
    # Explicit keys win over merged ones.
    assert (heat["manufacturer"], heat["expected_interval_s"], heat["tags"]) == \
        ("KAM", 900, {"building": "B", "floor": 3})
    assert (gas["id"], gas["manufacturer"], gas["tags"]) == ("gas-1", "KAM", {"site": "north"})
    p = meters(src.replace("expected_interval_s: 900", "expected_interval_s: 0"))
    assert [e.split(": ", 2)[1] for e in errors(p)] == [
        "drivers[1].meters[1].expected_interval_s", "drivers[1].meters[2].expected_interval_s"]


@pytest.mark.parametrize("old,new,expected", [
    ("port: /dev/ttyUSB0", "port: /dev/does-not-exist-yet", None),
    ("port: /dev/ttyUSB0", "port: /dev/serial/by-id/usb-FTDI_FT232R-if00-port0", None),
    ("port: /dev/ttyUSB0", "port: ttyUSB0", 'serial.port: expected an absolute serial device '
     'path such as /dev/ttyUSB0, got "ttyUSB0"'),
    ("port: /dev/ttyUSB0", "port: rfc2217://host:4001", 'serial.port: expected an absolute '
     'serial device path such as /dev/ttyUSB0, got "rfc2217://host:4001"'),
    ("port: /dev/ttyUSB0", "port: 5", "serial.port: expected an absolute serial device path"),
    ("parity: e", "bytesize: 9", "serial.bytesize: expected one of 7, 8, got 9"),
    ("parity: e", "stopbits: 1.5", "serial.stopbits: expected one of 1, 2, got 1.5"),
    ("parity: e", "baud: '9600'", 'serial.baud: expected one of 300, 600, 1200, 2400, 4800, '
     '9600, 19200, 38400, 57600, 115200, 230400, got "9600"'),
    ("parity: e", "timeout_ms: 5", "serial.timeout_ms: expected an integer 10-60000, got 5"),
    ("{mode: rts}", "{mode: auto-ish}", 'serial.rs485.mode: expected one of "auto", "kernel", '
     '"rts", got "auto-ish"; did you mean "auto"?'),
    ("{mode: rts}", "{rts_level_for_tx: 1}",
     "serial.rs485.rts_level_for_tx: expected true or false, got 1"),
    ("{mode: rts}", "{delay_before_rx_ms: -1}",
     "serial.rs485.delay_before_rx_ms: expected an integer 0-100, got -1"),
    ("{mode: rts}", "on", "serial.rs485: expected a mapping with the keys mode, "
     "rts_level_for_tx, delay_before_tx_ms, delay_before_rx_ms, got true"),
])
def test_serial_schema(meters, old, new, expected):
    p = meters(nested(old, new))
    if expected is None:
        serial = load_config(p).drivers[1].options["serial"]
        assert serial["port"] == new.split(": ", 1)[1]
    else:
        (err,) = errors(p)
        assert f": drivers[1].{expected}" in err


def test_serial_defaults():
    assert RS485_SCHEMA.defaults() == {"mode": "auto", "rts_level_for_tx": True,
                                       "delay_before_tx_ms": 0, "delay_before_rx_ms": 0}
    with pytest.raises(ValueError):
        SERIAL_SCHEMA.defaults()  # port is required


def test_hex_bytes_check():
    c = hex_bytes(4, "address")
    assert c.expected == "8 hex digits (a 4-byte address)"
    assert c.convert("DEADbeef") == b"\xde\xad\xbe\xef"
    for bad in ("deadbee", "deadbeef0", "de ad be ef", "de:ad:be:ef", "0xdeadbe", ""):
        with pytest.raises(ValueError):
            c.convert(bad)
    with pytest.raises(TypeError):
        c.convert(12345678)
    assert hex_bytes(16).expected == "32 hex digits (a 16-byte key)"


def test_bad_nested_schema_definitions():
    with pytest.raises(ValueError):
        list_of(METER_SCHEMA, unique_key="serial_no")
    with pytest.raises(ValueError):
        list_of(ID, unique_key="id")
    with pytest.raises(ValueError):
        list_of(ID, min_items=2, max_items=1)
    with pytest.raises(ValueError):
        FieldSpec("meter", mapping(METER_SCHEMA), secret=True)
    with pytest.raises(ValueError):
        FieldSpec("meters", list_of(METER_SCHEMA), path=True)
    with pytest.raises(ValueError):
        Schema((FieldSpec("key", PATH),), check=one_of_keys("key", "key_hx"))
    with pytest.raises(ValueError):
        Schema((FieldSpec("a", ID), FieldSpec("a", ID)))
    with pytest.raises(ValueError):
        hex_bytes(0)
    with pytest.raises(ValueError):
        one_of_keys("key")


_paths = st.sampled_from([("meters",), ("serial",), ("meters", 0), ("meters", 1),
                          ("serial", "rs485"), ("meters", 1, "tags"), ("extra_keys",)])


@_FUZZ
@given(_paths, _keys | st.sampled_from(["id", "key", "key_hex", "port", "baud", "mode"]),
       _trees)
def test_fuzz_mutated_nested_options(fuzz_file, path, key, value):
    (fuzz_file.parent / "keys").mkdir(exist_ok=True)
    (fuzz_file.parent / "keys" / "water17.key").write_bytes(bytes(16))
    tree = yaml.safe_load(VALID + METERS)
    target = tree["drivers"][1]
    for step in path:
        target = target.setdefault(step, {}) if isinstance(step, str) else target[step]
    if isinstance(target, dict):
        target[key] = value
    elif isinstance(target, list):
        target.append(value)
    with registered("testmeters", METERS_DRIVER_SCHEMA):
        _load_never_crashes(fuzz_file, yaml.safe_dump(tree, allow_unicode=True).encode("utf-8"))


@pytest.mark.parametrize("entry", [
    "{type: testmeters, meters: &m [*m], serial: {port: /dev/x}}",
    "{type: testmeters, meters: [&i {id: a, address: '00000001', tags: *i}], "
    "serial: &s {port: /dev/x, rs485: *s}}",
    "{type: testmeters, meters: [{id: a, address: '00000001', tags: &t {a: *t}}], "
    "serial: {port: /dev/x}}",
    "{type: testmeters, meters: [{<<: [5]}], serial: {port: !!int abc, baud: !weird 1}}",
    "{type: testmeters, meters: [{id: !!binary '%%', address: !!timestamp x}], serial: ~}",
    "{type: testmeters, meters: [{id: a, address: '00000001', key_hex: !!int 0x" + "f" * 5000
    + "}], serial: {port: /dev/x}, extra_keys: [[[]], {a: b}, '', \"\\0\"]}",
])
def test_odd_nested_yaml_gives_config_error(fuzz_file, entry):
    fuzz_file.write_text(VALID + f"  - {entry}\n", encoding="utf-8")
    with registered("testmeters", METERS_DRIVER_SCHEMA):
        with pytest.raises(ConfigError) as ei:
            load_config(fuzz_file)
    assert ei.value.issues
    assert all(i.line > 0 for i in ei.value.issues)
    str(ei.value).encode("utf-8")

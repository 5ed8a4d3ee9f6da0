"""The M-Bus decoders against the field corpus (tests/corpus/mbus_corpus.json, copied from
libmbus' and wmbusmeters' test material): every standard frame decodes and its records
match the reference readings; libmbus' error frames are refused with one line; what is
out of scope is listed here with its reason, so what is skipped stays visible
(``pytest -rs``)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.protocols.mbus.errors import MBusError
from gateway.protocols.mbus.wired import decode_rsp_ud
from gateway.protocols.mbus.wireless import decode_wmbus
from tests.mbus_corpus_compare import (
    CORPUS, libmbus_mismatches, wmbus_main_values, wmbus_mismatches,
)

LIBMBUS = {f["name"]: f for f in CORPUS["libmbus_frames"]}
ERRORS = {f["name"]: f for f in CORPUS["libmbus_error_frames"]}
WMBUS = {x["cid"]: x for x in CORPUS["wmbus"]}

# Where libmbus' reading is not the standard's, and ours is (record index -> reason).
LIBMBUS_DISAGREES = {
    "landis+gyr_ultraheat_t230": {
        19: "VIFE 0x6F makes the record a date (end of last); libmbus ignores it",
        20: "VIFE 0x6F: a date, see record 19", 21: "VIFE 0x6F: a date, see record 19",
        22: "VIFE 0x6F: a date, see record 19"},
}

# Out of scope, with the reason. Frames whose values only a manufacturer profile can read
# belong to issue 13 (gateway/protocols/mbus/profiles/); they must still never crash.
_QDS = "totals inside a manufacturer-specific record (VIF 0xFF 0x5F): issue 13"
OUT_OF_SCOPE_DRIVERS = {
    "qheatv2": _QDS, "qwaterv2": _QDS, "qheat": _QDS, "qwater": _QDS,
    "bfw240radio": "BFW's own layout after the 2F2F check bytes, not EN 13757-3 records: "
                   "issue 13",
    "apator162": "totals inside the manufacturer data after DIF 0x0F: issue 13",
    "zenner0b": "totals inside the manufacturer data after DIF 0x0F: issue 13",
}
_L_SHORT = ("test artefact: a hand-written telegram whose L field is 2 bytes short of its last "
            "record (wmbusmeters 2.0.0 source comment)")
_NO_FULL = ("compact frame of a meter whose full frame is not in the corpus (wmbusmeters uses "
            "a format built into its driver); we decode it once a full frame was heard")
OUT_OF_SCOPE_TELEGRAMS = {
    "cc:2.0.0:src/driver_qcaloric.cc:240": _L_SHORT,
    "cc:2.0.0:src/driver_evo868.cc:185": _L_SHORT,
    "xmq:HEAD:drivers/src/amiplus.xmq:197": "test artefact: stored decrypted with two stray "
                                            "bytes (DE47) inside the encrypted area",
    "xmq:HEAD:drivers/src/kamwater.xmq:518": _NO_FULL,
    "xmq:HEAD:drivers/src/engelmann_faw.xmq:129": _NO_FULL,
    "xmq:HEAD:drivers/src/sharky.xmq:172": "security mode 21 (manufacturer-specific range "
                                           "16-31): issue 13",
    "xmq:HEAD:drivers/src/hydrus.xmq:166": "security mode 29 (manufacturer-specific range "
                                           "16-31): issue 13",
    "xmq:HEAD:drivers/src/hydrus.xmq:160": "test artefact: encrypted with a key the corpus "
                                           "does not hold (we say meter.no_key)",
}
OUT_OF_SCOPE_CIS = range(0xA0, 0xB8)  # manufacturer-specific application CI: issue 13

# Frames that do not decode yet (issue 12's defects and capabilities); emptied as they land.
KNOWN_FAILING: dict[str, str] = {}


def _decode(x: dict[str, Any]) -> Any:
    key = bytes.fromhex(x["key"]) if x["key"] else None
    raw = bytes.fromhex(x["hex"])
    return decode_wmbus(raw, key) if x["kind"] == "wmbus" else decode_rsp_ud(raw, key)


def _first_ci(raw: bytes) -> int | None:
    """The application CI of a wM-Bus frame (after a short ELL), for the scope rules."""
    if len(raw) < 11:
        return None
    ci = raw[10]
    if ci in (0x8C, 0x8E) and len(raw) > 13 + (8 if ci == 0x8E else 0):
        return raw[13 + (8 if ci == 0x8E else 0)]
    return ci


def out_of_scope(x: dict[str, Any]) -> str | None:
    if x["cid"] in OUT_OF_SCOPE_TELEGRAMS:
        return OUT_OF_SCOPE_TELEGRAMS[x["cid"]]
    if x["driver"] in OUT_OF_SCOPE_DRIVERS:
        return OUT_OF_SCOPE_DRIVERS[x["driver"]]
    if x["kind"] == "wmbus":
        ci = _first_ci(bytes.fromhex(x["hex"]))
        if ci in OUT_OF_SCOPE_CIS:
            return f"manufacturer-specific CI 0x{ci:02X} payload: issue 13"
    return None


# --------------------------------------------------------------------------- libmbus

@pytest.mark.parametrize("name", sorted(LIBMBUS))
def test_libmbus_frame_matches_libmbus(name: str) -> None:
    f = LIBMBUS[name]
    if name in KNOWN_FAILING:
        pytest.xfail(KNOWN_FAILING[name])
    t = decode_rsp_ud(bytes.fromhex(f["hex"]))
    disagree = LIBMBUS_DISAGREES.get(name, {})
    problems = [p for p in libmbus_mismatches(t, f["records"])
                if not any(p.startswith(f"record {i} (") for i in disagree)]
    assert problems == []


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_libmbus_error_frame_is_refused_with_one_line(name: str) -> None:
    with pytest.raises(MBusError) as info:
        decode_rsp_ud(bytes.fromhex(ERRORS[name]["hex"]))
    msg = str(info.value)
    assert msg and "\n" not in msg


# --------------------------------------------------------------------------- wmbusmeters

@pytest.mark.parametrize("cid", sorted(WMBUS))
def test_wmbusmeters_telegram(cid: str) -> None:
    x = WMBUS[cid]
    reason = out_of_scope(x)
    try:
        t = _decode(x)
    except MBusError as exc:
        if reason or not wmbus_main_values(x["expected"]) and not x["expected"]:
            pytest.skip(reason or "wmbusmeters reads nothing from it either")
        if cid in KNOWN_FAILING:
            pytest.xfail(KNOWN_FAILING[cid])
        raise AssertionError(f"{cid}: {type(exc).__name__}: {exc}") from None
    if reason:
        pytest.skip(reason)
    if cid in KNOWN_FAILING:
        pytest.xfail(KNOWN_FAILING[cid])
    assert wmbus_mismatches(t, x["expected"]) == []


def test_scope_lists_stay_short() -> None:
    """The out-of-scope rules cover only what they say (no silent growth)."""
    skipped = [cid for cid, x in WMBUS.items() if out_of_scope(x)]
    assert len(skipped) < len(WMBUS) * 0.35  # mostly issue 13: manufacturer payloads
    assert len(OUT_OF_SCOPE_TELEGRAMS) <= 12
    assert all(cid in WMBUS for cid in OUT_OF_SCOPE_TELEGRAMS)

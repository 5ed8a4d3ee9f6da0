"""The public P1 corpus (dsmr_parser and amshan telegrams, tests/corpus/p1.json, copied from
../shared/corpus/dlms_zigbee.json): every telegram decodes to the values dsmr_parser reads
(OBIS code, exact value, unit) and to its text fields, except the listed exceptions."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.protocols import iec62056_21 as iec
from gateway.protocols import p1

CORPUS = json.loads((Path(__file__).parent / "corpus" / "p1.json").read_text())["p1"]

# (telegram id, obis) -> why our reading differs from the reference on purpose. The same
# class (a W/S flag the reference overrides with the Amsterdam zone) is recognised in any
# telegram by _flag_contradicts_the_zone.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("amshan:test_dlde:EXAMPLE_DATA_C", "0-0:1.0.0"):
        "the meter flags 201020085222 as W (winter, UTC+1) on 20 October, a summer-time "
        "date; dsmr_parser ignores the flag and reads the Amsterdam zone (UTC+2). DSMR "
        "says the flag tells the offset, so we read 07:52:22 UTC as the meter wrote it.",
}


def _flag_contradicts_the_zone(text: str, reference: str) -> bool:
    """The reference read the time in the Amsterdam zone, ignoring a W/S flag that says
    otherwise (see EXCEPTIONS): true when that is the only difference."""
    from zoneinfo import ZoneInfo
    if len(text) != 13 or text[12] not in "WS":
        return False
    local = dt.datetime.strptime(text[:12], "%y%m%d%H%M%S")
    zone = local.replace(tzinfo=ZoneInfo("Europe/Amsterdam"))
    flag_offset = dt.timedelta(hours=1 if text[12] == "W" else 2)
    return zone.utcoffset() != flag_offset and _utc(int(zone.timestamp()) * 1000) == reference


def _telegram(t: dict) -> bytes:
    return t["telegram_latin1"].encode("latin-1")


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(" ")


def _refused_by_its_checksum(t: dict) -> bool:
    """A telegram the reference refused for its checksum: we must refuse it too."""
    if "checksum" in (t["oracle_error"] or "").lower() and t["has_crc"]:
        with pytest.raises(iec.BccError):
            p1.parse_p1(_telegram(t))
        return True
    return False


@pytest.mark.parametrize("t", CORPUS, ids=[t["id"] for t in CORPUS])
def test_every_reference_value_is_read_exactly(t):
    if _refused_by_its_checksum(t):
        return
    tg = p1.parse_p1(_telegram(t))
    assert tg.check == ("crc16" if t["has_crc"] else "none")
    for e in t["expected"]:
        # a line may carry several values (a buffer: monthly peaks...), and a DSMR 2.2/3
        # profile is also known by the object it captured: any of them may be the one
        got = [(v.value, v.unit) for v in tg.values if e["obis"] in (v.obis, v.source)]
        assert (Decimal(e["value"]), e["unit"]) in got, (e, got)


@pytest.mark.parametrize("t", CORPUS, ids=[t["id"] for t in CORPUS])
def test_every_text_field_is_read(t):
    if _refused_by_its_checksum(t):
        return
    tg = p1.parse_p1(_telegram(t))
    for f in t["text_fields"]:
        if (t["id"], f["obis"]) in EXCEPTIONS:
            continue
        v = tg.get(f["obis"])
        assert v is not None, f
        if f["value"].endswith("+00:00"):  # a time stamp, as UTC
            if _flag_contradicts_the_zone(v.text, f["value"]):
                continue  # the class of the listed exception: we follow the meter's flag
            assert _utc(p1.parse_timestamp(v.text)) == f["value"]
            if f["obis"] == "0-0:1.0.0":
                assert tg.meter_ts_ms == p1.parse_timestamp(v.text)
        else:
            assert (v.text or "None") == f["value"]


def test_the_listed_exception_is_the_flag_not_a_misread():
    t = next(t for t in CORPUS if t["id"] == "amshan:test_dlde:EXAMPLE_DATA_C")
    tg = p1.parse_p1(_telegram(t))
    assert _utc(tg.meter_ts_ms) == "2020-10-20 07:52:22+00:00"  # 08:52:22 at UTC+1 (W)


@pytest.mark.parametrize("t", CORPUS, ids=[t["id"] for t in CORPUS])
def test_the_push_splitter_cuts_each_telegram_out_of_a_stream(t):
    if _refused_by_its_checksum(t):
        return
    raw = _telegram(t)
    sp = iec.PushSplitter()
    sp.receive_data(b"noise\r\n" + raw + raw)
    got = [sp.next_telegram(), sp.next_telegram()]
    if got[1] is None:
        got[1] = sp.flush()
    for g in got:
        assert g is not None
        assert p1.parse_p1(g) == p1.parse_p1(raw)


@pytest.mark.parametrize("t", CORPUS, ids=[t["id"] for t in CORPUS])
def test_parse_readout_agrees_on_the_check(t):
    if _refused_by_its_checksum(t):
        return
    r = iec.parse_readout(_telegram(t))
    assert r.check == ("crc16" if t["has_crc"] else "none")
    assert all(ds.address for ds in r.data_sets)  # no reading with an empty OBIS code

"""Truncations and mutations of every corpus frame, with the checksums recomputed so the
damage reaches the parsers (wired checksum, wM-Bus block CRCs of formats A and B, the ELL
payload CRC): only the codec's own MBusError may come out, and never through the last
line of defence (``guarded``: "internal decoder error"), which would mean a parser bug."""

from __future__ import annotations



import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.mbus import wired, wireless
from gateway.protocols.mbus.compact import Formats
from gateway.protocols.mbus.crc import crc_en13757
from gateway.protocols.mbus.errors import INTERNAL, MBusError
from tests.mbus_corpus_compare import CORPUS

WIRED = [bytes.fromhex(f["hex"]) for f in CORPUS["libmbus_frames"]] \
    + [bytes.fromhex(f["hex"]) for f in CORPUS["libmbus_error_frames"]] \
    + [bytes.fromhex(x["hex"]) for x in CORPUS["wmbus"] if x["kind"] == "mbus"]
RADIO = [(bytes.fromhex(x["hex"]), bytes.fromhex(x["key"]) if x["key"] else None)
         for x in CORPUS["wmbus"] if x["kind"] == "wmbus"]


def wired_user_data(raw: bytes) -> bytes | None:
    """C, A, CI and data of a long frame (None for anything else)."""
    if len(raw) < 9 or raw[0] != 0x68 or raw[3] != 0x68:
        return None
    return raw[4:4 + raw[1]]


def long_frame(body: bytes) -> bytes:
    body = body[:255]
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) & 0xFF, 0x16))


def radio_plain(raw: bytes) -> bytes:
    """The frame without block CRCs (as most dongles deliver it)."""
    try:
        f, _ = wireless.strip_crc(wireless.split_trailing(raw)[0])
        return f
    except MBusError:
        return raw


def fix_ell_crc(f: bytearray) -> None:
    """Recompute the ELL payload CRC of a CI 0x8D/0x8F frame (stored in clear)."""
    if len(f) > 11 and f[10] in (0x8D, 0x8F):
        start = 11 + (6 if f[10] == 0x8D else 14)
        if len(f) >= start + 2:
            f[start:start + 2] = crc_en13757(bytes(f[start + 2:])).to_bytes(2, "little")


def check_wired(body: bytes, formats: Formats | None = None) -> None:
    for frame in (long_frame(body), long_frame(body) + b"\x00"):
        try:
            wired.decode_rsp_ud(frame, formats=formats)
        except MBusError as exc:
            assert INTERNAL not in str(exc), f"{frame.hex()}: {exc}"


def check_radio(f: bytes, key: bytes | None, formats: Formats | None = None) -> None:
    f = bytearray(f)
    if f:
        f[0] = (len(f) - 1) & 0xFF
    fix_ell_crc(f)
    variants = [bytes(f)]
    if 11 <= len(f) <= 256:
        variants += [wireless.add_crc(bytes(f), "A"), wireless.add_crc(bytes(f), "B")]
    for v in variants:
        for k in (key, None):
            try:
                wireless.decode_wmbus(v, k, formats=formats)
            except MBusError as exc:
                assert INTERNAL not in str(exc), f"{v.hex()}: {exc}"


# --------------------------------------------------------------------------- every truncation

@pytest.mark.parametrize("i", range(len(WIRED)))
def test_every_truncation_of_every_wired_frame(i: int) -> None:
    raw = WIRED[i]
    body = wired_user_data(raw)
    for n in range(len(raw)):
        try:
            wired.decode_rsp_ud(raw[:n])
        except MBusError as exc:
            assert INTERNAL not in str(exc)
    if body is not None:
        for n in range(3, len(body)):
            check_wired(body[:n])  # shorter frames with a valid L and checksum


@pytest.mark.parametrize("i", range(len(RADIO)))
def test_every_truncation_of_every_radio_telegram(i: int) -> None:
    raw, key = RADIO[i]
    plain = radio_plain(raw)
    for n in range(len(raw)):
        try:
            wireless.decode_wmbus(raw[:n], key)
        except MBusError as exc:
            assert INTERNAL not in str(exc)
    for n in range(11, len(plain)):
        check_radio(plain[:n], key)


# --------------------------------------------------------------------------- mutations

def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b[:max(0, len(b) - cut)])


edits_strategy = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                          min_size=1, max_size=6)


@settings(max_examples=500)
@given(i=st.integers(0, len(WIRED) - 1), edits=edits_strategy, cut=st.integers(0, 8))
def test_mutated_wired_frames_raise_only_mbus_errors(i: int, edits: list[tuple[int, int]],
                                                     cut: int) -> None:
    body = wired_user_data(WIRED[i]) or WIRED[i]
    # keep C = RSP_UD so the mutation reaches the application layer
    mutated = bytearray(_mutate(body[1:], edits, cut))
    check_wired(body[:1] + bytes(mutated))


@settings(max_examples=500)
@given(i=st.integers(0, len(RADIO) - 1), edits=edits_strategy, cut=st.integers(0, 8),
       learn=st.booleans())
def test_mutated_radio_telegrams_raise_only_mbus_errors(i: int, edits: list[tuple[int, int]],
                                                        cut: int, learn: bool) -> None:
    raw, key = RADIO[i]
    plain = radio_plain(raw)
    formats = Formats() if learn else None
    if formats is not None:  # a session that has heard the original: compact paths run
        try:
            wireless.decode_wmbus(plain, key, formats=formats)
        except MBusError:
            pass
    # the DLL header (L C M A) stays as it was, so the mutation reaches the layers above
    check_radio(plain[:10] + _mutate(plain[10:], edits, cut), key, formats)


@settings(max_examples=300)
@given(i=st.integers(0, len(RADIO) - 1), data=st.binary(max_size=40),
       at=st.integers(0, 300))
def test_random_bytes_spliced_into_radio_telegrams(i: int, data: bytes, at: int) -> None:
    plain = radio_plain(RADIO[i][0])
    at = 11 + at % max(1, len(plain) - 10)
    check_radio(plain[:at] + data + plain[at:], RADIO[i][1])



"""The retained birth, the shutdown notice and the LWT are signed like envelopes and stay
readable JSON; verify_status is the head-end's check and raises only envelope errors."""

from __future__ import annotations

import json
import queue
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from gateway.wire.envelope import EnvelopeError
from gateway.wire.errors import BadSignature, MalformedEnvelope, UnknownSigner
from gateway.uplink.status import sign_status, verify_status
from tests.gwproc import start_gateway, write_config

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key()
BIRTH = {"state": "online", "gateway": "gw-0001", "ts_ms": 1_704_067_200_000,
         "firmware": "1.2.3", "epoch": "00112233445566aa", "config_hash": "ab" * 16,
         "board": "rpi4", "note": "zähler"}


def test_signed_status_is_readable_and_verifies() -> None:
    payload = sign_status(BIRTH, KEY)
    doc = json.loads(payload)
    assert {k: doc[k] for k in BIRTH} == BIRTH and len(doc["sig"]) == 86  # 64 bytes base64url
    assert verify_status(payload, {"gw-0001": PUB}, "gw-0001") == BIRTH
    assert verify_status(payload, {"*": PUB}) == BIRTH
    # Whitespace or key order of the transport does not matter, the content does.
    assert verify_status(json.dumps(doc, indent=2).encode(), {"gw-0001": PUB}) == BIRTH


@pytest.mark.parametrize("change, error", [
    (lambda d: d.update(state="offline"), BadSignature),
    (lambda d: d.update(firmware="6.6.6"), BadSignature),
    (lambda d: d.update(gateway="gw-0002"), BadSignature),
    (lambda d: d.pop("sig"), BadSignature),
    (lambda d: d.update(sig="!!"), BadSignature),
    (lambda d: d.update(sig=42), BadSignature),
    (lambda d: d.pop("gateway"), MalformedEnvelope),
])
def test_tampered_status_is_refused(change, error) -> None:
    doc = json.loads(sign_status(BIRTH, KEY))
    change(doc)
    with pytest.raises(error):
        verify_status(json.dumps(doc).encode(), {"*": PUB})


def test_status_from_the_wrong_key_topic_or_signer() -> None:
    payload = sign_status(BIRTH, KEY)
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(BadSignature):
        verify_status(payload, {"gw-0001": other})
    with pytest.raises(UnknownSigner):
        verify_status(payload, {"gw-0002": PUB})
    with pytest.raises(BadSignature):  # gw-0001's status on gw-0002's topic
        verify_status(payload, {"*": PUB}, gateway_id="gw-0002")
    dup = payload[:-1] + b',"state":"offline"}'  # two readings of one document
    with pytest.raises(MalformedEnvelope):
        verify_status(dup, {"*": PUB})
    with pytest.raises(ValueError):
        sign_status({"state": "online"}, KEY)  # a status names its signer


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=300),
                      st.tuples(st.integers(0, 400), st.integers(0, 255)).map(
                          lambda t: _mutate(t[0], t[1])),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                   lambda c: st.lists(c, max_size=4)
                                   | st.dictionaries(st.text(max_size=6), c, max_size=4),
                                   max_leaves=20).map(lambda o: json.dumps(o).encode())))
def test_any_input_raises_only_envelope_errors(data: bytes) -> None:
    try:
        verify_status(data, {"*": PUB})
    except EnvelopeError:
        pass


def _mutate(at: int, value: int) -> bytes:
    p = bytearray(sign_status(BIRTH, KEY))
    p[at % len(p)] = value
    return bytes(p)


def test_real_gateway_birth_and_lwt_are_signed(tmp_path: Path, pki: Path, broker,
                                               mqtt_client_factory) -> None:
    """Through the real broker: the retained birth of a running gateway, and the LWT the
    broker publishes when the gateway dies (SIGKILL: no goodbye of its own)."""
    got: queue.Queue = queue.Queue()
    head = mqtt_client_factory("headend", on_message=lambda _c, _u, m: got.put(m))
    head.subscribe("meters/+/status", qos=1)
    pub = serialization.load_pem_public_key((pki / "gateway-sign.pub").read_bytes())
    gw = start_gateway(write_config(tmp_path, pki, broker.port), tmp_path / "gw.log")
    try:
        msg = got.get(timeout=30)
        birth = verify_status(msg.payload, {"gw-0001": pub}, msg.topic.split("/")[1])
        assert birth["state"] == "online"
        assert {"firmware", "epoch", "config_hash", "board"} <= set(birth)
        late: queue.Queue = queue.Queue()  # a head-end that comes later gets the retained one
        mqtt_client_factory("headend", on_message=lambda _c, _u, m: late.put(m)).subscribe(
            "meters/gw-0001/status", qos=1)
        kept = late.get(timeout=10)
        assert kept.retain and verify_status(kept.payload, {"gw-0001": pub}) == birth
    finally:
        gw.kill()
    msg = got.get(timeout=30)
    lwt = verify_status(msg.payload, {"gw-0001": pub}, "gw-0001")
    assert (lwt["state"], lwt["reason"]) == ("offline", "connection lost")
    assert msg.topic == "meters/gw-0001/status"

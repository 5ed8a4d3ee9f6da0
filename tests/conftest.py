"""Shared fixtures: a dev PKI, a real mutual-TLS mosquitto, connected MQTT clients."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from hypothesis import settings

from tools.broker import Broker, client_tls_context, connect_client
from tools.devpki import make_pki

settings.register_profile("ci", deadline=None, max_examples=100)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

ClientFactory = Callable[..., mqtt.Client]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev PKI (ca, broker, gateway=gw-0001, headend, gateway-sign) shared by the session."""
    out = tmp_path_factory.mktemp("pki")
    make_pki(out)
    return out


@pytest.fixture
def broker(pki: Path, tmp_path: Path) -> Iterator[Broker]:
    """A started mutual-TLS broker on a free loopback port; its log stays in tmp_path/broker."""
    b = Broker(pki, data_dir=tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def module_broker(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker shared by a module's tests (for modules that start a long-lived gateway)."""
    b = Broker(pki, data_dir=tmp_path_factory.mktemp("broker"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def mqtt_client_factory(broker: Broker, pki: Path) -> Iterator[ClientFactory]:
    """`make(name='headend', **kw)` -> connected, looping paho client using `{name}.pem/.key`.

    kw go to paho's Client (client_id, protocol, clean_session, userdata, ...)
    except timeout/keepalive/clean_start/properties (connect) and on_message,
    which is set before connecting.  Every client is disconnected at teardown.
    """
    clients: list[mqtt.Client] = []

    def make(name: str = "headend", **kw: Any) -> mqtt.Client:
        client = connect_client(broker.host, broker.port, client_tls_context(pki, name), **kw)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.disconnect()
        c.loop_stop()

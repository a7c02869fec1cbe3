"""Shared fixtures: a real nats-server per test that wants one, anonymous or in operator (JWT) mode, and a hub with
a city leafnode. Shared functions are in `tests/helpers.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.helpers import Topology, private_pulseaudio, start_auth_nats, wait_for_log

from citycast.bus.authority import NatsAuthority
from citycast.bus.city_bundle import CityBundle, export_city_bundle
from citycast.bus.server import EmbeddedNats, free_port


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(port=free_port(), workdir=tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def authority(tmp_path: Path) -> NatsAuthority:
    """The hub's operator, account and user keys, in `tmp_path/auth`."""
    return NatsAuthority.load_or_create(tmp_path / "auth")


@pytest.fixture
def auth_nats(authority: NatsAuthority, tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server in operator (JWT) mode trusting `authority`: anonymous clients are refused."""
    server = start_auth_nats(authority, tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def topology(authority: NatsAuthority, tmp_path: Path) -> AsyncIterator[Topology]:
    """The hub's server listening for leafnodes and a city server run from `authority.city_bundle`, dialling it."""
    leaf_port = free_port()
    hub = start_auth_nats(authority, tmp_path / "hub", leaf_listen_port=leaf_port)
    city: EmbeddedNats | None = None
    try:
        bundle = export_city_bundle(authority, tmp_path / "north.bundle", "north")
        city, files = CityBundle.load(tmp_path / "north.bundle").embedded_nats(
            f"nats://127.0.0.1:{leaf_port}", tmp_path / "city", port=free_port()
        )
        city.start()
        # Both leaf connections up, and the system account's one extending the hub's JetStream.
        await wait_for_log(city, "Leafnode connection created for account", 2)
        await wait_for_log(city, "Extending JetStream domain")
        yield Topology(authority, hub, city, bundle, files, tmp_path)
    finally:
        if city is not None:
            city.stop()
        hub.stop()


@pytest.fixture
def pulse_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private PulseAudio daemon with a 48 kHz null sink `cc_null` (its monitor is the default source); yields
    the client environment."""
    with private_pulseaudio(tmp_path) as env:
        yield env

"""Shared fixtures: a real nats-server per test that wants one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from citycast.bus.server import EmbeddedNats, free_port


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(port=free_port(), workdir=tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()

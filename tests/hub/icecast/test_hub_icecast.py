"""The whole hub with `serve --icecast`: an address to a zone is heard on that zone's mount and on "all", under
its title; the console's setting turns the streaming off and on while the hub runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.helpers import need_binary, wait_until

from citycast.bus.server import free_port
from citycast.hub.icecast.service import IcecastOptions
from citycast.hub.icecast.source import parse_icecast_url
from citycast.hub.runtime import Hub, HubOptions
from citycast.tooling.bench.icecast import LocalIcecast, MountListener
from citycast.tooling.markers import detect_markers


@pytest.fixture
def icecast(tmp_path: Path) -> Iterator[LocalIcecast]:
    need_binary("icecast2")
    server = LocalIcecast(tmp_path / "icecast")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


async def test_an_address_is_heard_on_its_zones_mount_under_its_title(icecast: LocalIcecast, tmp_path: Path) -> None:
    opts = HubOptions(
        data_dir=tmp_path / "hub",
        http_port=free_port(),
        nats_port=free_port(),
        https=None,
        icecast=IcecastOptions(parse_icecast_url(icecast.url, icecast.password)),
    )
    hub = Hub(opts)
    await hub.start()
    listener: MountListener | None = None
    try:
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=20) as api:
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            zone = (await api.post("/api/zones", json={"name": "orangi", "channel": 5})).json()["id"]
            mount = f"/zone-{zone}.ogg"
            await wait_until(lambda: icecast.mount(mount) is not None, f"{mount} on Icecast", timeout=15)
            assert icecast.mount("/all.ogg") is not None and icecast.mount("/all.mp3") is not None
            listener = MountListener(icecast.url + mount, "ogg").start()
            body = {"title": "Flood warning", "source": "marker", "zone_ids": [zone], "priority": "emergency"}
            r = await api.post("/api/addresses", json=body)
            assert r.status_code in (200, 201), r.text
            await wait_until(
                lambda: len(detect_markers(listener.audio())) >= 2,
                "the address's markers decoded from the zone's mount",
                timeout=15,
                every=0.5,
                detail=lambda: listener.error,
            )
            assert b"title=Flood warning" in listener.raw
            await wait_until(
                lambda: (icecast.mount("/all.mp3") or {}).get("title") == "Flood warning", "the MP3 mount's title"
            )
            status = (await api.get("/api/settings/icecast")).json()
            assert status["enabled"] and {m["mount"] for m in status["mounts"]} >= {mount, "/all.ogg", "/all.mp3"}

            r = await api.put("/api/settings/icecast", json={"enabled": False})
            assert r.status_code == 200 and r.json()["mounts"] == []
            await wait_until(lambda: icecast.status() == [], "every mount gone")
            r = await api.put(
                "/api/settings/icecast", json={"enabled": True, "url": icecast.url, "password": icecast.password}
            )
            assert r.status_code == 200, r.text
            await wait_until(lambda: icecast.mount(mount) is not None, "the mounts back", timeout=15)
    finally:
        if listener is not None:
            listener.stop()
        await hub.stop()

"""`citycast serve --packets-per-message 2`: an address's bus messages carry two 20 ms Opus packets each, so every
site checks half the signatures and handles half the messages (issue 11), with the audio whole."""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
import nats.aio.msg
from tests.helpers import wait_until

from citycast.bus.server import free_port
from citycast.hub.runtime import Hub, HubOptions
from citycast.protocol.frame import Frame, parse_frame


async def test_an_address_goes_out_two_packets_a_message(tmp_path: Path) -> None:
    opts = HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port(), packets_per_message=2)
    hub = Hub(opts)
    await hub.start()
    try:
        assert hub.nc is not None and hub.admin_password
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=20) as api:
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            zone = (await api.post("/api/zones", json={"name": "saddar", "channel": 3})).json()["id"]
            frames: list[Frame] = []

            async def on_msg(msg: nats.aio.msg.Msg) -> None:
                frames.append(parse_frame(msg.data)[0])

            r = await api.post("/api/addresses", json={"title": "t", "source": "tone", "zone_ids": [zone],
                                                       "priority": "live"})  # fmt: skip
            assert r.status_code in (200, 201), r.text
            sub = await hub.nc.subscribe(hub.subjects.audio(r.json()["channel"]), cb=on_msg)  # an address's own
            await wait_until(lambda: len(frames) >= 25, "a second of the address on the bus", timeout=15)
            await api.post(f"/api/addresses/{r.json()['id']}/stop")
            await sub.unsubscribe()
    finally:
        await hub.stop()
    assert all(len(f.packets) == 2 for f in frames), [len(f.packets) for f in frames]
    # Back to back: each message starts where the one before ended (nothing lost by packing two to a message).
    for a, b in itertools.pairwise(frames):
        assert b.ts_ns == a.ts_ns + 2 * a.packet_ns

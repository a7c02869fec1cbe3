"""`citycast serve --packets-per-message 2`: an address's bus messages carry two 20 ms Opus packets each, so every
site checks half the signatures and handles half the messages (issue 11), with the audio whole. Unset, a channel
whose D is 200 ms or more (long haul) gets two, a LAN's one."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
import nats.aio.msg
import pytest
from tests.helpers import wait_until

from citycast.bus.server import free_port
from citycast.hub.runtime import Hub, HubOptions
from citycast.protocol.delay import DelaySchedule
from citycast.protocol.frame import Frame, parse_frame


@pytest.mark.parametrize(
    ("chosen", "expected"),
    [
        ({"packets_per_message": 2}, 2),
        ({"delay_ms": 300.0}, 2),
        ({}, 1),
        ({"delay_ms": 300.0, "packets_per_message": 1}, 1),
    ],
    ids=["chosen-2", "long-haul-D", "lan-D", "chosen-1-on-long-haul"],
)
async def test_an_address_goes_out_as_many_packets_a_message_as_chosen_or_its_D_asks(
    tmp_path: Path, chosen: dict[str, Any], expected: int
) -> None:
    opts = HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port(), **chosen)
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
    assert all(len(f.packets) == expected for f in frames), [len(f.packets) for f in frames]
    # Back to back: each message starts where the one before ended (nothing lost by packing two to a message).
    for a, b in itertools.pairwise(frames):
        assert b.ts_ns == a.ts_ns + expected * a.packet_ns


async def test_the_tuners_D_decides_for_the_next_address(tmp_path: Path) -> None:
    """The self-tuning delay raised a LAN channel's D to a long haul's: the next address on it (file, phone or
    browser alike: they all ask `packing`) goes out two packets a message; a channel the tuner left alone, one."""
    hub = Hub(HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port()))
    await hub.start()
    try:
        assert hub.addresses is not None and hub.signer is not None
        assert hub.addresses.packing(7) == 1
        hub.signer.delays[7] = DelaySchedule(old_delay_ns=80_000_000, new_delay_ns=490_000_000, from_ts_ns=0,
                                             ramp_ns=41_000_000_000)  # fmt: skip
        assert hub.addresses.packing(7) == 2
        assert hub.addresses.packing(8) == 1
    finally:
        await hub.stop()

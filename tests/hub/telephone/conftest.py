"""The telephone's fixture against real SIP peers: `rig`, a hub with a site agent and the telephone listening
(what it holds is `tests/hub/telephone/rig.py`'s `Rig`). test_ua_more.py has a rig of its own (three sites, the
talkback source), which overrides this one there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from tests.helpers import wait_until
from tests.hub.telephone.rig import PIN, Rig, free_rtp_range

from citycast.bus.server import free_port
from citycast.clock.local import SystemClock
from citycast.hub.auth.passwords import hash_password
from citycast.hub.db.models import Priority, SpeakerPin
from citycast.hub.runtime import Hub, HubOptions
from citycast.hub.telephone.pins import PinGuard, hint_of
from citycast.hub.telephone.service import Telephone
from citycast.media.sinks import TimedSink
from citycast.site.agent import SiteAgent
from citycast.site.enrol import enrol
from citycast.site.run import SiteOptions, build_site


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A hub with two zones, one enrolled site agent (timed sink, WAV) in the first, the telephone, and PIN 2468
    for the first zone."""
    hub = Hub(HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port(), delay_ms=120))
    await hub.start()
    agent: SiteAgent | None = None
    phone: Telephone | None = None
    try:
        assert hub.admin_password
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=20) as api:
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            zones = [
                (await api.post("/api/zones", json={"name": n, "channel": c})).json()["id"]
                for n, c in (("saddar", 1), ("clifton", 2))
            ]
            r = await api.post("/api/sites", json={"name": "saddar-1", "lat": 24.86, "lon": 67.02, "zone_id": zones[0]})
            assert r.status_code in (200, 201), r.text
            path = tmp_path / "saddar-1.json"
            cred = await enrol(hub.http_url, r.json()["enrol_token"], path)
        opts = SiteOptions(name="ignored", nats_url="", trust=Path("/nonexistent"), sink="timed",
                           credentials=cred, credentials_path=path)  # fmt: skip
        agent = build_site(opts)
        agent.sink = TimedSink(SystemClock(), block=480, wav_path=tmp_path / "saddar-1.wav")
        await agent.start()
        with hub.db.session() as s:
            s.add(SpeakerPin(label="Imam Saddar", pin_hash=hash_password(PIN), pin_hint=hint_of(PIN),
                             zone_ids=[zones[0]], priority=Priority.live))  # fmt: skip
        await wait_until(
            lambda: any(v["state"] == "idle" for v in hub.fleet.snapshot()), "the site to come up", timeout=30
        )
        phone = Telephone(
            hub.telephone_services(), "127.0.0.1", free_port(), free_rtp_range(), ring_s=0.3, guard=PinGuard()
        )
        await phone.start()
        yield Rig(hub, phone, zones[0], zones[1], agent, tmp_path)
    finally:
        if phone is not None:
            await phone.stop()
        if agent is not None:
            await agent.stop()
        await hub.stop()

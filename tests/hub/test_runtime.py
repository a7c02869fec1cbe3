"""The whole hub as `citycast serve` runs it: NATS in JWT mode, API, enrolment, a real site agent with its own
credentials, an address to one zone, its recording, and revocation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import av
import httpx

from citycast.bus.server import free_port
from citycast.clock.local import SystemClock
from citycast.hub.runtime import Hub, HubOptions
from citycast.media.sinks import TimedSink
from citycast.site.enrol import enrol
from citycast.site.run import SiteOptions, build_site


async def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def _scenario(tmp: Path) -> None:
    hub = Hub(HubOptions(data_dir=tmp / "hub", http_port=free_port(), nats_port=free_port(), delay_ms=120))
    await hub.start()
    try:
        assert hub.admin_password
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=20) as api:
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            zones = [
                (await api.post("/api/zones", json={"name": n, "channel": c})).json()["id"]
                for n, c in (("saddar", 1), ("clifton", 2))
            ]
            tokens = {}
            for name, zone in (("saddar-1", zones[0]), ("clifton-1", zones[1])):
                r = await api.post("/api/sites", json={"name": name, "lat": 24.86, "lon": 67.02, "zone_id": zone})
                assert r.status_code in (200, 201), r.text
                tokens[name] = r.json()["enrol_token"]
            agents = {}
            for name, token in tokens.items():
                path = tmp / "sites" / f"{name}.json"
                cred = await enrol(hub.http_url, token, path)
                assert path.stat().st_mode & 0o077 == 0
                opts = SiteOptions(name="ignored", nats_url="", trust=Path("/nonexistent"), sink="timed",
                                   credentials=cred, credentials_path=path)  # fmt: skip
                agent = build_site(opts)
                agent.sink = TimedSink(SystemClock(), block=480)
                await agent.start()
                agents[name] = agent
            # Used tokens do not work twice.
            r = await api.post("/api/enrol", json={"token": tokens["saddar-1"], "nkey_public": "U" + "A" * 55})
            assert r.status_code >= 400

            async def states() -> dict[str, str]:
                return {s["name"]: s["state"] for s in (await api.get("/api/sites")).json()}

            deadline = time.monotonic() + 30
            while set((await states()).values()) != {"idle"}:
                assert time.monotonic() < deadline, await states()
                await asyncio.sleep(0.3)
            r = await api.post(
                "/api/addresses", json={"title": "t", "source": "tone", "zone_ids": [zones[0]], "priority": "live"}
            )
            assert r.status_code in (200, 201), r.text
            address = r.json()
            deadline = time.monotonic() + 15
            while (await states()) != {"saddar-1": "playing", "clifton-1": "idle"}:
                assert time.monotonic() < deadline, await states()
                await asyncio.sleep(0.3)
            await asyncio.sleep(2)
            r = await api.post(f"/api/addresses/{address['id']}/stop")
            assert r.status_code == 200, r.text
            recs = (await api.get("/api/recordings")).json()
            assert len(recs) == 1
            audio = await api.get(f"/api/recordings/{recs[0]['id']}/audio")
            assert audio.status_code == 200 and audio.headers["content-type"].startswith("audio/ogg")
            ogg = tmp / "rec.ogg"
            ogg.write_bytes(audio.content)
            with av.open(str(ogg)) as c:
                seconds = sum(f.samples for f in c.decode(audio=0)) / 48_000
            assert seconds > 2.0
            # Revocation closes the live connection and the site is refused from then on.
            site_id = next(s["id"] for s in (await api.get("/api/sites")).json() if s["name"] == "clifton-1")
            r = await api.post(f"/api/sites/{site_id}/revoke")
            assert r.status_code == 200, r.text
            victim = agents["clifton-1"]
            assert victim.nc is not None
            await _wait(lambda: not victim.nc.is_connected, 10, "revoked site still connected")  # type: ignore[union-attr]
            for a in agents.values():
                await a.stop()
            audit = (await api.get("/api/audit")).json()
            actions = {e["action"] for e in audit}
            assert {"site.create", "address.start", "address.stop", "site.revoke"} <= actions
    finally:
        await hub.stop()


def test_hub_end_to_end(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))

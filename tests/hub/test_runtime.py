"""The whole hub as `citycast serve` runs it: NATS in JWT mode, API, enrolment, a real site agent with its own
credentials, an address to one zone, its recording, and revocation."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path

import av
import httpx
import numpy as np
import websockets
from tests.helpers import let_time_pass, wait_until

from citycast.bus.connection import connect, settle
from citycast.bus.server import free_port
from citycast.clock.local import SystemClock
from citycast.hub.runtime import Hub, HubOptions
from citycast.ingest.run import IngestOptions, run_ingest
from citycast.media.keys import generate_private_key, load_private_key
from citycast.media.sinks import TimedSink
from citycast.media.sources import ToneSource, read_audio
from citycast.protocol.frame import FrameSigner
from citycast.site.agent import SiteAgent
from citycast.site.enrol import enrol
from citycast.site.run import SiteOptions, build_site
from citycast.tooling.demo import speech_asset
from citycast.tooling.markers import correlate_lag


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
                opts = SiteOptions(
                    name="ignored",
                    nats_url="",
                    trust=Path("/nonexistent"),
                    sink="timed",
                    credentials=cred,
                    credentials_path=path,
                    talkback_source=str(speech_asset()),
                )
                agent = build_site(opts)
                agent.sink = TimedSink(SystemClock(), block=480)
                await agent.start()
                agents[name] = agent
            # Used tokens do not work twice.
            r = await api.post("/api/enrol", json={"token": tokens["saddar-1"], "nkey_public": "U" + "A" * 55})
            assert r.status_code >= 400

            async def states() -> dict[str, str]:
                return {s["name"]: s["state"] for s in (await api.get("/api/sites")).json()}

            async def all_idle() -> bool:
                return set((await states()).values()) == {"idle"}

            await wait_until(all_idle, "every site idle", timeout=30, every=0.3)
            await _forged_audio_alerts_within_10_s(hub, api)
            await _talkback_hears_the_sites_microphone(hub, api, agents["saddar-1"])
            # A separate `citycast ingest` plays with the hub's key and the ingest user's credentials.
            before = agents["saddar-1"].frames
            opts = IngestOptions(nats_url=hub.nats_url, channel=1, seconds=1.0, creds=hub.authority.ingest_creds_path)  # type: ignore[union-attr]
            await run_ingest(ToneSource(), load_private_key(tmp / "hub" / "ingest.key"), opts)
            await wait_until(lambda: agents["saddar-1"].frames >= before + 40, "the ingest to be heard", timeout=5)
            r = await api.post(
                "/api/addresses", json={"title": "t", "source": "tone", "zone_ids": [zones[0]], "priority": "live"}
            )
            assert r.status_code in (200, 201), r.text
            address = r.json()

            async def only_saddar_plays() -> bool:
                return (await states()) == {"saddar-1": "playing", "clifton-1": "idle"}

            await wait_until(only_saddar_plays, "saddar-1 playing, clifton-1 idle", timeout=15, every=0.3)
            await let_time_pass(2)  # the address runs ≈ 2 s: its recording is checked below
            r = await api.post(f"/api/addresses/{address['id']}/stop")
            assert r.status_code == 200, r.text
            recs = (await api.get("/api/recordings")).json()
            assert len(recs) == 1
            # second 0 of the file is the address's first frame, played after the recording's row was made
            opened, first = (dt.datetime.fromisoformat(recs[0][k]) for k in ("started_at", "first_sample_at"))
            assert dt.timedelta(0) < first - opened < dt.timedelta(seconds=3), recs[0]
            audio = await api.get(f"/api/recordings/{recs[0]['id']}/audio")
            assert audio.status_code == 200 and audio.headers["content-type"].startswith("audio/ogg")
            ogg = tmp / "rec.ogg"
            ogg.write_bytes(audio.content)
            with av.open(str(ogg)) as c:
                seconds = sum(f.samples for f in c.decode(audio=0)) / 48_000
            assert seconds > 1.5  # the address ran ≈ 2.3 s; the tail after the stop is not sent
            # Revocation closes the live connection and the site is refused from then on.
            site_id = next(s["id"] for s in (await api.get("/api/sites")).json() if s["name"] == "clifton-1")
            r = await api.post(f"/api/sites/{site_id}/revoke")
            assert r.status_code == 200, r.text
            victim = agents["clifton-1"]
            assert victim.nc is not None
            await wait_until(
                lambda: not victim.nc.is_connected,  # type: ignore[union-attr]
                "the revoked site to be dropped",
                timeout=10,
            )
            for a in agents.values():
                await a.stop()
            audit = (await api.get("/api/audit")).json()
            actions = {e["action"] for e in audit}
            assert {"site.create", "address.start", "address.stop", "site.revoke"} <= actions
    finally:
        await hub.stop()


async def _forged_audio_alerts_within_10_s(hub: Hub, api: httpx.AsyncClient) -> None:
    """A stranger's audio (signed with a key no site trusts) is refused by the sites and raised as a critical
    alert on the console's live feed within 10 s."""
    token = api.headers["Authorization"].removeprefix("Bearer ")
    ws_url = hub.http_url.replace("http://", "ws://") + "/api/ws"
    bearer = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(ws_url, max_size=None, additional_headers=bearer) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"
        assert hub.authority is not None
        # The hub's creds file carries its TLS CA: citycast's connect() dials TLS with it.
        nc = await connect(hub.nats_url, name="stranger", creds=hub.authority.hub_creds_path, forever=False)
        stranger = FrameSigner(generate_private_key())
        t0 = time.monotonic()
        for seq in range(5):
            frame = stranger.sign(channel=1, stream=7, seq=seq, ts_ns=time.time_ns(), packets=[b"\xfc\xff\xfe"])
            await nc.publish("citycast.audio.1", frame)
        await settle(nc)
        alert = None
        while time.monotonic() - t0 < 10:
            try:
                event = json.loads(await asyncio.wait_for(ws.recv(), 10 - (time.monotonic() - t0)))
            except TimeoutError:
                break
            if event.get("type") == "alert" and event["alert"]["kind"] == "rejected_frames":
                alert = event["alert"]
                break
        await nc.close()
        assert alert is not None, "no alert within 10 s of forged audio"
        assert alert["severity"] == "critical" and alert["site"] == "saddar-1"


async def _talkback_hears_the_sites_microphone(hub: Hub, api: httpx.AsyncClient, agent: SiteAgent) -> None:
    """Talkback opened from the API: the site's microphone (a speech file stands in) reaches the hub, signed with
    the site's own key, and stops when closed."""
    sites = (await api.get("/api/sites")).json()
    site_id = next(s["id"] for s in sites if s["name"] == "saddar-1")
    assert agent.talkback is not None and not agent.talkback.active
    r = await api.post(f"/api/sites/{site_id}/talkback", json={"on": True})
    assert r.status_code == 200, r.text
    assert hub.talkback is not None and hub.talkback.current is not None
    tap = hub.talkback.current
    await wait_until(lambda: tap.frames >= 100, "talkback audio", timeout=10)
    heard = np.concatenate([tap.next_block() for _ in range(100)])
    clip = read_audio(speech_asset())
    _, peak = correlate_lag(heard, clip[: 5 * 48_000])
    assert peak > 0.5, peak
    assert tap.rejected == 0
    r = await api.post(f"/api/sites/{site_id}/talkback", json={"on": False})
    assert r.status_code == 200 and r.json()["site"] is None
    await wait_until(lambda: not agent.talkback.active, "the microphone to go off", timeout=8)  # type: ignore[union-attr]


def test_hub_end_to_end(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))

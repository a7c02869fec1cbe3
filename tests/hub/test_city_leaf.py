"""A city server joins the hub's bus in JWT mode as a user runs it: `citycast city-bundle` at the hub,
`citycast city --zone … --city-bundle …` in the city, and a site enrolled at the hub that plays through the city
server (audio down the leaf, telemetry and desired state across it, time from the city's responder)."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import httpx

from citycast.bus.server import free_port
from citycast.clock.local import SystemClock
from citycast.hub.runtime import Hub, HubOptions
from citycast.media.sinks import TimedSink
from citycast.site.enrol import enrol
from citycast.site.run import SiteOptions, build_site


def _citycast(*args: str) -> list[str]:
    return [sys.executable, "-m", "citycast", *args]


async def _scenario(tmp: Path) -> None:
    leaf_port = free_port()
    hub = Hub(HubOptions(data_dir=tmp / "hub", http_port=free_port(), nats_port=free_port(),
                         leaf_listen_port=leaf_port, delay_ms=150))  # fmt: skip
    await hub.start()
    city = None
    agent = None
    try:
        bundle = tmp / "north.bundle.json"
        p = subprocess.run(_citycast("city-bundle", "--data-dir", str(tmp / "hub"), "--zone", "north",
                                     "--out", str(bundle)), capture_output=True, text=True, timeout=60)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert bundle.stat().st_mode & 0o077 == 0
        city_port = free_port()
        city = subprocess.Popen(
            _citycast(
                "city",
                "--zone",
                "north",
                "--city-bundle",
                str(bundle),
                "--time-upstream",
                "--leaf-remote",
                f"nats://127.0.0.1:{leaf_port}",
                "--listen",
                f"127.0.0.1:{city_port}",
                "--data-dir",
                str(tmp / "city"),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=20) as api:
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            zone = (await api.post("/api/zones", json={"name": "north", "channel": 1})).json()["id"]
            r = await api.post("/api/sites", json={"name": "north-1", "lat": 24.95, "lon": 67.05, "zone_id": zone})
            cred = await enrol(hub.http_url, r.json()["enrol_token"], tmp / "site" / "site.json")
            cred = dataclasses.replace(cred, nats_urls=[f"nats://127.0.0.1:{city_port}"])
            opts = SiteOptions(name="x", nats_url="", trust=Path("/nonexistent"), sink="timed", time_zone="north",
                               credentials=cred, credentials_path=tmp / "site" / "site.json")  # fmt: skip
            agent = build_site(opts)
            agent.sink = TimedSink(SystemClock(), block=480)
            await agent.start()

            async def state() -> str:
                sites = (await api.get("/api/sites")).json()
                return str(sites[0]["state"])

            deadline = time.monotonic() + 60
            while await state() != "idle" or agent.desired is None:
                assert city.poll() is None, city.stderr.read() if city.stderr else ""
                assert time.monotonic() < deadline, "the site never reported through the city server"
                await asyncio.sleep(0.3)
            assert agent.desired.channel == 1  # desired state from the hub's KV, watched through the leaf
            r = await api.post(
                "/api/addresses", json={"title": "t", "source": "tone", "zone_ids": [zone], "priority": "live"}
            )
            assert r.status_code == 201, r.text
            deadline = time.monotonic() + 20
            while await state() != "playing":
                assert time.monotonic() < deadline, "the site never played through the city server"
                await asyncio.sleep(0.3)
            # Frames before the site's clock settles are refused as "unsynced"; nothing else may be.
            assert agent.frames > 0 and set(agent.rejected) <= {"unsynced"}
    finally:
        if agent is not None:
            await agent.stop()
        if city is not None:
            city.terminate()
            city.wait(10)
        await hub.stop()


def test_site_plays_through_a_city_server_in_jwt_mode(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))


def test_a_bad_city_bundle_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    bad.chmod(0o600)
    p = subprocess.run(_citycast("city", "--zone", "north", "--city-bundle", str(bad), "--leaf-remote",
                                 "nats://127.0.0.1:1", "--listen", f"127.0.0.1:{free_port()}"),
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2 and "Traceback" not in p.stderr and "bad.json" in p.stderr, p.stderr

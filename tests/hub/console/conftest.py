"""A whole hub for the console's browser tests: the real runtime (`citycast.hub.runtime.Hub`: embedded NATS in
operator mode, database, address manager, monitor, recorder, API + console) with real site agents enrolled
through the API, each playing into a real-time simulated DAC. Zones and sites are laid out in Karachi.

The hub and its sites run on their own asyncio loop in a background thread, because Playwright's sync API must
own the test's thread; `ConsoleHub.call(coro)` runs a coroutine there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, ConsoleHub

from citycast.bus.server import free_port
from citycast.clock.local import SystemClock
from citycast.hub.runtime import Hub, HubOptions
from citycast.media.sinks import TimedSink
from citycast.protocol.subjects import Subjects
from citycast.site.agent import SiteAgent, SiteConfig
from citycast.site.enrol import enrol
from citycast.site.talkback import key_from_seed

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"

# zone -> (channel, colour, [(site name, label, lat, lon)])
LAYOUT: dict[str, tuple[int, str, list[tuple[str, str, float, float]]]] = {
    "saddar": (
        1,
        "#0ea5e9",
        [
            ("saddar-empress", "Saddar, Empress Market", 24.8607, 67.0283),
            ("saddar-regal", "Saddar, Regal Chowk", 24.8571, 67.0241),
            ("saddar-cantt", "Saddar, Cantt Station", 24.8466, 67.0355),
        ],
    ),
    "clifton": (
        2,
        "#f97316",
        [
            ("clifton-seaview", "Clifton, Sea View", 24.7955, 67.0451),
            ("clifton-teen-talwar", "Clifton, Teen Talwar", 24.8236, 67.0340),
        ],
    ),
    "korangi": (
        3,
        "#a855f7",
        [
            ("korangi-crossing", "Korangi Crossing", 24.8320, 67.1280),
            ("korangi-industrial", "Korangi Industrial Area", 24.8290, 67.1050),
        ],
    ),
}


async def _populate(hub: Hub, work: Path) -> tuple[dict[str, int], dict[str, list[str]], list[SiteAgent]]:
    assert hub.admin_password is not None
    zone_ids: dict[str, int] = {}
    sites_by_zone: dict[str, list[str]] = {}
    agents: list[SiteAgent] = []
    async with httpx.AsyncClient(base_url=hub.http_url, timeout=15.0) as client:
        r = await client.post("/api/login", json={"username": "admin", "password": hub.admin_password})
        r.raise_for_status()
        client.headers["Authorization"] = f"Bearer {r.json()['token']}"
        for zone, (channel, color, sites) in LAYOUT.items():
            r = await client.post("/api/zones", json={"name": zone, "channel": channel, "color": color})
            r.raise_for_status()
            zone_ids[zone] = r.json()["id"]
            sites_by_zone[zone] = []
            for name, label, lat, lon in sites:
                r = await client.post(
                    "/api/sites", json={"name": name, "label": label, "lat": lat, "lon": lon, "zone_id": zone_ids[zone]}
                )
                r.raise_for_status()
                creds = await enrol(hub.http_url, r.json()["enrol_token"], work / f"{name}.json")
                subjects = Subjects(creds.prefix)
                config = SiteConfig(
                    name=name,
                    nats_url=creds.nats_urls[0],
                    trusted_keys=[Ed25519PublicKey.from_public_bytes(bytes.fromhex(k)) for k in creds.trusted_keys],
                    delay_ns=round(creds.delay_ms * 1e6),
                    time_subject=creds.time_subject,
                    subjects=subjects,
                    creds=work / f"{name}.creds",
                    inbox_prefix=creds.inbox_prefix,
                    receipt_key=key_from_seed(creds.seed),  # proof of play, as `citycast site` signs it
                )
                clock = SystemClock()
                agent = SiteAgent(config, TimedSink(clock, block=480), clock=clock)
                await agent.start()
                agents.append(agent)
                sites_by_zone[zone].append(name)
    return zone_ids, sites_by_zone, agents


@pytest.fixture(scope="module")
def console_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleHub]:
    if not (Path(__file__).resolve().parents[3] / "src/citycast/hub/console/static/vendor/leaflet.js").exists():
        pytest.fail("Leaflet is not in the console's static/vendor: run scripts/console-assets.sh", pytrace=False)
    data_dir = tmp_path_factory.mktemp("hub")
    media = data_dir / "media"
    media.mkdir()
    speech = Path(__file__).resolve().parents[3] / "src/citycast/assets/speech.opus"
    shutil.copyfile(speech, media / "speech.opus")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="console-hub", daemon=True)
    thread.start()
    opts = HubOptions(data_dir=data_dir, http_port=free_port(), nats_port=free_port(), media_dir=media)
    hub = Hub(opts)
    handle = ConsoleHub(hub.http_url, "", {}, {}, loop, hub)
    try:
        handle.call(hub.start())
        assert hub.admin_password is not None
        handle.admin_password = hub.admin_password
        handle.zone_ids, handle.sites_by_zone, handle.agents = handle.call(
            _populate(hub, tmp_path_factory.mktemp("sites"))
        )
        yield handle
    finally:
        for agent in handle.agents:
            with contextlib.suppress(Exception):
                handle.call(agent.stop(), timeout=10)
        with contextlib.suppress(Exception):
            handle.call(hub.stop(), timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[Any]:
    """A fresh headless Chromium (own profile) at laptop size; the test may resize its page."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found (apt-get install chromium)", pytrace=False)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1366, "height": 800},
            timezone_id="Asia/Karachi",
            locale="en-GB",
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any, console_hub: ConsoleHub) -> Iterator[Any]:
    """The console, opened at the fixture hub; any uncaught error in the page fails the test."""
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(console_hub.url + "/")
    yield page
    assert errors == [], f"uncaught errors in the page: {errors}"

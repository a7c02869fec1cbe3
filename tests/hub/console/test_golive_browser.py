"""The "Go live" page in headless Chromium with a fake microphone playing the speech clip: a speaker logs in, a
wrong PIN is refused in the page with no address started, the right PIN puts the browser's audio on air, and a
real site agent in the PIN's zone plays it: its DAC output (WAV) must correlate with the clip, not just be sound."""

from __future__ import annotations

import contextlib
import os
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, ConsoleHub

from citycast.clock.local import SystemClock
from citycast.media.sinks import TimedSink
from citycast.media.sources import read_audio
from citycast.protocol.subjects import Subjects
from citycast.site.agent import SiteAgent, SiteConfig
from citycast.site.enrol import enrol
from citycast.tooling.markers import correlate_lag

SPEECH = Path(__file__).resolve().parents[3] / "src/citycast/assets/speech.opus"
PIN = "730461"


def _write_wav(path: Path) -> np.ndarray:
    clip = read_audio(SPEECH)  # decoded with PyAV, 48 kHz mono float32
    pcm = (np.clip(clip, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(pcm.tobytes())
    return clip


async def _site(hub: ConsoleHub, zone_id: int, work: Path, wav: Path) -> SiteAgent:
    async with httpx.AsyncClient(base_url=hub.url, timeout=15) as api:
        r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
        api.headers["Authorization"] = f"Bearer {r.json()['token']}"
        r = await api.post(
            "/api/sites",
            json={"name": "saddar-golive", "label": "Go-live ear", "lat": 24.86, "lon": 67.03, "zone_id": zone_id},
        )
        r.raise_for_status()
        creds = await enrol(hub.url, r.json()["enrol_token"], work / "saddar-golive.json")
    config = SiteConfig(
        name="saddar-golive",
        nats_url=creds.nats_urls[0],
        trusted_keys=[Ed25519PublicKey.from_public_bytes(bytes.fromhex(k)) for k in creds.trusted_keys],
        delay_ns=round(creds.delay_ms * 1e6),
        time_subject=creds.time_subject,
        subjects=Subjects(creds.prefix),
        creds=work / "saddar-golive.creds",
        inbox_prefix=creds.inbox_prefix,
    )
    clock = SystemClock()
    agent = SiteAgent(config, TimedSink(clock, block=480, wav_path=wav), clock=clock)
    await agent.start()
    return agent


def _browser_addresses(api: httpx.Client) -> list[dict[str, Any]]:
    return [a for a in api.get("/api/addresses").json() if a["source"] == "browser:imam"]


def test_go_live_from_the_browser(console_hub: ConsoleHub, artifacts: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    fake_mic = tmp_path / "speech.wav"
    clip = _write_wav(fake_mic)
    zone = console_hub.zone_ids["saddar"]
    with console_hub.api() as api:
        r = api.post("/api/users", json={"username": "imam", "password": "speak-up-123", "role": "speaker"})
        assert r.status_code == 201, r.text
        r = api.post("/api/pins", json={"label": "Imam, Saddar", "pin": PIN, "zone_ids": [zone]})
        assert r.status_code == 201, r.text
    site_wav = tmp_path / "site.wav"
    agent = console_hub.call(_site(console_hub, zone, tmp_path, site_wav))
    try:
        if not os.path.exists(CHROMIUM):
            pytest.fail(f"{CHROMIUM} not found", pytrace=False)
        args = [
            *CHROMIUM_ARGS,
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_mic}",
            "--autoplay-policy=no-user-gesture-required",
        ]
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, args=args, headless=True
            )
            try:
                page = context.new_page()
                page.goto(f"{console_hub.url}/golive.html")
                # Not logged in yet: the page asks, and then reuses the session cookie.
                page.fill("#username", "imam")
                page.fill("#password", "speak-up-123")
                page.click("#login button[type=submit]")
                expect(page.locator("#who")).to_contain_text("imam (speaker)", timeout=10_000)

                page.fill("#pin", "111111")
                page.click("#go")
                expect(page.locator("#message")).to_contain_text("wrong PIN", timeout=15_000)
                expect(page.locator("#message")).to_have_class("error")
                with console_hub.api() as api:
                    assert _browser_addresses(api) == []
                    assert api.get("/api/addresses/live").json() == []

                page.fill("#title", "Browser sermon")
                page.fill("#pin", PIN)
                page.click("#go")
                expect(page.locator("#message")).to_contain_text("Live to", timeout=20_000)
                expect(page.locator("#onair")).to_have_text("ON AIR", timeout=15_000)
                with console_hub.api() as api:
                    live = api.get("/api/addresses/live").json()
                    assert [(a["source"], a["title"], a["zone_ids"]) for a in live] == [
                        ("browser:imam", "Browser sermon", [zone])
                    ]
                # The level is the last 200 ms on air, and speech has pauses: read it through the 8 s, keep the loudest.
                levels = []
                for _ in range(16):
                    time.sleep(0.5)
                    status = page.evaluate("fetch('/api/golive/status').then(r => r.json())")
                    levels.append(float(status["level_dbfs"]))
                server_level = max(levels)
                page.screenshot(path=str(artifacts / "golive.png"), full_page=True)
                page.click("#stop")
                expect(page.locator("#message")).to_contain_text("off air", timeout=10_000)
                expect(page.locator("#onair")).to_have_text("off air", timeout=5_000)
                with console_hub.api() as api:
                    assert api.get("/api/addresses/live").json() == []
                    ended = _browser_addresses(api)
                    assert len(ended) == 1 and ended[0]["status"] != "live", ended
            finally:
                context.close()
    finally:
        with contextlib.suppress(Exception):
            console_hub.call(agent.stop(), timeout=10)
    assert server_level > -50, server_level  # the hub saw speech, not silence

    with wave.open(str(site_wav), "rb") as w:
        played = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    loud = np.flatnonzero(np.abs(played) > 0.02)
    assert loud.size > 48_000, "the site played (almost) nothing"
    piece = played[loud[0] + 24_000 : loud[0] + 24_000 + 3 * 48_000]
    assert piece.size == 3 * 48_000
    looped = np.concatenate([clip, clip])  # Chromium loops the fake capture file
    _, peak = correlate_lag(piece, looped)
    assert peak > 0.5, peak

"""A browser speaker's voice does not share fate with the hub's web side (issue 8 §2): the go-live peer
connection, its audio and its broadcaster run on the media plane, so a blocked or flooded control loop (the
HTTP API's) delays neither the frames on the speaker's channel nor the reception of the speaker's audio.

The test uses a real hub and a real aiortc client offering through the HTTP API; how late each frame reached
the channel, and which never arrived, is measured by a listener in a process of its own, so nothing in this
process can delay the measurement. A frame never sent counts as much as a late one: a live broadcaster whose loop
was held for more than 10 frames skips the gap rather than burst old audio."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from sqlalchemy import select
from tests.helpers import let_time_pass, listen, wait_until

from citycast.bus.server import free_port
from citycast.hub.runtime import Hub, HubOptions

SPEECH = Path(__file__).resolve().parents[2] / "src/citycast/assets/speech.opus"
PIN = "593172"


class Speaker:
    """An aiortc "browser" on a thread and event loop of its own: it keeps sending its microphone (the speech
    clip, looped) whatever this test does to the hub's loop, and signals through the hub's HTTP API."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token
        self.answer: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="speaker", daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            player = MediaPlayer(str(SPEECH), loop=True)
            assert player.audio is not None
            pc.addTrack(player.audio)
            await pc.setLocalDescription(await pc.createOffer())
            headers = {"Authorization": f"Bearer {self.token}"}
            async with httpx.AsyncClient(base_url=self.base, timeout=60, headers=headers) as api:
                body = {"sdp": pc.localDescription.sdp, "pin": PIN, "title": "Under load"}
                r = await api.post("/api/golive/offer", json=body)
                assert r.status_code == 200, r.text
                self.answer = r.json()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer["sdp"], type="answer"))
        except BaseException as e:
            self.error = e
            self._ready.set()
            await pc.close()
            return
        self._ready.set()
        try:
            async with asyncio.timeout(300):
                await self._done.wait()
        finally:
            await pc.close()

    def start(self) -> dict[str, Any]:
        self._thread.start()
        assert self._ready.wait(90), "the speaker's offer got no answer"
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer

    def stop(self) -> None:
        if self._loop is not None and self._done is not None:
            self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(30)


def _seed(base: str, admin_password: str) -> str:
    """A zone, a speaker and the speaker's PIN, through the admin API; returns the admin's token."""
    with httpx.Client(base_url=base, timeout=30) as api:
        r = api.post("/api/login", json={"username": "admin", "password": admin_password})
        api.headers["Authorization"] = f"Bearer {r.json()['token']}"
        zone = api.post("/api/zones", json={"name": "saddar", "channel": 1}).json()["id"]
        r = api.post("/api/users", json={"username": "imam", "password": "speak-up-123", "role": "speaker"})
        assert r.status_code == 201, r.text
        r = api.post("/api/pins", json={"label": "Imam, Saddar", "pin": PIN, "zone_ids": [zone]})
        assert r.status_code == 201, r.text
        return str(api.headers["Authorization"].removeprefix("Bearer "))


def _speaker_token(base: str) -> str:
    with httpx.Client(base_url=base, timeout=30) as api:
        r = api.post("/api/login", json={"username": "imam", "password": "speak-up-123"})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])


async def _status(base: str, token: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as api:
        r = await api.get("/api/golive/status")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


async def _until_on_air(base: str, token: str) -> None:
    async def on_air() -> bool:
        return bool((await _status(base, token))["on_air"])

    await wait_until(on_air, "the hub to hear the speaker", timeout=20, every=0.2)


def _channel_of(base: str, token: str, address_id: int) -> int:
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as api:
        live = api.get("/api/addresses/live").json()
    return int(next(a["channel"] for a in live if a["id"] == address_id))


# -- an in-process hub whose control loop is blocked -----------------------------------------------------------------
@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    h = Hub(HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port()))
    await h.start()
    try:
        assert h.admin_password
        await asyncio.to_thread(_seed, h.http_url, h.admin_password)
        yield h
    finally:
        await h.stop()


BLOCKS_S = (0.15, 0.3, 0.15, 0.3, 0.15, 0.3)  # under and over the 10 frames a live broadcaster catches up


async def test_a_blocked_control_loop_neither_delays_nor_starves_a_browser_speaker(hub: Hub) -> None:
    """The hub's control loop (this test's loop) is held for 150 or 300 ms six times, as a slow synchronous query
    in a request handler would: the speaker's frames still reach the channel, all of them and on time, and the
    speaker's audio is still received meanwhile (no underrun), because neither waits for that loop."""
    assert hub.golive is not None and hub.authority is not None
    token = await asyncio.to_thread(_speaker_token, hub.http_url)
    speaker = Speaker(hub.http_url, token)
    try:
        answer = await asyncio.to_thread(speaker.start)
        await _until_on_air(hub.http_url, token)
        channel = await asyncio.to_thread(_channel_of, hub.http_url, token, answer["address_id"])
        user_id = await asyncio.to_thread(_user_id, hub, "imam")
        ready = asyncio.Event()
        listening = asyncio.create_task(listen(hub.nats_url, hub.authority.hub_creds_path, channel, 5, ready))
        await ready.wait()
        await let_time_pass(0.5)  # the listener hears the speech before the first block
        before = hub.golive.status(user_id)
        for block_s in BLOCKS_S:
            time.sleep(block_s)  # the point: the hub's control loop held
            await let_time_pass(0.3)  # and free again between blocks
        heard = await listening
        after = hub.golive.status(user_id)
    finally:
        await asyncio.to_thread(speaker.stop)
    said = f"control loop held {BLOCKS_S} s: {heard}; underruns {before['underruns']} -> {after['underruns']}"
    print(said)
    assert len(heard.late) > 150, said
    assert after["live"] and after["on_air"], after
    # On the control loop a 300 ms hold dropped 15 frames, a 150 ms one sent 7 frames up to 150 ms late.
    assert heard.missing == 0, said
    assert max(heard.late) < 100 and float(np.percentile(heard.late, 99)) < 60, said
    # The speaker's audio kept arriving on the media loop: the buffer never ran dry during the holds.
    assert after["underruns"] - before["underruns"] <= 1, said


def _user_id(hub: Hub, username: str) -> int:
    from citycast.hub.db.models import User

    with hub.db.session() as s:
        return int(s.scalars(select(User.id).where(User.username == username)).one())

"""Going live from a browser, with aiortc on both sides: an aiortc client plays the speech clip through a file
`MediaPlayer` and offers to the hub's `GoLive`; the signed frames that reach the address's channel on the hub's
real NATS are decoded and must be the clip. Also: wrong PINs, the per-address block, hang-up, bad SDP, and the
sans-IO buffer that sits between the browser's clock and the broadcast clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.contrib.media import MediaPlayer
from tests.helpers import wait_until

from citycast.bus.server import free_port
from citycast.hub.db.models import Address, AddressStatus
from citycast.hub.golive import PRIME_SAMPLES, BrowserAudio, GoLive, GoLiveError
from citycast.hub.runtime import Hub, HubOptions
from citycast.hub.telephone.pins import PinGuard
from citycast.media.audio import FRAME_SAMPLES
from citycast.media.codec import OpusDecoder
from citycast.media.sources import read_audio
from citycast.protocol.frame import parse_frame
from citycast.tooling.markers import correlate_lag

SPEECH = Path(__file__).resolve().parents[2] / "src/citycast/assets/speech.opus"
PIN = "482915"


@dataclass
class Setup:
    hub: Hub
    zone_id: int
    user_id: int


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    hub = Hub(HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port()))
    await hub.start()
    try:
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=20) as api:
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            zone = (await api.post("/api/zones", json={"name": "saddar", "channel": 1})).json()["id"]
            r = await api.post("/api/users", json={"username": "imam", "password": "speak-up-123", "role": "speaker"})
            assert r.status_code == 201, r.text
            user = r.json()["id"]
            r = await api.post("/api/pins", json={"label": "Imam, Saddar", "pin": PIN, "zone_ids": [zone]})
            assert r.status_code == 201, r.text
        yield Setup(hub, zone, user)
    finally:
        await hub.stop()


def _service(s: Setup, guard: PinGuard | None = None, *, on_media_plane: bool = True) -> GoLive:
    """As the hub makes it: the sessions' media on the hub's media plane (or, for the same code on one loop,
    without it)."""
    assert s.hub.addresses is not None
    media = s.hub.media if on_media_plane else None
    return GoLive(s.hub.addresses, s.hub.db, s.hub.fleet, guard=guard, media=media)


async def _client_offer(player: MediaPlayer | None = None) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if player is not None:
        assert player.audio is not None
        pc.addTrack(player.audio)
    else:
        pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


def _addresses(s: Setup) -> list[Address]:
    with s.hub.db.session() as db:
        rows = list(db.query(Address).all())
        db.expunge_all()
        return rows


@pytest.mark.parametrize("on_media_plane", [True, False], ids=["media-plane", "one-loop"])
async def test_browser_audio_reaches_the_channel(setup: Setup, on_media_plane: bool) -> None:
    hub = setup.hub
    assert hub.nc is not None and hub.addresses is not None
    service = _service(setup, on_media_plane=on_media_plane)
    if on_media_plane:
        assert hub.golive is not None and hub.golive.media is hub.media  # the hub's own service is on its plane
    player = MediaPlayer(str(SPEECH), loop=True)  # a slow box must not reach the clip's end (a hang-up) first
    client = await _client_offer(player)
    try:
        answer, session = await service.offer(
            user_id=setup.user_id,
            username="imam",
            sdp=client.localDescription.sdp,
            sdp_type="offer",
            pin=PIN,
            title="Friday sermon",
            remote="127.0.0.1",
        )
        assert answer.type == "answer" and "a=recvonly" in answer.sdp
        assert session.address_id is not None
        live = hub.addresses.live()
        assert [(a["id"], a["source"], a["zone_ids"]) for a in live] == [
            (session.address_id, "browser:imam", [setup.zone_id])
        ]
        channel = hub.addresses.channel_of(session.address_id)
        decoder = OpusDecoder()
        heard: list[np.ndarray] = []

        async def on_msg(msg: object) -> None:
            frame, _ = parse_frame(msg.data)  # type: ignore[attr-defined]
            assert frame.channel == channel
            heard.extend(decoder.decode(p) for p in frame.packets)

        sub = await hub.nc.subscribe(hub.subjects.audio(channel), cb=on_msg)
        await client.setRemoteDescription(answer)
        await wait_until(lambda: service.status(setup.user_id)["on_air"], "the hub to hear the browser", timeout=10)
        receiving = session.media_tasks[0].get_loop()
        assert receiving is (hub.media.loop if on_media_plane and hub.media else asyncio.get_running_loop())
        await wait_until(lambda: len(heard) >= 300, "6 s of frames on the channel", timeout=15)
        status = service.status(setup.user_id)
        assert status["live"] and status["address_id"] == session.address_id
        assert status["level_dbfs"] > -60, status  # speech, not silence
        await sub.unsubscribe()

        got = np.concatenate(heard)
        clip = read_audio(SPEECH)
        # The channel carries the clip: a 3 s stretch of what was heard appears in the clip, nearly exactly.
        start = int(np.argmax(np.abs(got) > 0.01))
        piece = got[start + 24_000 : start + 24_000 + 3 * 48_000]
        assert piece.size == 3 * 48_000
        _, peak = correlate_lag(piece, clip)
        assert peak > 0.5, peak

        stopped = await service.stop(setup.user_id)
        assert stopped is session and session.ended == "the speaker stopped"
        assert hub.addresses.live() == []
        row = next(a for a in _addresses(setup) if a.id == session.address_id)
        assert row.status != AddressStatus.live and row.end_reason == "the speaker stopped"
        assert service.status(setup.user_id)["live"] is False
        assert await service.stop(setup.user_id) is None  # stopping twice is harmless
    finally:
        await client.close()
        await service.close()


async def test_wrong_pin_is_refused_and_blocks_the_address(setup: Setup) -> None:
    service = _service(setup, PinGuard(failures=2))
    client = await _client_offer()
    try:
        for expected in (403, 429):
            with pytest.raises(GoLiveError) as e:
                await service.offer(
                    user_id=setup.user_id,
                    username="imam",
                    sdp=client.localDescription.sdp,
                    sdp_type="offer",
                    pin="000000",
                    title=None,
                    remote="10.0.0.9",
                )
            assert e.value.status == expected, e.value.message
        assert "too many wrong PINs" in e.value.message
        # Blocked: even the right PIN is refused from that address, while another address may go live.
        with pytest.raises(GoLiveError) as e:
            await service.offer(
                user_id=setup.user_id,
                username="imam",
                sdp=client.localDescription.sdp,
                sdp_type="offer",
                pin=PIN,
                title=None,
                remote="10.0.0.9",
            )
        assert e.value.status == 429
        assert _addresses(setup) == []
        _, session = await service.offer(
            user_id=setup.user_id,
            username="imam",
            sdp=client.localDescription.sdp,
            sdp_type="offer",
            pin=PIN,
            title=None,
            remote="10.0.0.10",
        )
        assert session.address_id is not None
        # One live session per user.
        with pytest.raises(GoLiveError) as e:
            await service.offer(
                user_id=setup.user_id,
                username="imam",
                sdp=client.localDescription.sdp,
                sdp_type="offer",
                pin=PIN,
                title=None,
                remote="10.0.0.10",
            )
        assert e.value.status == 409
    finally:
        await client.close()
        await service.close()
    assert setup.hub.addresses is not None and setup.hub.addresses.live() == []


async def test_bad_sdp_starts_nothing(setup: Setup) -> None:
    service = _service(setup)
    for sdp, kind in (("v=0\r\nthis is not sdp\r\n", "offer"), ("v=0\r\n", "answer")):
        with pytest.raises(GoLiveError) as e:
            await service.offer(
                user_id=setup.user_id,
                username="imam",
                sdp=sdp,
                sdp_type=kind,
                pin=PIN,
                title=None,
                remote="127.0.0.1",
            )
        assert e.value.status == 400
    assert _addresses(setup) == []
    assert service.sessions == {}


async def test_hang_up_ends_the_address(setup: Setup) -> None:
    hub = setup.hub
    assert hub.addresses is not None
    service = _service(setup)
    player = MediaPlayer(str(SPEECH))
    client = await _client_offer(player)
    try:
        answer, session = await service.offer(
            user_id=setup.user_id,
            username="imam",
            sdp=client.localDescription.sdp,
            sdp_type="offer",
            pin=PIN,
            title=None,
            remote="127.0.0.1",
        )
        await client.setRemoteDescription(answer)
        await wait_until(lambda: service.status(setup.user_id)["on_air"], "the hub to hear the browser", timeout=10)
        await client.close()
        await wait_until(
            lambda: hub.addresses.live() == [],  # type: ignore[union-attr]
            "the address to end with the hang-up",
            timeout=40,
        )
        assert session.ended in ("the speaker hung up", "connection closed"), session.ended
        assert service.status(setup.user_id)["live"] is False
    finally:
        await client.close()
        await service.close()


async def test_operator_stop_ends_the_session(setup: Setup) -> None:
    hub = setup.hub
    assert hub.addresses is not None
    service = _service(setup)
    client = await _client_offer(MediaPlayer(str(SPEECH)))
    try:
        answer, session = await service.offer(
            user_id=setup.user_id,
            username="imam",
            sdp=client.localDescription.sdp,
            sdp_type="offer",
            pin=PIN,
            title=None,
            remote="127.0.0.1",
        )
        await client.setRemoteDescription(answer)
        assert session.address_id is not None
        await hub.addresses.stop(session.address_id, "operator")
        await wait_until(lambda: session.ended is not None, "the session to end at the operator's stop", timeout=5)
        assert session.ended == "stopped by the hub"
        assert service.sessions == {}
    finally:
        await client.close()
        await service.close()


# -- the buffer (sans-IO) -----------------------------------------------------------------------------------------
def test_buffer_primes_conceals_and_trims() -> None:
    now = [0.0]
    audio = BrowserAudio(lambda: now[0])
    silent = audio.next_block(0.0)
    assert silent.shape == (FRAME_SAMPLES,) and not silent.any()  # nothing yet: silence
    ramp = np.linspace(0.1, 0.5, FRAME_SAMPLES, dtype=np.float32)
    audio.push(ramp)
    assert not audio.next_block(0.0).any()  # less than the priming cushion: still waiting
    audio.push(ramp)
    audio.push(ramp)
    assert audio.buffered == PRIME_SAMPLES
    for _ in range(3):
        assert np.array_equal(audio.next_block(0.0), ramp)
    concealed = audio.next_block(0.0)  # dry: one faded copy, then silence
    assert concealed[0] == pytest.approx(ramp[0]) and concealed[-1] == 0.0
    assert not audio.next_block(0.0).any()
    assert audio.underruns == 1 and audio.concealed == 1
    assert audio.level_dbfs > -30
    # A browser clock running fast cannot grow the delay without bound.
    for _ in range(100):
        audio.push(ramp)
    assert audio.buffered <= 15 * FRAME_SAMPLES and audio.dropped > 0
    assert audio.fresh(0.5) and not audio.fresh(5.0)


# -- guessing PINs through the real HTTP API (issue 8 §3) ---------------------------------------------------------
@contextlib.asynccontextmanager
async def _logged_in(hub: Hub, username: str, password: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hub.http_url, timeout=60) as api:
        r = await api.post("/api/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        api.headers["Authorization"] = f"Bearer {r.json()['token']}"
        yield api


def _speaker(hub: Hub) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
    return _logged_in(hub, "imam", "speak-up-123")


def _admin(hub: Hub) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
    assert hub.admin_password
    return _logged_in(hub, "admin", hub.admin_password)


async def test_twenty_parallel_offers_from_one_address_check_at_most_five_pins(setup: Setup) -> None:
    """A logged-in speaker's browser (or a script with its token) fires 20 go-live offers with wrong PINs at once,
    three times: one PIN is checked at a time per address, the others get 429 at once, and no more than 5 are ever
    checked (counted as Argon2 verifications, and as 403 answers, which only a checked PIN gets)."""
    hub = setup.hub
    assert hub.golive is not None
    before = hub.golive.pins.hash_checks
    statuses: list[int] = []
    async with _speaker(hub) as api:
        for wave in range(3):
            replies = await asyncio.gather(
                *(api.post("/api/golive/offer", json={"sdp": "v=0\r\n", "pin": f"{i:04d}{wave}5"}) for i in range(20))
            )
            statuses += [r.status_code for r in replies]
    assert set(statuses) <= {403, 429}, statuses
    assert statuses.count(403) <= 5, statuses
    assert hub.golive.pins.hash_checks - before <= 5
    assert not hub.pin_guard.allowed("127.0.0.1", time.monotonic()) or statuses.count(403) < 5


async def test_many_addresses_guessing_one_pin_lock_it_alert_and_an_operator_unlocks(setup: Setup) -> None:
    """Guesses of the PIN's last two digits from 12 addresses (X-Forwarded-For from the trusted local proxy):
    the PIN locks, the right PIN is refused like a wrong one, the console's alerts and PIN list show it, and an
    operator's unlock lets the speaker go live."""
    hub = setup.hub
    async with _speaker(hub) as api, _admin(hub) as admin:
        replies = await asyncio.gather(
            *(
                api.post(
                    "/api/golive/offer",
                    json={"sdp": "v=0\r\n", "pin": f"{900000 + i:06d}"[:4] + PIN[-2:]},
                    headers={"X-Forwarded-For": f"198.51.100.{i + 1}"},
                )
                for i in range(12)
            )
        )
        assert [r.status_code for r in replies] == [403] * 12
        client = await _client_offer()
        try:
            sdp = client.localDescription.sdp
            r = await api.post("/api/golive/offer", json={"sdp": sdp, "pin": PIN},
                               headers={"X-Forwarded-For": "192.0.2.50"})  # fmt: skip
            assert r.status_code == 403 and "locked" in r.json()["detail"]  # the same words as any wrong PIN
            alerts = (await admin.get("/api/alerts")).json()
            guessed = [a for a in alerts if a["kind"] == "pin_abuse" and "being guessed" in a["message"]]
            assert len(guessed) == 1 and "Imam, Saddar" in guessed[0]["message"], alerts
            listed = (await admin.get("/api/pins")).json()
            assert listed[0]["locked_until"] is not None and listed[0]["recent_failures"] >= 1  # counted in the lock
            r = await admin.post(f"/api/pins/{listed[0]['id']}/unlock")
            assert r.status_code == 200 and r.json()["locked_until"] is None
            r = await api.post("/api/golive/offer", json={"sdp": sdp, "pin": PIN},
                               headers={"X-Forwarded-For": "192.0.2.51"})  # fmt: skip
            assert r.status_code == 200, r.text
            assert (await api.post("/api/golive/stop")).json()["stopped"] is True
        finally:
            await client.close()


async def test_the_hub_stopping_ends_a_live_browser_session(tmp_path: Path) -> None:
    """The hub's own service, sessions on its media plane: `Hub.stop` ends the session (its media closed on the
    plane before the plane itself stops) and the address, within a bound, and nothing is left on the plane."""
    hub = Hub(HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port()))
    await hub.start()
    client: RTCPeerConnection | None = None
    try:
        assert hub.golive is not None and hub.media is not None and hub.golive.media is hub.media
        async with _admin(hub) as admin:
            zone = (await admin.post("/api/zones", json={"name": "saddar", "channel": 1})).json()["id"]
            r = await admin.post("/api/pins", json={"label": "Imam, Saddar", "pin": PIN, "zone_ids": [zone]})
            assert r.status_code == 201, r.text
        client = await _client_offer(MediaPlayer(str(SPEECH)))
        answer, session = await hub.golive.offer(
            user_id=1, username="admin", sdp=client.localDescription.sdp, sdp_type="offer", pin=PIN, title=None,
            remote="127.0.0.1",
        )  # fmt: skip
        await client.setRemoteDescription(answer)
        await wait_until(lambda: hub.golive.status(1)["on_air"], "the hub to hear the browser", timeout=10)  # type: ignore[union-attr]
        plane = hub.media.thread
        t0 = time.monotonic()
    finally:
        await hub.stop()
        if client is not None:
            await client.close()
    assert time.monotonic() - t0 < 20
    assert session.ended == "the hub is stopping" and session.connection == "closed"
    assert plane is not None and not plane.is_alive()
    row = next(a for a in _addresses(Setup(hub, 0, 0)) if a.id == session.address_id)
    assert row.status != AddressStatus.live and row.end_reason in ("the hub is stopping", "hub stopped")

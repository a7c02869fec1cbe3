"""The hub's Icecast tap against a real Icecast 2.4 server (Debian icecast2, started here on loopback): listeners
hear the address (its marker chirps, found in what they decoded) with its title; the source comes back after the
server and the hub restart; a wrong password is said plainly and retried; forged frames never reach a mount and
the tap's NATS user cannot publish."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.helpers import connect, need_binary, start_auth_nats, wait_until

from citycast.bus.authority import NatsAuthority
from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats
from citycast.hub.icecast.creds import LISTENER_INBOX_PREFIX, listener_creds
from citycast.hub.icecast.program import ALL_GROUP, Program, zone_group
from citycast.hub.icecast.service import IcecastOptions, IcecastService
from citycast.hub.icecast.source import parse_icecast_url
from citycast.media.keys import generate_private_key
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.tooling.bench.icecast import LocalIcecast, MountListener, publish_markers
from citycast.tooling.markers import detect_markers

SUBJECTS = Subjects()
CHANNEL = 1000


@pytest.fixture
def icecast(tmp_path: Path) -> Iterator[LocalIcecast]:
    need_binary("icecast2")
    server = LocalIcecast(tmp_path / "icecast")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def authority(tmp_path: Path) -> NatsAuthority:
    return NatsAuthority.load_or_create(tmp_path / "auth", SUBJECTS)


@pytest.fixture
def bus(authority: NatsAuthority, tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = start_auth_nats(authority, tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def signer() -> FrameSigner:
    return FrameSigner(generate_private_key())


def _service(
    icecast: LocalIcecast, bus: EmbeddedNats, authority: NatsAuthority, signer: FrameSigner, password: str = ""
) -> IcecastService:
    opts = IcecastOptions(parse_icecast_url(icecast.url, password or icecast.password))
    creds = listener_creds(authority, SUBJECTS)
    return IcecastService(opts, bus.url, creds=creds, subjects=SUBJECTS, trusted=[signer.public_key])


@pytest.fixture
async def hub_nc(bus: EmbeddedNats, authority: NatsAuthority) -> AsyncIterator[object]:
    watched = await connect(bus.url, authority.hub_creds_path)
    try:
        yield watched.nc
    finally:
        await watched.nc.close()


def _connected(service: IcecastService, mount: str) -> bool:
    return any(s["mount"] == mount and s["connected"] for s in service.status())


async def test_listeners_hear_the_address_with_its_title_on_ogg_and_mp3(
    icecast: LocalIcecast, bus: EmbeddedNats, authority: NatsAuthority, signer: FrameSigner, hub_nc: object
) -> None:
    service = _service(icecast, bus, authority, signer)
    await service.start()
    listeners: list[MountListener] = []
    try:
        service.set_programs({ALL_GROUP: Program(CHANNEL, "Flood warning: Orangi")})
        await wait_until(
            lambda: _connected(service, "/all.ogg") and _connected(service, "/all.mp3"),
            "both mounts streaming",
            detail=service.status,
        )
        ogg = MountListener(icecast.url + "/all.ogg", "ogg").start()
        mp3 = MountListener(icecast.url + "/all.mp3", "mp3").start()
        listeners += [ogg, mp3]
        for listener in listeners:
            assert await asyncio.to_thread(listener.connected.wait, 10.0), listener.error

        # A forged frame (a key the hub does not trust) on the channel never reaches a mount.
        forger = FrameSigner(generate_private_key())
        forged = forger.sign(channel=CHANNEL, stream=9, seq=0, ts_ns=0, packets=[b"\xf8\xff\xfe"])
        await hub_nc.publish(SUBJECTS.audio(CHANNEL), forged)  # type: ignore[attr-defined]
        await publish_markers(hub_nc, signer, SUBJECTS, CHANNEL, 4.0)

        def markers(listener: MountListener) -> list[float]:
            return detect_markers(listener.audio())

        await wait_until(
            lambda: all(len(markers(li)) >= 4 for li in listeners),
            "4 markers in what each listener decoded",
            timeout=15,
            detail=lambda: [li.error for li in listeners],
            every=0.5,
        )
        for listener in listeners:
            found = markers(listener)
            spacing = [b - a for a, b in itertools.pairwise(found)]
            # What the listener decoded is the address, second by second (the mount neither drops nor adds audio).
            assert all(abs(s - 48_000) <= 2 for s in spacing), spacing
        assert all(s["rejected"] == {"untrustedkey": 1} for s in service.status()), service.status()

        # The title: in the Ogg stream's OpusTags, and in Icecast's own metadata for the MP3 mount.
        assert b"title=Flood warning: Orangi" in ogg.raw
        await wait_until(
            lambda: (icecast.mount("/all.mp3") or {}).get("title") == "Flood warning: Orangi", "the MP3 mount's title"
        )
        service.set_programs({ALL_GROUP: Program(CHANNEL, "All clear")})
        await wait_until(lambda: b"title=All clear" in ogg.raw, "a new chained Ogg stream with the new title")
        await wait_until(lambda: (icecast.mount("/all.mp3") or {}).get("title") == "All clear", "the new MP3 title")
    finally:
        for listener in listeners:
            listener.stop()
        await service.stop()


async def test_the_taps_nats_user_hears_audio_but_cannot_publish(
    bus: EmbeddedNats, authority: NatsAuthority, tmp_path: Path
) -> None:
    tap = await connect(bus.url, listener_creds(authority, SUBJECTS), inbox_prefix=LISTENER_INBOX_PREFIX)
    try:
        await tap.nc.subscribe(SUBJECTS.audio(CHANNEL))
        for subject in (SUBJECTS.audio(CHANNEL), SUBJECTS.desired("site-1"), SUBJECTS.commands("site-1")):
            await tap.nc.publish(subject, b"x")
        await tap.nc.subscribe(SUBJECTS.telemetry("site-1"))
        await settle(tap.nc)
        await wait_until(lambda: len(tap.violations()) >= 4, "four permission violations", detail=lambda: tap.errors)
    finally:
        await tap.nc.close()


async def test_a_wrong_password_is_said_plainly_and_retried_and_the_source_survives_restarts(
    icecast: LocalIcecast, bus: EmbeddedNats, authority: NatsAuthority, signer: FrameSigner
) -> None:
    wrong = _service(icecast, bus, authority, signer, password="not-the-password")
    await wrong.start()
    try:
        wrong.set_programs({ALL_GROUP: Program(CHANNEL, "x")})
        await wait_until(lambda: any(s.failures >= 2 for s in wrong.streamers.values()), "two refused attempts")
        status = wrong.status()
        assert all("refused the source password" in str(s["error"]) for s in status), status
        assert icecast.status() == []
        # The service still serves: a new zone's mounts are set up (and refused the same way).
        wrong.set_programs({ALL_GROUP: Program(CHANNEL, "x"), zone_group(3): Program(503, "zone 3")})
        await wait_until(lambda: any(s["mount"] == "/zone-3.ogg" and s["failures"] for s in wrong.status()), "zone-3")
    finally:
        await wrong.stop()

    service = _service(icecast, bus, authority, signer)
    await service.start()
    try:
        service.set_programs({ALL_GROUP: Program(None, "nothing on air")})
        await wait_until(lambda: _connected(service, "/all.ogg"), "streaming")
        # Icecast restarts: the source connects again by itself.
        icecast.stop()
        await wait_until(lambda: not _connected(service, "/all.ogg"), "the loss seen")
        icecast.start()
        await wait_until(
            lambda: _connected(service, "/all.ogg") and service.streamers["all.ogg"].connections >= 2,
            "the source back on the restarted Icecast",
            timeout=30,  # its retries are 0.5, 1, 2, 4, 8 s apart: up to 8 s after Icecast is back
            detail=service.status,
        )
    finally:
        await service.stop()
    await wait_until(lambda: icecast.mount("/all.ogg") is None, "the mount gone with its source")

    # The hub restarts: its new service takes the mount again, and listeners get silence (not a dropped mount).
    again = _service(icecast, bus, authority, signer)
    await again.start()
    try:
        again.set_programs({ALL_GROUP: Program(None, "nothing on air")})
        await wait_until(lambda: icecast.mount("/all.ogg") is not None, "the mount back after the hub's restart")
        listener = MountListener(icecast.url + "/all.ogg", "ogg").start()
        try:
            await wait_until(lambda: listener.audio().size >= 48_000, "a second of (silent) audio", timeout=10)
            assert float(abs(listener.audio()).max()) < 1e-3
        finally:
            listener.stop()
    finally:
        await again.stop()

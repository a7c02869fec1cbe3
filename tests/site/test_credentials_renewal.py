"""Site credentials expire and are renewed over the bus without a gap in playout.

A real nats-server in JWT mode with site JWTs living 4 s, the hub's real `CredentialsService` over a real database,
a real `SiteAgent` syncing its clock, following its desired state and playing signed frames from ingest into a timed
sink. The site must play every frame across several expiries; a site that does not renew is cut off by the server;
a revoked site gets nothing; a site cannot have another's credentials sent anywhere.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import numpy as np
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from tests.helpers import Topology, let_time_pass, site_creds, wait_until

from citycast.bus import jwt
from citycast.bus.authority import NatsAuthority, site_inbox_prefix, site_permissions
from citycast.bus.connection import settle
from citycast.bus.jwt import KeyKind
from citycast.bus.server import EmbeddedNats
from citycast.clock.local import SystemClock
from citycast.clock.service import TimeResponder
from citycast.hub.credentials import CredentialsService, enrolled_key
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Base, Site, utcnow
from citycast.hub.desired import DesiredStore
from citycast.media.codec import OpusEncoder
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.protocol.desired import DesiredState
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.site.agent import SiteAgent, SiteConfig
from citycast.site.credentials import CredentialsRenewer, RenewalError, check_renewal
from citycast.site.enrol import SiteCredentials
from citycast.site.uplink_spec import Uplink
from citycast.tasks import cancel_and_wait

SUBJECTS = Subjects()
LIFETIME_S = 4


@dataclass
class Bus:
    authority: NatsAuthority
    server: EmbeddedNats
    db: Database
    service: CredentialsService
    tmp: Path

    def enrol(self, site: str) -> Path:
        """What enrolment leaves on a box (its own seed and a JWT for it in `<site>.json`, and the creds file
        `citycast site` builds from it at each start), and the site's row at the hub."""
        seed = jwt.new_seed(KeyKind.USER)
        record = SiteCredentials(site=site, prefix=SUBJECTS.prefix, nats_urls=[self.server.url],
                                 user_jwt=self.authority.mint_site_jwt(site, jwt.public_key(seed)), seed=seed,
                                 trusted_keys=[], delay_ms=300, time_subject=SUBJECTS.time(),
                                 inbox_prefix=site_inbox_prefix(site))  # fmt: skip
        path = self.tmp / f"{site}.json"
        record.save(path)
        with self.db.session() as s:
            s.add(Site(name=site, lat=24.8, lon=67.0, nkey_public=jwt.public_key(seed), enrolled_at=utcnow()))
        return record.creds_file(path)


@pytest.fixture
async def bus(authority: NatsAuthority, auth_nats: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Bus]:
    authority.site_jwt_lifetime_s = LIFETIME_S
    server = auth_nats
    db = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    Base.metadata.create_all(db.engine)
    hub = await nats.connect(server.url, user_credentials=str(authority.hub_creds_path))
    service = CredentialsService(hub, authority, SUBJECTS, lambda site: enrolled_key(db, site), min_interval_s=0.5)
    await service.start()
    try:
        yield Bus(authority, server, db, service, tmp_path)
    finally:
        await service.stop()
        await hub.close()


def agent_for(bus: Bus, site: str, key_public: object, creds: Path, *, renew: bool = True) -> SiteAgent:
    cfg = SiteConfig(name=site, nats_url=bus.server.url, trusted_keys=[key_public], creds=creds,  # type: ignore[list-item]
                     inbox_prefix=site_inbox_prefix(site), renew_creds=renew, delay_ns=300_000_000)  # fmt: skip
    return SiteAgent(cfg, TimedSink(block=480))


async def test_a_site_plays_every_frame_across_expiries_and_one_that_does_not_renew_is_cut_off(bus: Bus) -> None:
    key = generate_private_key()
    signer = FrameSigner(key)
    packet = OpusEncoder().encode(np.zeros(960, np.float32))
    hub = await nats.connect(bus.server.url, user_credentials=str(bus.authority.hub_creds_path))
    ingest = await nats.connect(bus.server.url, user_credentials=str(bus.authority.ingest_creds_path))
    responder = TimeResponder(bus.server.url, SUBJECTS.time(), SystemClock(), creds=bus.authority.hub_creds_path)
    await responder.start()
    desired = DesiredStore(hub, SUBJECTS, reply_prefix=site_inbox_prefix)
    await desired.open()
    await desired.put("s1", DesiredState(channel=1, volume=0.8))
    creds = bus.enrol("s1")
    first_jwt = jwt.load_creds(creds).jwt
    site = agent_for(bus, "s1", key.public_key(), creds)
    stale = agent_for(bus, "s2", key.public_key(), bus.enrol("s2"), renew=False)
    await site.start()
    await stale.start()
    try:
        await wait_until(
            lambda: site.broadcast_now() is not None and stale.broadcast_now() is not None, "sync", timeout=20
        )
        await wait_until(lambda: site.desired is not None and site.desired.volume == 0.8, "desired state", timeout=10)
        # 11 s of audio, a frame every 20 ms: the 4 s JWTs are renewed (and the connection swapped) several times
        sent = 0
        start, ts0 = time.monotonic(), time.time_ns()
        while time.monotonic() - start < 11:
            frame = signer.sign(channel=1, stream=5, seq=sent, ts_ns=ts0 + sent * 20_000_000, packets=[packet])
            await ingest.publish(SUBJECTS.audio(1), frame)
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * 0.02 - time.monotonic()))
        await settle(ingest)
        await wait_until(
            lambda: site.frames >= sent,
            "the last frames",
            timeout=5,
            detail=lambda: (site.frames, sent, dict(site.rejected), site.swaps, site.swap_duplicates),
        )
        # every frame played once: none lost in a swap, none doubled, none taken for a replay
        assert site.frames == sent
        assert not site.rejected, site.rejected
        assert site.renewer is not None and site.renewer.renewals >= 3, (site.renewer.renewals, site.renewer.last_error)
        renewer = site.renewer
        # a renewal that came as the audio ended may still be retiring its old connection
        await wait_until(lambda: site.swaps == renewer.renewals, "each renewal's swap", timeout=5)
        # and in time: a generous delay absorbs this shared machine's stalls (sender, hub and site share one loop
        # here); a swap costs one connect and a few loopback round trips, beside the old connection
        assert site.engine.stats.underruns == 0 and site.engine.stats.late == 0
        print(f"swaps {site.swaps}, frames {site.frames}/{sent}, heard twice while overlapping {site.swap_duplicates}")
        assert site.nc is not None and site.nc.is_connected and site.nc.stats["reconnects"] == 0
        renewed = jwt.decode(jwt.load_creds(creds).jwt)
        assert renewed["exp"] > time.time() and jwt.load_creds(creds).jwt != first_jwt
        assert site.telemetry().creds_expire_s == renewed["exp"]  # what the hub's `creds_expiring` rule watches
        assert creds.stat().st_mode & 0o777 == 0o600
        # a restart rebuilds the creds file from the enrolment record: it holds the renewed JWT too
        record = creds.with_suffix(".json")
        assert record.stat().st_mode & 0o777 == 0o600
        assert jwt.load_creds(SiteCredentials.load(record).creds_file(record)).jwt == jwt.load_creds(creds).jwt
        # the desired state follows the site onto its new connection
        await desired.put("s1", DesiredState(channel=1, volume=0.3))
        await wait_until(
            lambda: site.desired is not None and site.desired.volume == 0.3, "desired state after", timeout=10
        )
        # the site that did not renew was cut off at its JWT's expiry and cannot come back with it
        assert stale.frames < sent / 2
        assert stale.nc is not None and not stale.nc.is_connected
        assert "expired" in str(stale.nc.last_error).lower() or "authorization" in str(stale.nc.last_error).lower()
    finally:
        await stale.stop()
        await site.stop()
        await responder.stop()
        await desired.close()
        await ingest.close()
        await hub.close()


def publish_from_another_thread(url: str, frames: list[bytes]) -> None:
    """Publish `frames` and wait until the server has routed them, from a thread of its own while the caller's
    event loop is held: they wait unread in the site's socket, as on a box too busy to read them."""

    async def publish() -> None:
        nc = await nats.connect(url)
        for frame in frames:
            await nc.publish(SUBJECTS.audio(1), frame)
        await settle(nc)  # the server has routed them all (one nats-py flush() does not promise that)
        await nc.close()

    thread = threading.Thread(target=asyncio.run, args=(publish(),))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.parametrize("paths", ["one connection", "uplinks"])
async def test_frames_that_came_on_the_old_connection_alone_are_played_after_a_swap(
    nats_server: EmbeddedNats, paths: str
) -> None:
    """Frames published while a renewal makes its new connection come on the old one alone. On a busy box they
    may still wait in the old connection's queue when the new one has subscribed: each must be played, none
    dropped with the old subscription (nats-py's `unsubscribe` discards its queue; a loaded CI box lost a frame
    that way). The site's loop is held while they are published, so they are all still unread then."""
    key = generate_private_key()
    signer = FrameSigner(key)
    packet = OpusEncoder().encode(np.zeros(960, np.float32))
    uplinks = [Uplink(nats_server.url)] if paths == "uplinks" else []
    cfg = SiteConfig(name="s1", nats_url=nats_server.url, trusted_keys=[key.public_key()], clock_mode="system",
                     watch_desired=False, delay_ns=300_000_000, max_future_ns=60 * 10**9, uplinks=uplinks)  # fmt: skip
    site = SiteAgent(cfg, TimedSink(block=480))
    ts0 = time.time_ns() + 500_000_000
    frames = [
        signer.sign(channel=1, stream=5, seq=n, ts_ns=ts0 + n * 20_000_000, packets=[packet]) for n in range(2000)
    ]

    def while_frames_arrive(make: Callable[..., Awaitable[Client]]) -> Callable[..., Awaitable[Client]]:
        async def connect(*args: int) -> Client:
            new = await make(*args)
            publish_from_another_thread(nats_server.url, frames)
            return new

        return connect

    await site.start()
    try:
        if site.uplinks is not None:
            site.uplinks.connect = while_frames_arrive(site.uplinks.connect)  # type: ignore[method-assign]
        else:
            site._connect = while_frames_arrive(site._connect)  # type: ignore[method-assign]
        await site.swap_connections()
        await wait_until(
            lambda: site.frames >= len(frames),
            "every frame published during the swap",
            timeout=10,
            detail=lambda: (site.frames, len(frames), dict(site.rejected)),
        )
        assert site.frames == len(frames) and not site.rejected, (site.frames, site.rejected)
        assert site.swaps == 1 and site.swap_duplicates == 0  # they came on the old connection alone
    finally:
        await site.stop()


async def test_a_revoked_site_gets_no_renewal(bus: Bus) -> None:
    creds = bus.enrol("s1")
    with bus.db.session() as s:
        row = s.query(Site).filter_by(name="s1").one()
        row.revoked_at = utcnow()
    nc = await nats.connect(bus.server.url, user_credentials=str(creds), inbox_prefix=site_inbox_prefix("s1"))
    try:
        reply = await nc.request(SUBJECTS.creds_renew("s1"), b"", timeout=5)
        assert "jwt" not in json.loads(reply.data)
        with pytest.raises(RenewalError, match="revoked"):
            check_renewal(reply.data, jwt.load_creds(creds))
        assert bus.service.renewed == 0 and bus.service.refused == 1
    finally:
        await nc.close()


async def test_a_site_cannot_have_credentials_sent_elsewhere_or_ask_for_another(bus: Bus) -> None:
    """Site s1's own user: asking as s2 is refused by the server; asking with a reply subject in s2's inbox or
    anywhere but its own is never answered (an eavesdropper with the hub's rights sees nothing there)."""
    creds = bus.enrol("s1")
    bus.enrol("s2")
    spy = await nats.connect(bus.server.url, user_credentials=str(bus.authority.hub_creds_path))
    seen: list[str] = []

    async def record(msg: Msg) -> None:
        seen.append(msg.subject)

    for target in ("_INBOX_site.s2.>", "_INBOX.>", "citycast.audio.>"):
        await spy.subscribe(target, cb=record)
    await settle(spy)
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    nc = await nats.connect(bus.server.url, user_credentials=str(creds), inbox_prefix=site_inbox_prefix("s1"),
                            error_cb=on_error)  # fmt: skip
    try:
        await nc.publish(SUBJECTS.creds_renew("s2"), b"", reply="_INBOX_site.s1.x")
        for reply in ("_INBOX_site.s2.x", "_INBOX.x", "citycast.audio.1"):
            await nc.publish(SUBJECTS.creds_renew("s1"), b"", reply=reply)
        await settle(nc)
        await wait_until(lambda: bus.service.misdirected == 3, "the misdirected requests", timeout=5)
        await let_time_pass(0.3)  # room for an answer to go astray, were one sent
        assert seen == [] and bus.service.renewed == 0
        await wait_until(
            lambda: any("permissions violation" in e.lower() for e in errors),
            "the server to refuse the request for s2",
            timeout=5,
            detail=lambda: errors,
        )
        # its own inbox is answered
        reply_msg = await nc.request(SUBJECTS.creds_renew("s1"), b"", timeout=5)
        token = check_renewal(reply_msg.data, jwt.load_creds(creds))
        assert jwt.decode(token)["sub"] == jwt.public_key(jwt.load_creds(creds).seed)
    finally:
        await nc.close()
        await spy.close()


def test_an_answer_for_another_key_account_or_a_shorter_life_is_not_taken(tmp_path: Path) -> None:
    authority = NatsAuthority.load_or_create(tmp_path / "auth")
    seed = jwt.new_seed(KeyKind.USER)
    current = jwt.Credentials(authority.mint_site_jwt("s1", jwt.public_key(seed)), seed)
    now = int(time.time())

    def answer(token: str) -> bytes:
        return json.dumps({"v": 1, "jwt": token}).encode()

    other_key = authority.mint_site_jwt("s1", jwt.public_key(jwt.new_seed(KeyKind.USER)), now=now + 10)
    with pytest.raises(RenewalError, match="own key"):
        check_renewal(answer(other_key), current)
    impostor = jwt.user_jwt(jwt.new_seed(KeyKind.ACCOUNT), jwt.public_key(seed), "site:s1", expires=now + 10**8)
    with pytest.raises(RenewalError, match="another account"):
        check_renewal(answer(impostor), current)
    shorter = authority.mint_site_jwt("s1", jwt.public_key(seed), now=now - 10)
    with pytest.raises(RenewalError, match="expires before"):
        check_renewal(answer(shorter), current)
    forged = authority.mint_site_jwt("s1", jwt.public_key(seed), now=now + 10)
    head, body, sig = forged.split(".")
    with pytest.raises(RenewalError, match="verify"):
        check_renewal(answer(f"{head}.{body}.{sig[::-1]}"), current)
    for junk in (b"", b"[]", b'{"v":2}', b'{"v":1}', b"\xff"):
        with pytest.raises(RenewalError):
            check_renewal(junk, current)
    assert check_renewal(answer(forged), current) == forged


async def test_a_site_at_a_city_renews_through_the_leaf(topology: Topology) -> None:
    """The request crosses the city's leaf up to the hub and the answer comes down to the site's inbox."""
    t = topology
    db = Database(f"sqlite:///{t.dir / 'hub.db'}")
    Base.metadata.create_all(db.engine)
    creds, key = site_creds(t.authority, "s1", t.dir)
    with db.session() as s:
        s.add(Site(name="s1", lat=24.8, lon=67.0, nkey_public=key, enrolled_at=utcnow()))
    hub = await nats.connect(t.hub.url, user_credentials=str(t.authority.hub_creds_path))
    service = CredentialsService(hub, t.authority, SUBJECTS, lambda site: enrolled_key(db, site))
    await service.start()
    site = await nats.connect(t.city.url, user_credentials=str(creds), inbox_prefix=site_inbox_prefix("s1"))
    try:
        deadline = time.monotonic() + 10
        while True:  # interest crosses the leaf a moment after the hub subscribes
            try:
                reply = await site.request(SUBJECTS.creds_renew("s1"), b"", timeout=0.5)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                assert time.monotonic() < deadline, "no renewal through the leaf"
        token = check_renewal(reply.data, jwt.load_creds(creds))
        assert jwt.decode(token)["sub"] == key and service.renewed == 1
    finally:
        await site.close()
        await service.stop()
        await hub.close()


async def test_credentials_from_before_expiry_are_renewed_onto_expiring_ones(bus: Bus) -> None:
    """A site enrolled when JWTs never expired asks at once and from then on holds one that does."""
    creds = bus.enrol("s1")
    old = jwt.load_creds(creds)
    forever = jwt.user_jwt(bus.authority.account_seed, jwt.public_key(old.seed), "site:s1",
                           site_permissions("s1", SUBJECTS))  # fmt: skip
    jwt.write_private(creds, jwt.creds_text(forever, old.seed))
    nc = await nats.connect(bus.server.url, user_credentials=str(creds), inbox_prefix=site_inbox_prefix("s1"))
    swapped: list[int] = []

    async def on_renewed() -> None:
        swapped.append(1)

    renewer = CredentialsRenewer(lambda: nc, SUBJECTS, "s1", creds, on_renewed)
    task = asyncio.create_task(renewer.run())
    try:
        await wait_until(lambda: renewer.renewals == 1, "the renewal", timeout=10)
        assert swapped == [1] and "exp" in jwt.decode(jwt.load_creds(creds).jwt)
        assert renewer.expires_s is None or renewer.expires_s > time.time()
    finally:
        await cancel_and_wait(task)
        await nc.close()

"""What is on air where: pre-emption by priority, restore after, desired state written, frames really sent,
and real site agents following the hub's wishes."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from tests.helpers import let_time_pass, wait_until

from citycast.bus.server import EmbeddedNats
from citycast.clock.local import SystemClock
from citycast.hub.addresses import NO_CHANNEL, AddressManager, OnAir, zone_owners
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Address, AddressStatus, Priority, Site, Zone
from citycast.hub.desired import DesiredStore
from citycast.hub.timeserver import TimeService
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.protocol.desired import DesiredState
from citycast.protocol.frame import FrameSigner, FrameVerifier
from citycast.protocol.subjects import Subjects
from citycast.site.agent import SiteAgent, SiteConfig


def _on_air(id: int, prio: Priority, zones: set[int], order: int) -> OnAir:
    return OnAir(id, f"a{id}", "tone", "", prio, frozenset(zones), 1000 + id, order, dt.datetime.now(dt.UTC))


def test_zone_owners_priority_then_newest() -> None:
    fill = _on_air(1, Priority.fill, {1, 2, 3}, 0)
    sched = _on_air(2, Priority.scheduled, {2}, 1)
    emerg = _on_air(3, Priority.emergency, {3}, 2)
    live_old = _on_air(4, Priority.live, {1}, 3)
    live_new = _on_air(5, Priority.live, {1}, 4)
    owners = zone_owners([fill, sched, emerg, live_old, live_new], [1, 2, 3, 4])
    assert owners == {1: live_new, 2: sched, 3: emerg, 4: None}
    live_new.stopping = True
    assert zone_owners([fill, live_old, live_new], [1])[1] is live_old


def _seed(db: Database) -> None:
    with db.session() as s:
        a, b = Zone(name="saddar", channel=1), Zone(name="clifton", channel=2)
        s.add_all([a, b])
        s.flush()
        s.add_all(
            [
                Site(name="s1", lat=24.86, lon=67.03, zone_id=a.id),
                Site(name="s2", lat=24.86, lon=67.04, zone_id=a.id),
                Site(name="s3", lat=24.81, lon=67.03, zone_id=b.id),
                Site(name="s4", lat=24.90, lon=67.10, zone_id=None),
            ]
        )


async def _desired(store: DesiredStore) -> dict[str, DesiredState | None]:
    return {n: await store.get(n) for n in ("s1", "s2", "s3", "s4")}


async def _channels(store: DesiredStore) -> dict[str, int | None]:
    return {n: (d.channel if d else None) for n, d in (await _desired(store)).items()}


async def _scenario(url: str, db: Database, media: Path) -> None:
    nc = await nats.connect(url)
    store = DesiredStore(nc, Subjects())
    await store.open()
    key = generate_private_key()
    events: list[dict[str, object]] = []
    mgr = AddressManager(
        db=db,
        nc=nc,
        subjects=Subjects(),
        desired=store,
        signer=FrameSigner(key),
        media_dir=media,
        publish=events.append,
        delay_ms=20,
    )
    zones = {z.name: z.id for z in _zones(db)}
    got: list[bytes] = []

    async def on_audio(m: Msg) -> None:
        got.append(m.data)

    sub = await nc.subscribe("citycast.audio.*", cb=on_audio)

    sched = await mgr.start(
        title="friday", source="tone", zone_ids=[zones["saddar"]], priority=Priority.scheduled, speaker="", user_id=None
    )
    assert await _channels(store) == {"s1": 1000, "s2": 1000, "s3": 2, "s4": NO_CHANNEL}
    emerg = await mgr.start(
        title="warning", source="marker", zone_ids=[], priority=Priority.emergency, speaker="", user_id=None
    )
    assert await _channels(store) == {"s1": 1001, "s2": 1001, "s3": 1001, "s4": NO_CHANNEL}
    assert {a["id"]: a["status"] for a in mgr.live()} == {sched: "preempted", emerg: "live"}
    await let_time_pass(0.5)  # the emergency is on the air a while before the all-clear
    asked_stop = dt.datetime.now(dt.UTC)
    await mgr.stop(emerg, "all clear")
    assert await _channels(store) == {"s1": 1000, "s2": 1000, "s3": 2, "s4": NO_CHANNEL}
    assert {a["id"]: a["status"] for a in mgr.live()} == {sched: "live"}
    await mgr.stop(sched)
    await mgr.stop(sched)  # twice is fine
    assert await _channels(store) == {"s1": 1, "s2": 1, "s3": 2, "s4": NO_CHANNEL}
    assert mgr.live() == []

    # Frames really went out on both channels, signed by the hub's key.
    verifier = FrameVerifier([key.public_key()])
    channels = {verifier.verify(d).channel for d in got}
    assert channels == {1000, 1001}
    with db.session() as s:
        rows = {r.id: r for r in s.query(Address)}
        assert rows[emerg].status is AddressStatus.ended and rows[emerg].end_reason == "all clear"
        assert rows[emerg].zone_ids == sorted(zones.values())
        # It ended when it left the air, not D + 0.3 s later when the sites had drained: its logged length is
        # what was said, as its recording's is.
        ended_at = rows[emerg].ended_at
        assert ended_at is not None
        assert (ended_at.replace(tzinfo=dt.UTC) - asked_stop).total_seconds() < 0.2
        assert rows[sched].ended_at is not None
    assert any(e["type"] == "addresses" for e in events)

    # Volume and mute changes reach the desired state.
    with db.session() as s:
        site = s.query(Site).filter_by(name="s3").one()
        site.volume, site.muted, site.fallback = 0.5, True, "silence"
    await mgr.refresh_sites(["s3"])
    d3 = (await _desired(store))["s3"]
    assert d3 is not None and d3.volume == 0.5 and d3.muted and d3.gain == 0.0 and d3.fallback == "silence"

    # A duration ends the address by itself; a bad source or zone is refused with a message.
    short = await mgr.start(
        title="short", source="tone", zone_ids=[zones["clifton"]], priority=Priority.live, speaker="", user_id=None,
        duration_s=0.3,
    )  # fmt: skip

    def ended() -> bool:  # the row is written after the address leaves the air: wait for the row
        with db.session() as s:
            row = s.get(Address, short)
            return row is not None and row.ended_at is not None

    await wait_until(lambda: mgr.get(short) is None and ended(), "the short address to end and its row written")
    with db.session() as s:
        assert s.get(Address, short).end_reason == "source ended"  # type: ignore[union-attr]
    for bad in ("file:../etc/passwd", "file:nothere.wav", "http://x", "file:"):
        with pytest.raises(ValueError):
            await mgr.start(title="x", source=bad, zone_ids=[], priority=Priority.live, speaker="", user_id=None)
    with pytest.raises(ValueError, match="no such zone"):
        await mgr.start(title="x", source="tone", zone_ids=[999], priority=Priority.live, speaker="", user_id=None)
    await sub.unsubscribe()
    await mgr.close()
    await nc.close()


def _zones(db: Database) -> list[Zone]:
    with db.session() as s:
        return list(s.query(Zone))


def test_preemption_restore_and_desired_state(
    nats_server: EmbeddedNats, sqlite_database: Database, tmp_path: Path
) -> None:
    _seed(sqlite_database)
    asyncio.run(_scenario(nats_server.url, sqlite_database, tmp_path))


async def _agent_follows(url: str, db: Database, media: Path) -> None:
    key = generate_private_key()
    nc = await nats.connect(url)
    store = DesiredStore(nc, Subjects())
    await store.open()
    time_service = TimeService(url, Subjects())
    await time_service.start()
    mgr = AddressManager(
        db=db, nc=nc, subjects=Subjects(), desired=store, signer=FrameSigner(key), media_dir=media, delay_ms=120
    )
    await mgr.refresh_sites()
    clock = SystemClock()
    agents = []
    for name in ("s1", "s3"):
        cfg = SiteConfig(name=name, nats_url=url, trusted_keys=[key.public_key()], delay_ns=120_000_000)
        agent = SiteAgent(cfg, TimedSink(clock, block=480), clock=clock)
        await agent.start()
        agents.append(agent)
    s1, s3 = agents
    await wait_until(
        lambda: s1.config.channel == 1 and s3.config.channel == 2 and s1.broadcast_now() and s3.broadcast_now(),
        "the agents synced, on their idle channels",
        timeout=20,
    )
    zone_a = next(z.id for z in _zones(db) if z.name == "saddar")
    aid = await mgr.start(title="t", source="tone", zone_ids=[zone_a], priority=Priority.live, speaker="", user_id=None)
    await wait_until(lambda: s1.engine.state.value == "playing", "the addressed site to play", timeout=10)
    assert s1.config.channel == 1000 and s3.config.channel == 2
    assert s3.engine.state.value != "playing" and s3.frames == 0
    # The operator turns s1 down: the site's gain and telemetry follow.
    with db.session() as s:
        s.query(Site).filter_by(name="s1").one().volume = 0.25
    await mgr.refresh_sites(["s1"])
    await wait_until(lambda: s1.renderer.gain == 0.25, "s1's gain at 0.25", timeout=5)
    assert s1.telemetry().volume == 0.25
    await mgr.stop(aid)
    await wait_until(lambda: s1.config.channel == 1, "s1 back on its idle channel", timeout=5)
    await let_time_pass(0.3)  # s1 stays idle rather than reporting a lost stream
    assert s1.engine.state.value == "idle"  # moved on purpose: idle, not "lost the stream"
    # Offline while its wish changes: a restarted agent converges on the latest value.
    await s3.stop()
    with db.session() as s:
        s.query(Site).filter_by(name="s3").one().muted = True
    await mgr.refresh_sites(["s3"])
    cfg = SiteConfig(name="s3", nats_url=url, trusted_keys=[key.public_key()], delay_ns=120_000_000)
    again = SiteAgent(cfg, TimedSink(clock, block=480), clock=clock)
    await again.start()
    await wait_until(
        lambda: again.desired is not None and again.desired.muted, "the returning site to converge", timeout=10
    )
    assert again.renderer.gain == 0.0
    for a in (s1, again):
        await a.stop()
    await mgr.close()
    await time_service.stop()
    await nc.close()


def test_site_agents_follow_desired_state(nats_server: EmbeddedNats, sqlite_database: Database, tmp_path: Path) -> None:
    _seed(sqlite_database)
    asyncio.run(_agent_follows(nats_server.url, sqlite_database, tmp_path))

"""The monitor end to end: a real nats-server, real light sites, a real SQLite database."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from sqlalchemy import select
from tests.helpers import let_time_pass, wait_until

from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats
from citycast.hub.alerts import AlertRules
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Alert, Base, FleetSample, Site, SiteStateChange
from citycast.hub.events import EventHub, Subscription
from citycast.hub.fleet import FleetState
from citycast.hub.monitor import FleetMonitor, TelemetryError, parse_telemetry
from citycast.protocol.subjects import Subjects
from citycast.tooling.sim.light import LightFleet

S = 1_000_000_000
NAMES = [f"site-{i}" for i in range(5)]


async def next_event(
    sub: Subscription, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    async def scan() -> dict[str, Any]:
        async for event in sub:
            if pred(event):
                return event
        raise AssertionError("subscription closed")

    return await asyncio.wait_for(scan(), timeout)


def site_in(event: dict[str, Any], name: str, state: str) -> bool:
    return event["type"] == "sites" and any(v["name"] == name and v["state"] == state for v in event["sites"])


async def test_monitor_end_to_end(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    Base.metadata.create_all(db.engine)
    with db.session() as s:
        for i, name in enumerate([*NAMES, "ghost"]):  # "ghost" is enrolled but never reports
            s.add(Site(name=name, lat=24.86 + i / 100, lon=67.0))
    with db.session() as s:  # an alert a previous hub run left open: the rules start afresh
        s.add(Alert(site_id=1, kind="offline", message="left over"))

    def site_ids() -> dict[str, int]:
        with db.session() as s:
            return {n: i for i, n in s.execute(select(Site.id, Site.name))}

    subjects = Subjects("cc")
    fleet = FleetState(offline_after_ns=2 * S)
    rules = AlertRules(offline_after_ns=2 * S)
    events = EventHub()
    sub = events.subscribe(queue_size=10_000)
    hub_nc = await nats.connect(nats_server.url)
    reports: list[tuple[str, int | None, int]] = []
    monitor = FleetMonitor(
        hub_nc, subjects, fleet, rules, events, db, site_ids, flush_interval_s=0.1, sample_interval_s=0.5,
        on_report=lambda site, channel, now: reports.append((site, channel, now)),
    )  # fmt: skip
    await monitor.start()
    assert fleet.view("ghost")["state"] == "offline"  # known before any telemetry
    light = LightFleet(nats_server.url, NAMES, subjects=subjects, per_connection=2, sync_after_s=(0.1, 0.3))
    rogue = await nats.connect(nats_server.url)
    try:
        await light.start()
        await wait_until(lambda: fleet.counts()["idle"] == 5, "5 sites idle", detail=fleet.counts)

        # A forced change reaches the console as a "sites" event.
        await light.force("site-1", state="playing")
        event = await next_event(sub, lambda e: site_in(e, "site-1", "playing"))
        view = next(v for v in event["sites"] if v["name"] == "site-1")
        assert view["channel"] == 1 and view["level_rms_dbfs"] > -60 and view["last_seen_s"] > 1e9
        # every good report is handed on with the channel the site plays (the hub's desired-state nudge)
        assert {(site, channel) for site, channel, _ in reports} >= {(n, 1) for n in NAMES}

        # Bad telemetry is counted and survived.
        good = json.loads(light.sites["site-0"].telemetry(light.rng, time.time_ns(), 1.0).to_json())
        bad = [
            b"\xff\xfe not json",
            b"[1, 2, 3]",
            json.dumps({**good, "v": 99}).encode(),
            json.dumps({**good, "site": "site-4"}).encode(),  # on site-0's subject: an impostor
            json.dumps({**good, "underruns": "lots"}).encode(),
            json.dumps({k: v for k, v in good.items() if k != "state"}).encode(),
            b"{" * 100_000,
        ]
        for payload in bad:
            await rogue.publish(subjects.telemetry("site-0"), payload)
        await settle(rogue)
        await wait_until(lambda: monitor.counters.bad == len(bad), "every bad report counted")
        assert monitor.counters.received > monitor.counters.bad

        # Still alive: a sync error makes a fault and raises one alert, with its database id.
        await light.force("site-2", sync_error_ms=8.0)
        alert = await next_event(sub, lambda e: e["type"] == "alert" and e["alert"]["kind"] == "sync_error")
        assert alert["alert"]["site"] == "site-2" and alert["alert"]["cleared_at"] is None
        assert isinstance(alert["alert"]["id"], int)
        assert fleet.view("site-2")["state"] == "fault"
        await light.force("site-2", clear_sync_error=True)
        cleared = await next_event(sub, lambda e: e["type"] == "alert" and e["alert"]["cleared_at"] is not None)
        assert cleared["alert"]["id"] == alert["alert"]["id"] and cleared["alert"]["kind"] == "sync_error"

        # A site that falls silent goes offline and raises an offline alert; it clears when it is back.
        await light.force("site-3", silent=True)
        await next_event(sub, lambda e: site_in(e, "site-3", "offline"))
        await next_event(
            sub, lambda e: e["type"] == "alert" and e["alert"]["site"] == "site-3" and e["alert"]["kind"] == "offline"
        )
        await light.force("site-3", silent=False)
        await next_event(sub, lambda e: site_in(e, "site-3", "idle"))
        await wait_until(
            lambda: fleet.counts()["fault"] == 0 and fleet.counts()["offline"] == 1,
            "no fault and only the ghost offline",
            detail=fleet.counts,
        )
        await let_time_pass(0.6)  # one more fleet sample
    finally:
        await light.stop()
        await monitor.stop()
        await rogue.close()
        await hub_nc.close()

    with db.session() as s:
        ids = {n: i for i, n in s.execute(select(Site.id, Site.name))}
        changes = (
            s.execute(
                select(SiteStateChange.state)
                .where(SiteStateChange.site_id == ids["site-1"])
                .order_by(SiteStateChange.id)
            )
            .scalars()
            .all()
        )
        assert list(changes) == ["idle", "playing"]
        site3 = s.execute(select(SiteStateChange.state).where(SiteStateChange.site_id == ids["site-3"])).scalars().all()
        assert list(site3) == ["idle", "offline", "idle"]
        rows = {(a.site_id, a.kind): a for a in s.execute(select(Alert)).scalars()}
        assert rows[(ids["site-2"], "sync_error")].cleared_at is not None
        assert rows[(ids["site-3"], "offline")].cleared_at is not None
        assert rows[(ids["ghost"], "offline")].cleared_at is None  # still offline
        stale = s.execute(select(Alert).where(Alert.message == "left over")).scalar_one()
        assert stale.cleared_at is not None
        site1 = s.get(Site, ids["site-1"])
        assert site1 is not None and site1.last_state == "playing" and site1.last_seen_at is not None
        samples = s.execute(select(FleetSample)).scalars().all()
        assert samples and sum(samples[-1].by_state.values()) == 6


def test_parse_telemetry_names_the_problem() -> None:
    for payload, reason in [
        (b"nope", "not citycast telemetry"),
        (b"x" * 20_000, "more than"),
    ]:
        try:
            parse_telemetry("site-0", payload)
        except TelemetryError as e:
            assert reason in str(e)
        else:
            raise AssertionError("accepted")


async def test_events_drop_a_slow_subscriber_to_a_resync() -> None:
    events = EventHub(queue_size=4)
    fast, slow = events.subscribe(), events.subscribe()
    for i in range(10):
        events.publish({"type": "sites", "n": i})
        if i % 2:  # the fast one keeps up
            await fast.get()
            await fast.get()
    assert fast.pending() == 0 and fast.resyncs == 0
    got = [slow._queue[i] for i in range(slow.pending())]
    assert got[0] == {"type": "resync"} and slow.resyncs == 2 and slow.dropped > 0
    slow.close()
    assert events.subscribers == 1
    events.close()
    assert [e async for e in fast] == []

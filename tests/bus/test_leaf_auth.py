"""A city leafnode under the hub's JWT accounts: two real nats-servers in operator mode on loopback.

The hub listens for leafnodes; the city server runs from the city bundle (`citycast.bus.city_bundle`) and dials
it with the bundle's leaf creds. Sites enrolled at the hub connect to the city server with the same JWTs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import nats
import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig
from tests.helpers import SUBJECTS, Topology, connect, nothing_arrives, request_answered, site_creds, wait_until

from citycast.bus import jwt
from citycast.bus.authority import CITY_TIME_INBOX_PREFIX, INGEST_INBOX_PREFIX, site_inbox_prefix
from citycast.bus.city_bundle import export_city_bundle
from citycast.bus.connection import settle
from citycast.hub.desired import DesiredStore
from citycast.protocol.desired import DesiredState, desired_bucket
from citycast.site.desired import DesiredWatcher
from citycast.tasks import cancel_and_wait


async def receive_while(send: Callable[[], Awaitable[None]], sub: Subscription, timeout: float = 5.0) -> Msg:
    """Interest crosses the leaf a moment after a subscription is made: send until the message arrives."""
    deadline = time.monotonic() + timeout
    while True:
        await send()
        try:
            return await sub.next_msg(timeout=0.2)
        except nats.errors.TimeoutError:
            if time.monotonic() > deadline:
                raise


async def drain(sub: Subscription) -> None:
    while True:
        try:
            await sub.next_msg(timeout=0.3)
        except nats.errors.TimeoutError:
            return


async def test_site_at_the_city_hears_hub_audio_and_reports_to_the_hub(topology: Topology) -> None:
    t = topology
    creds, _ = site_creds(t.authority, "s1", t.dir)  # minted by the hub, used at the city
    site = await connect(t.city.url, creds, site_inbox_prefix("s1"))
    ingest = await connect(t.hub.url, t.authority.ingest_creds_path, INGEST_INBOX_PREFIX)
    hub = await connect(t.hub.url, t.authority.hub_creds_path)
    audio = await site.nc.subscribe("citycast.audio.*")
    cmd = await site.nc.subscribe("citycast.cmd.s1")
    telemetry = await hub.nc.subscribe("citycast.telemetry.*")
    hub_audio = await hub.nc.subscribe("citycast.audio.>")
    await settle(site.nc)
    await settle(hub.nc)

    async def send_audio() -> None:
        await ingest.nc.publish("citycast.audio.3", b"frame")

    assert (await receive_while(send_audio, audio)).data == b"frame"

    async def send_cmd() -> None:
        await hub.nc.publish("citycast.cmd.s1", b"reload")

    assert (await receive_while(send_cmd, cmd)).data == b"reload"

    async def send_telemetry() -> None:
        await site.nc.publish("citycast.telemetry.s1", b"{}")

    got = await receive_while(send_telemetry, telemetry)
    assert got.subject == "citycast.telemetry.s1"
    # A time request to the hub's responder from the city, answered on the site's own inbox across the leaf.

    async def answer(msg: Msg) -> None:
        await msg.respond(b"now")

    await hub.nc.subscribe("citycast.time.site.s1", cb=answer)
    await settle(hub.nc)
    assert (await request_answered(site.nc, "citycast.time.site.s1")).data == b"now"
    assert site.errors == []

    # The site may not publish audio at the city server: it is refused there and nobody at the hub hears it.
    await drain(hub_audio)  # ingest's frames
    await site.nc.publish("citycast.audio.1", b"a voice that is not ours")
    await settle(site.nc)
    await wait_until(lambda: site.violations(), "the city server to refuse the site's audio", timeout=5)
    assert 'publish to "citycast.audio.1"' in site.violations()[0]
    assert await nothing_arrives(hub_audio)
    for c in (site, ingest, hub):
        await c.nc.close()


async def test_the_leaf_carries_only_what_cities_need(topology: Topology) -> None:
    """Even a user with every right in the account (the hub's own creds, valid at the city too) cannot push
    audio, commands or desired state up the link, nor read the hub's replies or other sites' telemetry."""
    t = topology
    hub = await connect(t.hub.url, t.authority.hub_creds_path)
    kv = await hub.nc.jetstream().create_key_value(KeyValueConfig(bucket=desired_bucket(SUBJECTS)))
    await kv.put("s1", b'{"channel": 1}')
    up = await hub.nc.subscribe("citycast.>")
    await settle(hub.nc)
    insider = await connect(t.city.url, t.authority.hub_creds_path)
    down = await insider.nc.subscribe("citycast.telemetry.*")
    inbox = await insider.nc.subscribe("_INBOX.>")
    await settle(insider.nc)
    # Telemetry goes up (the leaf may send it), which also shows the link is live for this connection.

    async def send_telemetry() -> None:
        await insider.nc.publish("citycast.telemetry.s9", b"{}")

    assert (await receive_while(send_telemetry, up)).subject == "citycast.telemetry.s9"
    await drain(up)
    await drain(down)  # its own telemetry, heard locally
    await insider.nc.publish("citycast.audio.1", b"forged voice")
    await insider.nc.publish("citycast.cmd.s1", b"forged command")
    await insider.nc.publish("$KV.citycast-desired.s1", b'{"channel": 666}')
    await settle(insider.nc)
    assert await nothing_arrives(up)
    entry = await kv.get("s1")
    assert entry.value == b'{"channel": 1}' and entry.revision == 1
    # Down: hub-side telemetry and the hub's own inbox replies stay at the hub.
    await hub.nc.publish("citycast.telemetry.s2", b"{}")
    await hub.nc.publish("_INBOX.abc", b"the hub's reply")
    await settle(hub.nc)
    assert await nothing_arrives(down) and await nothing_arrives(inbox, 0.2)
    await insider.nc.close()
    await hub.nc.close()


async def test_site_at_the_city_follows_the_hubs_desired_state(topology: Topology) -> None:
    t = topology
    hub = await connect(t.hub.url, t.authority.hub_creds_path)
    store = DesiredStore(hub.nc, SUBJECTS, reply_prefix=site_inbox_prefix)
    await store.open()
    await store.put("s1", DesiredState(channel=1))
    creds, _ = site_creds(t.authority, "s1", t.dir)
    site = await connect(t.city.url, creds, site_inbox_prefix("s1"))
    seen: list[DesiredState] = []
    watcher = DesiredWatcher(site.nc, SUBJECTS, "s1", seen.append, retry_s=0.5)
    task = asyncio.create_task(watcher.run())
    try:
        # Asked for over the leaf and answered down it; then published at the hub and heard at the city (10 s for both).
        deadline = time.monotonic() + 10
        await wait_until(lambda: len(seen) >= 1, "desired state through the leaf", timeout=10)
        await store.put("s1", DesiredState(channel=2))
        await wait_until(lambda: len(seen) >= 2, "an update through the leaf", timeout=deadline - time.monotonic())
        assert seen == [DesiredState(channel=1), DesiredState(channel=2)]
    finally:
        await cancel_and_wait(task)
    # ...but it may not write it, here or through the link.
    with pytest.raises(nats.errors.Error):  # no acknowledgement: the city server dropped the publish
        await site.nc.jetstream(timeout=2).publish(f"$KV.{desired_bucket(SUBJECTS)}.s1", b'{"channel": 666}')
    # The city server's own refusal, not the missing ack, is the proof: it names the subject it denied.
    kv_put = f'publish to "$kv.{desired_bucket(SUBJECTS)}.s1"'
    await wait_until(
        lambda: any(kv_put in v.lower() for v in site.violations()),
        "the city server to refuse the KV put",
        timeout=5,
        detail=lambda: site.errors,
    )
    await site.nc.publish("citycast.desired.s1", b'{"channel": 666}')
    await settle(site.nc)
    assert (await store.get("s1")) == DesiredState(channel=2)
    await site.nc.close()
    await store.close()
    await hub.nc.close()


async def test_site_revoked_at_the_hub_is_dropped_and_refused_at_the_city(topology: Topology) -> None:
    t = topology
    bad_creds, bad_key = site_creds(t.authority, "bad", t.dir)
    good_creds, _ = site_creds(t.authority, "good", t.dir)
    bad = await connect(t.city.url, bad_creds, site_inbox_prefix("bad"))
    good = await connect(t.city.url, good_creds, site_inbox_prefix("good"))
    # Pushed to the hub only: the account JWT reaches the city's resolver over the system account's leaf.
    await t.authority.revoke(bad_key, t.hub.url)
    await asyncio.wait_for(bad.closed.wait(), 5)
    with pytest.raises(Exception, match=r"(?i)authorization|revoked"):
        await connect(t.city.url, bad_creds, site_inbox_prefix("bad"))
    await good.nc.publish("citycast.telemetry.good", b"{}")
    await settle(good.nc, 3)
    assert good.nc.is_connected
    await good.nc.close()
    # A city server started later from a bundle exported after the revocation refuses it from the start.
    later = export_city_bundle(t.authority, t.dir / "later.bundle", "north")
    assert bad_key in jwt.decode(later.account_jwt)["nats"]["revocations"]


async def test_city_time_responder_answers_its_zone_and_syncs_to_the_hub(topology: Topology) -> None:
    t = topology
    responder = await connect(t.city.url, t.files.time_creds, CITY_TIME_INBOX_PREFIX)

    async def answer(msg: Msg) -> None:
        await msg.respond(b"city-now")

    await responder.nc.subscribe("citycast.time.north.site.*", cb=answer)
    await settle(responder.nc)
    creds, _ = site_creds(t.authority, "s1", t.dir)
    site = await connect(t.city.url, creds, site_inbox_prefix("s1"))
    assert (await site.nc.request("citycast.time.north.site.s1", b"t1", timeout=3)).data == b"city-now"
    # Its own upstream sync: a request to the hub's responder, the reply down the leaf to its inbox.
    hub = await connect(t.hub.url, t.authority.hub_creds_path)

    async def hub_answer(msg: Msg) -> None:
        await msg.respond(b"hub-now")

    await hub.nc.subscribe("citycast.time", cb=hub_answer)
    await settle(hub.nc)
    assert (await request_answered(responder.nc, "citycast.time")).data == b"hub-now"
    # Nothing else: no audio, no other zone's subject.
    await responder.nc.publish("citycast.audio.1", b"x")
    await responder.nc.subscribe("citycast.time.south")
    await settle(responder.nc)
    await wait_until(lambda: len(responder.violations()) >= 2, "2 refusals", timeout=5, detail=lambda: responder.errors)
    assert responder.errors and site.errors == []
    for c in (responder, site, hub):
        await c.nc.close()

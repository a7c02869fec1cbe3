"""The time service over a real nats-server on loopback, in real time."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from tests.helpers import connect, nothing_arrives, site_creds, wait_until

from citycast.bus.authority import CITY_TIME_INBOX_PREFIX, NatsAuthority, site_inbox_prefix
from citycast.bus.city_bundle import export_city_bundle
from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats
from citycast.clock.estimator import ClockEstimator
from citycast.clock.local import SkewedClock, SystemClock
from citycast.clock.service import PLAIN_AFTER_FAILURES, ClockSync, EstimatedClock, TimeResponder
from citycast.hub.timeserver import TimeService
from citycast.protocol.subjects import Subjects

MS = 1_000_000


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[nats.aio.client.Client]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.drain()


def sync_error_ns(est: ClockEstimator, clock: SkewedClock) -> int:
    true = time.time_ns()
    return est.to_broadcast(clock.at(true)) - true


async def test_clock_sync_converges_against_system_clock(nats_url: str) -> None:
    hub = TimeResponder(nats_url, "citycast.time", SystemClock())
    await hub.start()
    site_clock = SkewedClock(offset_ns=1_300_000_000, ppm=80.0)
    sync = ClockSync(nats_url, "citycast.time", site_clock)
    await sync.start()
    try:
        est = sync.estimator
        await wait_until(
            lambda: est.synced and abs(sync_error_ns(est, site_clock)) < 1 * MS, "the site clock within 1 ms"
        )
        await asyncio.sleep(2)  # stays there
        errors = []
        for _ in range(20):
            errors.append(sync_error_ns(est, site_clock))
            await asyncio.sleep(0.05)
        assert max(abs(e) for e in errors) < 1 * MS
        assert sync.exchanges >= 10
        assert sync.last_rtt_ns is not None and 0 < sync.last_rtt_ns < 100 * MS
        assert est.error_bound_ns < 5 * MS
        assert hub.answered >= sync.exchanges
    finally:
        await sync.stop()
        await hub.stop()


async def test_malformed_requests_do_not_kill_the_responder(nc: nats.aio.client.Client, nats_url: str) -> None:
    hub = TimeResponder(nats_url, "citycast.time", SystemClock())
    await hub.start()
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request("citycast.time", b"x" * 65, timeout=0.3)
        await nc.publish("citycast.time", b"no reply subject")
        await nc.publish("citycast.time", b"\xff" * 64, reply="nobody.listens")
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request("citycast.time", b"", timeout=0.3)  # not the 8-byte t1
        reply = await nc.request("citycast.time", b"12345678", timeout=1)
        assert len(reply.data) == 24
        assert reply.data[16:] == b"12345678"  # the request is echoed, so late answers are recognised
        t2, t3 = int.from_bytes(reply.data[:8], "big"), int.from_bytes(reply.data[8:16], "big")
        assert 0 <= t3 - t2 < 100 * MS
        assert abs(t2 - time.time_ns()) < 1_000 * MS
        assert hub.ignored >= 2
    finally:
        await hub.stop()


async def test_answers_go_only_to_inboxes(nc: nats.aio.client.Client, nats_url: str) -> None:
    """A requester picks its reply subject; one pointing at an audio or command subject gets nothing there."""
    hub = TimeResponder(nats_url, "citycast.time", SystemClock())
    await hub.start()
    try:
        aimed = [await nc.subscribe(s) for s in ("citycast.audio.1", "citycast.cmd.s2")]
        await settle(nc)
        for target in ("citycast.audio.1", "citycast.cmd.s2"):
            await nc.publish("citycast.time", b"12345678", reply=target)
        reply = await nc.request("citycast.time", b"87654321", timeout=1)  # an inbox: answered as always
        assert reply.data[16:] == b"87654321"
        for sub in aimed:
            with pytest.raises(nats.errors.TimeoutError):
                await sub.next_msg(timeout=0.3)
        assert hub.misdirected == 2 and hub.answered == 1
    finally:
        await hub.stop()


async def test_failures_are_counted_and_retried(nats_url: str) -> None:
    sync = ClockSync(nats_url, "citycast.time.nobody", SystemClock(), timeout_s=0.1, retry_interval_s=0.1)
    await sync.start()
    try:
        await wait_until(lambda: sync.failures >= 2, "two failed exchanges", timeout=5)
        hub = TimeResponder(nats_url, "citycast.time.nobody", SystemClock())
        await hub.start()
        await wait_until(lambda: sync.estimator.synced, "sync once a responder answers")
        await hub.stop()
    finally:
        await sync.stop()


async def test_site_syncs_to_city_responder_that_syncs_to_hub(nats_url: str) -> None:
    hub = TimeResponder(nats_url, "citycast.time.hub", SystemClock())
    await hub.start()
    city_clock = SkewedClock(offset_ns=-700_000_000, ppm=-50.0)
    city_sync = ClockSync(nats_url, "citycast.time.hub", city_clock)
    city_est = city_sync.estimator
    city = TimeResponder(
        nats_url,
        "citycast.time.city",
        EstimatedClock(city_est, city_clock),
        ready=lambda: city_est.synced,
    )
    site_clock = SkewedClock(offset_ns=1_300_000_000, ppm=80.0)
    site_sync = ClockSync(nats_url, "citycast.time.city", site_clock, timeout_s=0.5, retry_interval_s=0.2)
    await city_sync.start()
    await city.start()
    await site_sync.start()
    try:
        site_est = site_sync.estimator
        await wait_until(
            lambda: site_est.synced and abs(sync_error_ns(site_est, site_clock)) < 1 * MS,
            "the site clock within 1 ms through the city",
            timeout=20,
        )
        await asyncio.sleep(2)
        errors = []
        for _ in range(20):
            errors.append(sync_error_ns(site_est, site_clock))
            await asyncio.sleep(0.05)
        assert max(abs(e) for e in errors) < 1 * MS
        assert abs(sync_error_ns(city_est, city_clock)) < 1 * MS
        assert site_sync.exchanges >= 10
    finally:
        await site_sync.stop()
        await city.stop()
        await city_sync.stop()
        await hub.stop()


async def test_site_syncs_over_a_server_in_jwt_mode(
    authority: NatsAuthority, auth_nats: EmbeddedNats, tmp_path: Path
) -> None:
    server = auth_nats
    creds, _ = site_creds(authority, "s1", tmp_path)
    hub = TimeResponder(server.url, "citycast.time", SystemClock(), creds=authority.hub_creds_path)
    site_clock = SkewedClock(offset_ns=-400_000_000, ppm=30.0)
    sync = ClockSync(
        server.url, "citycast.time", site_clock, creds=creds, inbox_prefix=site_inbox_prefix("s1"), site="s1"
    )
    # The same site on the default inbox: its permissions do not let it hear the answers.
    wrong = ClockSync(
        server.url, "citycast.time", site_clock, creds=creds, timeout_s=0.2, retry_interval_s=0.1, site="s1"
    )
    try:
        await hub.start()
        await sync.start()
        await wrong.start()
        est = sync.estimator
        await wait_until(
            lambda: est.synced and abs(sync_error_ns(est, site_clock)) < 1 * MS, "the site clock within 1 ms"
        )
        await wait_until(lambda: wrong.failures >= 3, "three failures on the default inbox", timeout=5)
        assert wrong.exchanges == 0
    finally:
        await wrong.stop()
        await sync.stop()
        await hub.stop()


async def test_a_site_cannot_aim_time_replies_at_another_inbox(
    authority: NatsAuthority, auth_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """Site a's own credentials against the hub's real time service: replies aimed at site b's inbox, the hub's
    inbox or an audio subject are never sent (counted there by an eavesdropper with the hub's rights), asking as
    another site or on the bare subject is refused by the server; its own inbox is answered."""
    server = auth_nats
    service = TimeService(server.url, Subjects(), creds=authority.hub_creds_path)
    creds, _ = site_creds(authority, "a", tmp_path)
    site = await connect(server.url, creds, site_inbox_prefix("a"))
    spy = await connect(server.url, authority.hub_creds_path)
    try:
        await service.start()
        targets = {"_INBOX_site.b.stolen": "_INBOX_site.b.>", "citycast.audio.1": "citycast.audio.*"}
        subs = [await spy.nc.subscribe(pattern) for pattern in targets.values()]
        await settle(spy.nc)
        for reply in targets:
            await site.nc.publish("citycast.time.site.a", b"12345678", reply=reply)
            await site.nc.publish("citycast.time", b"12345678", reply=reply)  # the trusted users' subject
            await site.nc.publish("citycast.time.site.b", b"12345678", reply="_INBOX_site.b.stolen")
        await settle(site.nc)
        for sub in subs:
            assert await nothing_arrives(sub, 1.0)
        assert service.responder.misdirected == 2
        assert len(site.violations()) >= 1  # the server refused the bare and the other site's subject
        # Its own subject with its own inbox is answered as always.
        reply = await site.nc.request("citycast.time.site.a", b"87654321", timeout=3)
        assert reply.data[16:] == b"87654321"
        assert service.responder.answered == 1
    finally:
        await site.nc.close()
        await spy.nc.close()
        await service.stop()


async def test_a_city_responder_answers_its_sites_only_on_their_own_inbox(
    authority: NatsAuthority, auth_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """`serve --zone north` with the city bundle's time credentials, synced to the hub's responder: a site of the
    city syncs through it on its own subject, and its credentials cannot aim the city's answers at another
    site's inbox (the city's user may answer any request it gets, so the responder's own check is what stops it)."""
    server = auth_nats
    files = export_city_bundle(authority, tmp_path / "north.bundle", "north").install(tmp_path / "city")
    subjects = Subjects()
    hub = TimeService(server.url, subjects, creds=authority.hub_creds_path)
    city = TimeService(
        server.url,
        subjects,
        zone="north",
        upstream=subjects.time(),
        creds=files.time_creds,
        upstream_inbox_prefix=CITY_TIME_INBOX_PREFIX,
    )
    creds, _ = site_creds(authority, "a", tmp_path)
    site_clock = SkewedClock(offset_ns=250_000_000, ppm=-20.0)
    sync = ClockSync(
        server.url, subjects.time("north"), site_clock, creds=creds, inbox_prefix=site_inbox_prefix("a"), site="a"
    )
    site = await connect(server.url, creds, site_inbox_prefix("a"))
    spy = await connect(server.url, authority.hub_creds_path)
    try:
        await hub.start()
        await city.start()
        await sync.start()
        est = sync.estimator
        await wait_until(
            lambda: est.synced and abs(sync_error_ns(est, site_clock)) < 2 * MS,
            "the site clock within 2 ms through the city",
            timeout=60,
        )
        stolen = await spy.nc.subscribe("_INBOX_site.b.>")
        await settle(spy.nc)
        before = city.responder.misdirected
        for _ in range(3):
            await site.nc.publish("citycast.time.north.site.a", b"12345678", reply="_INBOX_site.b.stolen")
        await settle(site.nc)
        assert await nothing_arrives(stolen, 1.0)
        assert city.responder.misdirected == before + 3
    finally:
        await site.nc.close()
        await spy.nc.close()
        await sync.stop()
        await city.stop()
        await hub.stop()


class _BentClock:
    """A responder's served clock that bends: its free-running `local` clock plus 300 µs · sin(2π t / 20 s), as
    a city responder slewing corrections in would (faster here, to show within seconds)."""

    def __init__(self, local: SystemClock) -> None:
        self.local = local
        self.t0 = local.now_ns()

    def served_at(self, local_ns: int) -> int:
        return local_ns + round(300_000 * math.sin(2 * math.pi * (local_ns - self.t0) / 20e9))

    def now_ns(self) -> int:
        return self.served_at(self.local.now_ns())

    def at(self, true_ns: int) -> int:
        return self.served_at(self.local.at(true_ns))


async def test_a_site_follows_a_bending_responder_through_its_correction(nats_url: str) -> None:
    """Over a real nats-server: a site that asks for the correction gets it (16-byte request, 32-byte reply),
    fits the responder's free-running clock and follows the bend to within loopback's jitter; one that does not
    ask gets the 24-byte reply and fits the served clock, as before."""
    local = SystemClock()
    bent = _BentClock(local)
    responder = TimeResponder(nats_url, "citycast.time.city", bent)
    await responder.start()
    site_clock = SkewedClock(offset_ns=1_300_000_000, ppm=80.0)
    site = ClockSync(nats_url, "citycast.time.city", site_clock)
    plain = ClockSync(nats_url, "citycast.time.city", site_clock, correction=False)
    await site.start()
    await plain.start()
    try:
        est = site.estimator
        await wait_until(lambda: est.synced and plain.estimator.synced, "both synced", timeout=20)
        assert est.corrected and not plain.estimator.corrected
        errors = []
        for _ in range(40):
            true = time.time_ns()
            errors.append(est.to_broadcast(site_clock.at(true)) - bent.served_at(local.at(true)))
            await asyncio.sleep(0.1)
        assert max(abs(e) for e in errors) < 0.2 * MS, errors
    finally:
        await plain.stop()
        await site.stop()
        await responder.stop()


async def test_a_site_syncs_to_a_responder_from_before_the_correction(
    nc: nats.aio.client.Client, nats_url: str
) -> None:
    """A responder that knows only the 8-byte request ignores the 16-byte one: the site finds it out from the
    silence and syncs with plain requests (and fits the served clock, as before)."""
    plain_requests = 0

    async def old_responder(msg: nats.aio.msg.Msg) -> None:
        nonlocal plain_requests
        if len(msg.data) != 8:
            return  # not a time message to it
        plain_requests += 1
        t2 = t3 = time.time_ns()
        await nc.publish(msg.reply, struct.pack(">qq", t2, t3) + msg.data)

    await nc.subscribe("citycast.time.old", cb=old_responder)
    await settle(nc)
    site_clock = SkewedClock(offset_ns=1_300_000_000, ppm=80.0)
    site = ClockSync(nats_url, "citycast.time.old", site_clock, timeout_s=0.2, retry_interval_s=0.05)
    await site.start()
    try:
        await wait_until(lambda: site.estimator.synced, "synced through plain requests", timeout=20)
        assert not site.estimator.corrected and plain_requests >= 8
        assert abs(sync_error_ns(site.estimator, site_clock)) < 2 * MS
    finally:
        await site.stop()


async def test_a_site_asking_a_responder_not_ready_yet_ends_up_with_its_correction(nats_url: str) -> None:
    """A city responder is silent to every request until it is synced to the hub, so the site, hearing nothing,
    also tries plain requests; once the responder answers, the site still settles on the corrected ones."""
    local = SystemClock()
    bent = _BentClock(local)
    ready_at = time.monotonic() + 4.0
    responder = TimeResponder(nats_url, "citycast.time.late", bent, ready=lambda: time.monotonic() > ready_at)
    await responder.start()
    site = ClockSync(nats_url, "citycast.time.late", SkewedClock(offset_ns=5_000_000, ppm=-20.0), timeout_s=0.2,
                     retry_interval_s=0.1)  # fmt: skip
    await site.start()
    try:
        await wait_until(lambda: site.estimator.synced, "synced once the responder is ready", timeout=20)
        assert site.estimator.corrected
        assert site.failures >= PLAIN_AFTER_FAILURES  # it did try while the responder was silent
    finally:
        await site.stop()
        await responder.stop()

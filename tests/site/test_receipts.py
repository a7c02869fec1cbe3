"""Proof of play end to end over a real nats-server in operator mode: a real site agent with its enrolment
credentials plays an address's frames until the stream is cut 2 s in, signs its receipt with its own key and asks
the hub on its own receipts subject (answered on its own inbox); the hub's receipt service takes it, and the
address shows that site as having played it partly, with the span it really played."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import nats
import numpy as np
import pytest
from tests.helpers import site_creds, wait_until

from citycast.bus import jwt
from citycast.bus.authority import NatsAuthority, site_inbox_prefix
from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats
from citycast.hub.db.engine import Database, default_sqlite_url
from citycast.hub.db.models import Address, AddressStatus, Priority, Site, Zone
from citycast.hub.receipts import ReceiptService, address_report
from citycast.media.codec import OpusEncoder
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.site.agent import SiteAgent, SiteConfig
from citycast.site.receipts import PlayLog
from citycast.site.talkback import key_from_seed

SUBJECTS = Subjects()
CHANNEL = 1005
CUT_S = 2.0


async def test_a_real_site_cut_off_mid_address_reports_partly_with_its_span(
    auth_nats: EmbeddedNats, authority: NatsAuthority, tmp_path: Path
) -> None:
    db = Database(default_sqlite_url(tmp_path))
    db.upgrade()
    creds, public = site_creds(authority, "orangi-2", tmp_path)
    started = dt.datetime.now(dt.UTC)
    with db.session() as s:
        zone = Zone(name="orangi", channel=9)
        s.add(zone)
        s.flush()
        s.add(Site(name="orangi-2", lat=24.95, lon=67.0, zone_id=zone.id, nkey_public=public, enrolled_at=started))
        s.add(Address(id=1, title="Flood warning", source="tone", priority=Priority.emergency, channel=CHANNEL,
                      zone_ids=[zone.id], status=AddressStatus.live, started_at=started))  # fmt: skip
    hub = await nats.connect(auth_nats.url, user_credentials=str(authority.hub_creds_path))
    ingest = await nats.connect(auth_nats.url, user_credentials=str(authority.ingest_creds_path))
    service = ReceiptService(hub, SUBJECTS, db)
    await service.start()
    key = generate_private_key()
    cfg = SiteConfig(name="orangi-2", nats_url=auth_nats.url, trusted_keys=[key.public_key()], channel=CHANNEL,
                     delay_ns=200_000_000, clock_mode="system", creds=creds, inbox_prefix=site_inbox_prefix("orangi-2"),
                     watch_desired=False, renew_creds=False,
                     receipt_key=key_from_seed(jwt.load_creds(creds).seed))  # fmt: skip
    agent = SiteAgent(cfg, TimedSink(block=480))
    agent.play_log = PlayLog("orangi-2", quiet_ns=1_000_000_000)  # a stream 1 s quiet is over (30 s in service)
    await agent.start()
    try:
        signer, encoder = FrameSigner(key), OpusEncoder()
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(960) / 48_000)).astype(np.float32)
        ts0, start, sent = time.time_ns() + 100_000_000, time.monotonic(), 0
        while sent < CUT_S * 50:  # the stream, paced in real time, until the site is cut off from it
            frame = signer.sign(channel=CHANNEL, stream=3, seq=sent, ts_ns=ts0 + sent * 20_000_000,
                                packets=[encoder.encode(tone)])  # fmt: skip
            await ingest.publish(SUBJECTS.audio(CHANNEL), frame)
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * 0.02 - time.monotonic()))
        await settle(ingest)
        receipts = agent.receipts
        assert receipts is not None
        await wait_until(lambda: receipts.sent >= 1, "the hub's answer to the site's receipt", timeout=15,
                         detail=lambda: (service.refused, receipts.pending))  # fmt: skip
        assert receipts.sent == 1 and not receipts.pending and service.taken == 1
        assert agent.frames == sent and not service.refused
        with db.session() as s:  # the address went on for 6 s; the hub's row says so when it ends
            row = s.get(Address, 1)
            assert row is not None
            row.status, row.ended_at = AddressStatus.ended, dt.datetime.fromtimestamp(ts0 / 1e9 + 6, dt.UTC)
        report = address_report(db, 1)
        assert report is not None
        (site,) = report["sites"]
        assert site["verdict"] == "partly" and not site["open"]
        assert site["played_s"] == pytest.approx(CUT_S, abs=0.05)
        first = dt.datetime.fromisoformat(site["first_at"]).timestamp()
        assert first == pytest.approx(ts0 / 1e9, abs=0.05)
    finally:
        await agent.stop()
        await service.stop()
        await ingest.close()
        await hub.close()
        db.dispose()


def test_a_long_address_gets_a_receipt_every_interval_each_covering_the_span_from_its_start() -> None:
    """Every 10 minutes of a long address (here every second of stream, in simulated time) a receipt goes out,
    each from the span's first sample; the last one, when the site moves to another channel, is final."""
    log = PlayLog("orangi-2", interim_ns=1_000_000_000)
    block = np.full(480, 0.1, np.float32)  # 10 ms
    t0 = 1_796_202_120_000_000_000
    for k in range(350):
        at = t0 + k * 10_000_000
        log.on_block(CHANNEL, (3, at, at + 20_000_000), block, fallback=False, concealed=k // 100)
    log.on_block(CHANNEL + 1, None, block, fallback=False, concealed=3)  # moved to its zone's idle channel
    receipts = log.take_due(t0 + 4 * 10**9)
    assert [(r.seq, r.final) for r in receipts] == [(0, False), (1, False), (2, False), (3, True)]
    assert {r.first_ns for r in receipts} == {t0}
    assert [r.last_ns - t0 for r in receipts] == [1_000_000_000, 2_000_000_000, 3_000_000_000, 3_500_000_000]
    assert receipts[-1].concealed == 3 and receipts[-1].level_rms_dbfs == -20.0
    assert log.take_due(t0 + 5 * 10**9) == [] and not log.open

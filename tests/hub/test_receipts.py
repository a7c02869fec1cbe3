"""Proof of play from real site agents to the hub's verdict: three sites of a zone get an address's signed frames,
one all of them, one only until it is cut off 3 s in, one none; each agent's own playout and receipt log, in
simulated playout time, signs with the key of its real enrolment credentials, and the hub's receipt logic says who
played it fully, partly (with the right span) or not at all, and exports it as CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import site_creds

from citycast.bus import jwt
from citycast.bus.authority import NatsAuthority
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Address, AddressStatus, PlayReceiptRecord, Priority, Site, Zone
from citycast.hub.receipts import ReceiptRefused, Refusal, address_report, report_csv, take_receipt
from citycast.media.audio import FRAME_NS, FRAME_SAMPLES
from citycast.media.codec import OpusEncoder
from citycast.media.keys import generate_private_key
from citycast.media.playout import ClockMap
from citycast.media.sinks import TimedSink
from citycast.protocol.frame import FrameSigner
from citycast.protocol.receipts import parse_receipt
from citycast.protocol.subjects import Subjects
from citycast.site.agent import SiteAgent, SiteConfig
from citycast.site.receipts import ReceiptSender
from citycast.site.talkback import key_from_seed

CHANNEL = 1004
DELAY_NS = 80_000_000
ADDRESS_S = 6.0
CUT_S = 3.0


def frames(signer: FrameSigner, t0: int, seconds: float) -> list[bytes]:
    encoder = OpusEncoder()
    n = round(seconds * 1e9 / FRAME_NS)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(FRAME_SAMPLES) / 48_000)).astype(np.float32)
    return [
        signer.sign(channel=CHANNEL, stream=0xC0FFEE, seq=k, ts_ns=t0 + k * FRAME_NS, packets=[encoder.encode(tone)])
        for k in range(n)
    ]


def play(agent: SiteAgent, data: list[bytes], t0: int, until_ns: int) -> None:
    """The agent takes the frames from the bus as a real one does (verify, freshness, replay window), then its
    sound card asks for 10 ms blocks from before the first play time to `until_ns`, in simulated time."""
    agent.engine.set_clock(ClockMap(0, 0, 1.0))  # clock_mode "system": local time is broadcast time
    for d in data:
        agent.on_frame_bytes(d)
    assert agent.frames == len(data), agent.rejected
    dac = t0 + DELAY_NS - 100_000_000
    while dac < until_ns:
        agent.renderer.render(480, dac)
        dac += 10_000_000


def enrolled(db: Database, zone_id: int, name: str, public: str) -> None:
    with db.session() as s:
        s.add(Site(name=name, label=name.title(), lat=24.95, lon=67.0, zone_id=zone_id, nkey_public=public,
                   enrolled_at=dt.datetime.now(dt.UTC)))  # fmt: skip


def test_a_site_cut_off_mid_address_shows_partly_with_its_span(
    sqlite_database: Database, authority: NatsAuthority, tmp_path: Path
) -> None:
    db = sqlite_database
    ingest = FrameSigner(generate_private_key())
    t0 = time.time_ns() + 500_000_000
    data = frames(ingest, t0, ADDRESS_S)
    with db.session() as s:
        zone = Zone(name="orangi", channel=7)
        s.add(zone)
        s.flush()
        zone_id = zone.id
        start = dt.datetime.fromtimestamp((t0 - 200_000_000) / 1e9, dt.UTC)
        s.add(Address(id=1, title="Flood warning", source="file:flood.wav", priority=Priority.emergency,
                      channel=CHANNEL, zone_ids=[zone_id], status=AddressStatus.ended, started_at=start,
                      ended_at=start + dt.timedelta(seconds=ADDRESS_S + 0.2 + 0.38)))  # fmt: skip
    end_ns = t0 + round(ADDRESS_S * 1e9) + DELAY_NS + 40_000_000_000  # long enough for a quiet stream to end
    sent: dict[str, list[bytes]] = {}
    for name, heard in (("orangi-1", data), ("orangi-2", data[: round(CUT_S * 50)]), ("orangi-3", [])):
        creds, public = site_creds(authority, name, tmp_path)
        key = key_from_seed(jwt.load_creds(creds).seed)
        enrolled(db, zone_id, name, public)
        cfg = SiteConfig(name=name, nats_url="nats://127.0.0.1:1", trusted_keys=[ingest.public_key],
                         channel=CHANNEL, delay_ns=DELAY_NS, clock_mode="system", max_future_ns=10**10,
                         receipt_key=key)  # fmt: skip
        agent = SiteAgent(cfg, TimedSink())
        play(agent, heard, t0, end_ns)
        sender = ReceiptSender(lambda: None, Subjects(), name, key, agent.play_log, lambda: end_ns)
        sender.collect()
        sent[name] = list(sender.pending)
        for receipt in sent[name]:
            take_receipt(db, name, receipt)
    assert sent["orangi-3"] == []
    (cut,) = [parse_receipt(r)[0] for r in sent["orangi-2"]]
    assert cut.final and cut.fallback_s == 0.0  # what followed the cut is after its last sample: the span says it
    assert abs(cut.first_ns - t0) <= FRAME_NS and abs(cut.last_ns - (t0 + round(CUT_S * 1e9))) <= FRAME_NS

    report = address_report(db, 1)
    assert report is not None
    by_site = {s["site"]: s for s in report["sites"]}
    assert {k: v["verdict"] for k, v in by_site.items()} == {
        "orangi-1": "full",
        "orangi-2": "partly",
        "orangi-3": "none",
    }
    assert report["counts"] == {"full": 1, "partly": 1, "none": 1}
    partly = by_site["orangi-2"]
    assert partly["played_s"] == pytest.approx(CUT_S, abs=0.03)
    first = dt.datetime.fromisoformat(partly["first_at"]).timestamp()
    last = dt.datetime.fromisoformat(partly["last_at"]).timestamp()
    assert first == pytest.approx(t0 / 1e9, abs=0.02) and last == pytest.approx(t0 / 1e9 + CUT_S, abs=0.02)
    assert by_site["orangi-1"]["played_s"] == pytest.approx(ADDRESS_S, abs=0.03)
    # a tone of amplitude 0.3: RMS 0.21 (-13.5 dBFS), peak 0.3 (-10.5 dBFS; Opus overshoots it a little)
    assert by_site["orangi-1"]["level_rms_dbfs"] == pytest.approx(-13.5, abs=1.0)
    assert -12.0 < by_site["orangi-1"]["level_peak_dbfs"] < -8.0

    # The export says the same, row by row.
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert [(r["site"], r["verdict"]) for r in rows] == [("orangi-1", "full"), ("orangi-2", "partly"),
                                                          ("orangi-3", "none")]  # fmt: skip
    assert float(rows[1]["played_s"]) == pytest.approx(CUT_S, abs=0.03)
    assert rows[1]["first_at"] == partly["first_at"] and rows[2]["first_at"] == ""
    assert {r["title"] for r in rows} == {"Flood warning"} and {r["address_id"] for r in rows} == {"1"}

    # A receipt the site repeats (its answer was lost) is taken again and stored once.
    assert take_receipt(db, "orangi-2", sent["orangi-2"][0])[2] is False
    with db.session() as s:
        assert s.query(PlayReceiptRecord).count() == 2


def test_a_genuine_receipt_of_one_address_cannot_be_counted_for_another(
    sqlite_database: Database, authority: NatsAuthority, tmp_path: Path
) -> None:
    """Channels are reused: a site's receipt for the first address on channel 1004 stays with it when a later
    address has the channel, and a receipt for a time no address covers is refused as such (not as forged)."""
    db = sqlite_database
    creds, public = site_creds(authority, "saddar-1", tmp_path)
    key = key_from_seed(jwt.load_creds(creds).seed)
    base = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC)
    with db.session() as s:
        s.add(Site(name="saddar-1", lat=24.85, lon=67.03, nkey_public=public, enrolled_at=base))
        for i, minute in ((1, 0), (2, 10)):
            started = base + dt.timedelta(minutes=minute)
            s.add(Address(id=i, title=f"address {i}", source="tone", priority=Priority.live, channel=CHANNEL,
                          zone_ids=[], status=AddressStatus.ended, started_at=started,
                          ended_at=started + dt.timedelta(minutes=1)))  # fmt: skip
    from citycast.protocol.receipts import PlayReceipt, sign_receipt

    def receipt(at: dt.datetime) -> bytes:
        ns = round(at.timestamp() * 1e9)
        return sign_receipt(key, PlayReceipt(site="saddar-1", channel=CHANNEL, stream=9, seq=0, final=True,
                                             first_ns=ns, last_ns=ns + 30 * 10**9, concealed=0, fallback_s=0.0,
                                             sync_error_ms=0.1, level_rms_dbfs=-20.0, level_peak_dbfs=-6.0,
                                             sent_ns=ns + 31 * 10**9))  # fmt: skip

    assert take_receipt(db, "saddar-1", receipt(base + dt.timedelta(seconds=1)))[1] == 1
    assert take_receipt(db, "saddar-1", receipt(base + dt.timedelta(minutes=10, seconds=1)))[1] == 2
    with pytest.raises(ReceiptRefused) as refused:
        take_receipt(db, "saddar-1", receipt(base + dt.timedelta(minutes=5)))
    assert refused.value.reason is Refusal.NO_ADDRESS


async def test_a_site_flooding_receipts_is_left_unanswered_beyond_its_budget_and_others_are_served(
    sqlite_database: Database, authority: NatsAuthority, tmp_path: Path
) -> None:
    """A site's stolen credentials cannot fill the database: beyond 50 at once and 1 a second, its receipts get no
    answer (a genuine site keeps them and sends them again), and another site's receipt is still taken."""
    from citycast.hub.receipts import BURST, ReceiptService
    from citycast.protocol.receipts import PlayReceipt, sign_receipt

    db = sqlite_database
    base = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC)
    keys = {}
    with db.session() as s:
        s.add(Address(id=1, title="a", source="tone", priority=Priority.live, channel=CHANNEL, zone_ids=[],
                      status=AddressStatus.ended, started_at=base, ended_at=base + dt.timedelta(hours=1)))  # fmt: skip
        for name in ("flood-1", "quiet-1"):
            creds, public = site_creds(authority, name, tmp_path)
            keys[name] = key_from_seed(jwt.load_creds(creds).seed)
            s.add(Site(name=name, lat=24.9, lon=67.0, nkey_public=public, enrolled_at=base))

    def receipt(site: str, seq: int) -> bytes:
        ns = round(base.timestamp() * 1e9) + 10**9
        return sign_receipt(keys[site], PlayReceipt(site=site, channel=CHANNEL, stream=1, seq=seq, final=False,
                                                    first_ns=ns, last_ns=ns + seq * 10**9, concealed=0,
                                                    fallback_s=0.0, sync_error_ms=0.0, level_rms_dbfs=-20.0,
                                                    level_peak_dbfs=-6.0, sent_ns=ns))  # fmt: skip

    now = [1000.0]
    service = ReceiptService(None, Subjects(), db, clock=lambda: now[0])  # type: ignore[arg-type]
    answers = [await service.handle("flood-1", receipt("flood-1", i)) for i in range(BURST + 20)]
    assert all(a is not None and a.ok for a in answers[:BURST]) and answers[BURST:] == [None] * 20
    assert service.taken == BURST and service.throttled == 20
    quiet = await service.handle("quiet-1", receipt("quiet-1", 0))
    assert quiet is not None and quiet.ok
    now[0] += 3.0  # three more a second later
    assert [await service.handle("flood-1", receipt("flood-1", 1000 + i)) is not None for i in range(4)] == [
        True, True, True, False,
    ]  # fmt: skip
    with db.session() as s:
        assert s.query(PlayReceiptRecord).count() == BURST + 1 + 3

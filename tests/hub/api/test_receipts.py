"""Proof of play over the real bus and API: the hub's receipt service on a real nats-server in operator mode, sites
with their real enrolment credentials. A forged receipt (another site's subject, another site's name, a key that
is not the site's, an altered field, junk) is refused, counted and logged, and the hub keeps taking genuine ones;
the API gives operators the verdicts, the CSV and a printable page, and nobody else."""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from pathlib import Path

import nats
import pytest
from tests.helpers import Api, connect, site_creds, wait_until

from citycast.bus import jwt
from citycast.bus.authority import site_inbox_prefix
from citycast.bus.connection import settle
from citycast.hub.db.models import Address, AddressStatus, Priority, Site, Zone
from citycast.hub.receipts import ReceiptService
from citycast.protocol.receipts import PlayReceipt, ReceiptAck, decode_ack, sign_receipt
from citycast.site.talkback import key_from_seed

CHANNEL = 1010
START = dt.datetime(2026, 12, 2, 9, 2, tzinfo=dt.UTC)  # 14:02 in Karachi


def receipt(site: str, *, seconds: float, seq: int = 0, channel: int = CHANNEL) -> PlayReceipt:
    first = round(START.timestamp() * 1e9) + 100_000_000
    return PlayReceipt(site=site, channel=channel, stream=77, seq=seq, final=True, first_ns=first,
                       last_ns=first + round(seconds * 1e9), concealed=2, fallback_s=0.0, sync_error_ms=0.3,
                       level_rms_dbfs=-19.0, level_peak_dbfs=-4.0, sent_ns=first + 31 * 10**9)  # fmt: skip


async def ask(nc: nats.aio.client.Client, subject: str, data: bytes) -> ReceiptAck:
    return decode_ack((await nc.request(subject, data, timeout=15)).data)


async def test_forged_receipts_are_refused_counted_logged_and_the_hub_keeps_serving(
    api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = api.ctx.db
    keys = {}
    with db.session() as s:
        zone = Zone(name="orangi", channel=9)
        s.add(zone)
        s.flush()
        for name in ("orangi-1", "orangi-2"):
            creds, public = site_creds(api.authority, name, tmp_path)
            keys[name] = (creds, key_from_seed(jwt.load_creds(creds).seed))
            s.add(Site(name=name, label=f"Orangi {name[-1]}", lat=24.95, lon=67.0, zone_id=zone.id,
                       nkey_public=public, enrolled_at=START))  # fmt: skip
        s.add(Address(id=1, title="Flood warning", source="file:flood.wav", priority=Priority.emergency,
                      channel=CHANNEL, zone_ids=[zone.id], status=AddressStatus.ended, started_at=START,
                      ended_at=START + dt.timedelta(seconds=32)))  # fmt: skip
    hub_nc = await nats.connect(api.nats.url, user_credentials=str(api.authority.hub_creds_path))
    service = ReceiptService(hub_nc, api.ctx.subjects, db)
    await service.start()
    api.ctx.receipts = service
    s1 = await connect(api.nats.url, keys["orangi-1"][0], site_inbox_prefix("orangi-1"))
    s2 = await connect(api.nats.url, keys["orangi-2"][0], site_inbox_prefix("orangi-2"))
    subjects = api.ctx.subjects
    key1, key2 = keys["orangi-1"][1], keys["orangi-2"][1]
    try:
        caplog.set_level(logging.INFO, logger="citycast.hub.receipts")
        # orangi-2 cannot even send on orangi-1's subject: the server refuses it, the hub never hears it
        await s2.nc.publish(subjects.receipts("orangi-1"), sign_receipt(key2, receipt("orangi-1", seconds=31)))
        await settle(s2.nc, 3)
        await wait_until(lambda: s2.violations(), timeout=5, what="a permissions violation for orangi-2")
        s2 = await connect(api.nats.url, keys["orangi-2"][0], site_inbox_prefix("orangi-2"))
        # on its own subject, a receipt in orangi-1's name (signed with its own key, or replayed from orangi-1)
        genuine1 = sign_receipt(key1, receipt("orangi-1", seconds=31))
        for forged in (sign_receipt(key2, receipt("orangi-1", seconds=31)), genuine1):
            answer = await ask(s2.nc, subjects.receipts("orangi-2"), forged)
            assert not answer.ok and "wrong_site" in (answer.error or "")
        # in its own name but signed with a key that is not its own (orangi-1's, stolen)
        answer = await ask(s2.nc, subjects.receipts("orangi-2"), sign_receipt(key1, receipt("orangi-2", seconds=31)))
        assert not answer.ok and "bad_signature" in (answer.error or "")
        # orangi-1's own receipt altered after signing: re-aimed at another channel (address), concealment hidden
        for old, new in ((b'"channel":1010', b'"channel":1011'), (b'"concealed":2', b'"concealed":0')):
            tampered = genuine1.replace(old, new, 1)
            assert tampered != genuine1
            answer = await ask(s1.nc, subjects.receipts("orangi-1"), tampered)
            assert not answer.ok and "bad_signature" in (answer.error or "")
        answer = await ask(s1.nc, subjects.receipts("orangi-1"), b"\x00junk" * 20)
        assert not answer.ok and "malformed" in (answer.error or "")
        assert service.refused == {"wrong_site": 2, "bad_signature": 3, "malformed": 1}
        assert service.forged == 6 and service.taken == 0
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
        assert len(warnings) == 6

        # ... and the hub keeps serving: the genuine receipts are taken (a repeat stored once)
        assert (await ask(s1.nc, subjects.receipts("orangi-1"), genuine1)).ok
        assert (await ask(s1.nc, subjects.receipts("orangi-1"), genuine1)).ok
        genuine2 = sign_receipt(key2, receipt("orangi-2", seconds=12.5))
        assert (await ask(s2.nc, subjects.receipts("orangi-2"), genuine2)).ok
        assert service.taken == 2 and not s1.violations() and not s2.violations()

        operator = await api.as_role("operator")
        r = await operator.get("/api/receipts/1")
        assert r.status_code == 200, r.text
        report = r.json()
        assert {x["site"]: x["verdict"] for x in report["sites"]} == {"orangi-1": "full", "orangi-2": "partly"}
        assert report["sites"][1]["played_s"] == 12.5 and report["sites"][1]["receipts"] == 1
        r = await operator.get("/api/receipts/refused")
        refused = {"wrong_site": 2, "bad_signature": 3, "malformed": 1}
        assert r.json() == {"taken": 2, "forged": 6, "refused": refused, "throttled": 0}
        r = await operator.get("/api/receipts/1/csv")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert "proof-of-play-1.csv" in r.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert [(x["site"], x["label"], x["zone"], x["verdict"], x["played_s"], x["concealed"]) for x in rows] == [
            ("orangi-1", "Orangi 1", "orangi", "full", "31.0", "2"),
            ("orangi-2", "Orangi 2", "orangi", "partly", "12.5", "2"),
        ]
        assert rows[1]["first_at"] == "2026-12-02T09:02:00.100000+00:00"
        assert rows[1]["last_at"] == "2026-12-02T09:02:12.600000+00:00"
        page = await operator.get("/api/receipts/1/print")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "Proof of play: Flood warning" in page.text and "<td>orangi-2</td>" in page.text
        assert (await operator.get("/api/receipts")).json()[0]["counts"] == {"full": 1, "partly": 1, "none": 0}
        viewer = await api.as_role("viewer")
        for path in ("/api/receipts", "/api/receipts/1", "/api/receipts/1/csv", "/api/receipts/1/print"):
            assert (await viewer.get(path)).status_code == 403
            assert (await api.client().get(path)).status_code == 401
        assert (await operator.get("/api/receipts/99")).status_code == 404
    finally:
        for c in (s1, s2):
            await c.nc.close()
        await service.stop()
        await hub_nc.close()

"""CAP alerts into addresses on a real address manager, database and NATS: the sites inside the areas play it
(and only they), at emergency priority; an update moves it, a cancel ends it and never re-announces; duplicates,
expired, malformed and badly signed messages play nothing; every message is audited and stored."""

from __future__ import annotations

import datetime as dt
import io
import threading
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from sqlalchemy import select
from tests.helpers import wait_until

from citycast.hub.addresses import NO_CHANNEL
from citycast.hub.db.models import Address, AuditEntry, CapAlert, Priority

FLOOD = ("alerts@ndma.gov.pk", "PK-NDMA-2026-12-02-0142")


def _rows(rig) -> list[CapAlert]:  # type: ignore[no-untyped-def]
    with rig.db.session() as s:
        rows = list(s.scalars(select(CapAlert).order_by(CapAlert.id)))
        s.expunge_all()
        return rows


def _actions(rig) -> list[str]:  # type: ignore[no-untyped-def]
    with rig.db.session() as s:
        return [a for a in s.scalars(select(AuditEntry.action).order_by(AuditEntry.id)) if a.startswith("cap.")]


def _address(rig, address_id: int) -> Address:  # type: ignore[no-untyped-def]
    with rig.db.session() as s:
        row = s.get(Address, address_id)
        assert row is not None
        s.expunge(row)
        return row


async def test_alert_update_cancel_and_duplicates(cap_rig) -> None:  # type: ignore[no-untyped-def]
    rig = cap_rig
    first = await rig.service.receive(rig.fixture("flood_alert.xml"), "https://feed-a.example/cap")
    assert first.outcome == "on_air", first.detail
    assert first.sites == ["s1", "s3"]
    on_air = rig.manager.get(first.address_id)
    assert on_air is not None and on_air.priority is Priority.emergency
    ch = on_air.channel
    # The polygon holds s1, the circle s3: s2 shares s1's zone but lies outside, so it keeps its zone's channel.
    assert await rig.channels() == {"s1": ch, "s2": 1, "s3": ch, "s4": NO_CHANNEL}

    # The same alert again, from another feed or an API key: ignored.
    again = await rig.service.receive(rig.fixture("flood_alert.xml"), "https://feed-b.example/cap")
    assert again.outcome == "duplicate"
    assert [a["id"] for a in rig.manager.live()] == [first.address_id]

    update = await rig.service.receive(rig.fixture("flood_update.xml"), "https://feed-a.example/cap")
    assert update.outcome == "updated", update.detail
    assert update.stopped == [first.address_id] and update.sites == ["s2"]
    moved = rig.manager.get(update.address_id)
    assert moved is not None and moved.priority is Priority.live  # Severe / Expected
    assert await rig.channels() == {"s1": 1, "s2": moved.channel, "s3": 2, "s4": NO_CHANNEL}
    assert _address(rig, first.address_id).end_reason.startswith("CAP Update")

    cancel = await rig.service.receive(rig.fixture("flood_cancel.xml"), "https://feed-b.example/cap")
    assert cancel.outcome == "cancelled" and cancel.stopped == [update.address_id]
    assert rig.manager.live() == [] and cancel.address_id is None  # a Cancel says nothing
    assert await rig.channels() == {"s1": 1, "s2": 1, "s3": 2, "s4": NO_CHANNEL}
    # The first alert arriving late from a slow feed is still a duplicate: nothing is re-announced.
    late = await rig.service.receive(rig.fixture("flood_alert.xml"), "https://slow-feed.example/cap")
    assert late.outcome == "duplicate" and rig.manager.live() == []

    rows = _rows(rig)
    assert [(r.msg_type, r.outcome) for r in rows] == [
        ("Alert", "on_air"),
        ("Update", "updated"),
        ("Cancel", "cancelled"),
    ]
    assert rows[0].sites == ["s1", "s3"] and rows[0].area is not None and rows[0].area["type"] == "MultiPolygon"
    assert rows[2].references == [",".join(FLOOD), "alerts@ndma.gov.pk,PK-NDMA-2026-12-02-0143"]
    assert _actions(rig) == ["cap.on_air", "cap.duplicate", "cap.updated", "cap.cancelled", "cap.duplicate"]


async def test_a_cancel_before_its_alert_means_it_is_never_played(cap_rig) -> None:  # type: ignore[no-untyped-def]
    rig = cap_rig
    assert (await rig.service.receive(rig.fixture("flood_cancel.xml"), "feed")).outcome == "cancelled"
    out = await rig.service.receive(rig.fixture("flood_alert.xml"), "feed")
    assert out.outcome == "cancelled" and out.address_id is None
    assert rig.manager.live() == []


@pytest.mark.parametrize(
    ("fixture", "outcome", "reason"),
    [
        ("heat_expired.xml", "expired", "expired at 2020-06-20"),
        ("malformed_missing_status.xml", "refused", "not valid CAP 1.2"),
        ("flat_polygon.xml", "refused", "encloses no area"),
    ],
)
async def test_nothing_is_played_for_an_expired_or_broken_message(cap_rig, fixture, outcome, reason) -> None:  # type: ignore[no-untyped-def]
    rig = cap_rig
    out = await rig.service.receive(rig.fixture(fixture), "feed")
    assert out.outcome == outcome and reason in out.detail
    assert rig.manager.live() == []
    with rig.db.session() as s:
        assert s.scalar(select(Address.id)) is None
    assert [r.outcome for r in _rows(rig)] == [outcome]
    assert _actions(rig) == [f"cap.{outcome}"]
    # The service carries on: the next good alert goes out.
    assert (await rig.service.receive(rig.fixture("flood_alert.xml"), "feed")).outcome == "on_air"


async def test_a_repaired_polygon_reaches_both_lobes(cap_rig) -> None:  # type: ignore[no-untyped-def]
    out = await cap_rig.service.receive(cap_rig.fixture("bowtie_unclosed.xml"), "feed")
    assert out.outcome == "on_air" and out.sites == ["s1", "s2"]
    assert "not closed" in out.detail and "crossed itself" in out.detail


async def test_status_other_than_actual_is_recorded_not_played(cap_rig) -> None:  # type: ignore[no-untyped-def]
    data = cap_rig.fixture("flood_alert.xml").replace(b"<status>Actual", b"<status>Exercise")
    out = await cap_rig.service.receive(data, "feed")
    assert out.outcome == "not_actual" and cap_rig.manager.live() == []


async def test_expires_ends_the_address(cap_rig) -> None:  # type: ignore[no-untyped-def]
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).astimezone(dt.timezone(dt.timedelta(hours=5)))
    data = cap_rig.fixture("flood_alert.xml").replace(
        b"2099-12-02T20:00:00+05:00", soon.strftime("%Y-%m-%dT%H:%M:%S+05:00").encode()
    )
    cap_rig.configure(repeats=10)  # longer than it may last
    out = await cap_rig.service.receive(data, "feed")
    assert out.outcome == "on_air"
    await wait_until(lambda: cap_rig.manager.get(out.address_id) is None, "the address to end at expires", timeout=10)
    await wait_until(lambda: _address(cap_rig, out.address_id).ended_at is not None, "its row to end")
    assert _address(cap_rig, out.address_id).end_reason == "the CAP alert expired"


async def test_signatures(cap_rig, ndma, stranger) -> None:  # type: ignore[no-untyped-def]
    rig = cap_rig
    rig.configure(authority_certs=[ndma.cert_pem], require_signature=True)
    unsigned = await rig.service.receive(rig.fixture("bowtie_unclosed.xml"), "feed")
    assert unsigned.outcome == "refused" and "require a signature" in unsigned.detail

    signed = ndma.sign(rig.fixture("flood_alert.xml"))
    tampered = signed.replace(b"Flood warning for the Lyari river", b"All clear, go back home")
    forged = stranger.sign(rig.fixture("flood_update.xml"))
    for data, who in ((tampered, "tampered"), (forged, "a stranger's key")):
        out = await rig.service.receive(data, "feed")
        assert out.outcome == "refused" and "signature does not verify" in out.detail, who
    assert rig.manager.live() == []

    good = await rig.service.receive(signed, "feed")
    assert good.outcome == "on_air", good.detail
    assert [(r.outcome, r.signed) for r in _rows(rig)][-1] == ("on_air", True)


def _wav(seconds: float) -> bytes:
    t = np.arange(int(48_000 * seconds)) / 48_000
    pcm = (0.3 * np.sin(2 * np.pi * 660 * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


@pytest.fixture
def media_server() -> Iterator[tuple[str, list[str]]]:
    bodies = {"/announcement.wav": _wav(0.5), "/not-audio.wav": b"<html>this is a web page</html>" * 20}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = bodies.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


async def test_resource_audio_is_played_and_a_bad_one_falls_back_to_speech(cap_rig, media_server) -> None:  # type: ignore[no-untyped-def]
    base, hits = media_server
    data = cap_rig.fixture("siren_resource.xml").replace(b"{BASE}", base.encode())
    out = await cap_rig.service.receive(data, "feed")
    assert out.outcome == "on_air" and out.detail == "" and hits == ["/announcement.wav"]
    bad = data.replace(b"announcement.wav", b"not-audio.wav").replace(b"-0160", b"-0161")
    out2 = await cap_rig.service.receive(bad, "feed")
    assert out2.outcome == "on_air"
    assert "not audio" in out2.detail and "its text is spoken instead" in out2.detail

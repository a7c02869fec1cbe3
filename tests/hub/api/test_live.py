"""Addresses on air through the API (the real AddressManager on a real nats-server), recordings served with
Range, settings with retention, alerts, the fleet summary, /metrics, and the console's WebSocket feed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import websockets
from sqlalchemy import select
from tests.helpers import Api, telemetry, wait_until

from citycast.hub.db.models import Address, Alert, Recording, Role, Site

SPEECH = Path(__file__).resolve().parents[3] / "src" / "citycast" / "assets" / "speech.opus"


async def test_start_list_and_stop_an_address(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    zone = (await admin.post("/api/zones", json={"name": "saddar", "channel": 5})).json()
    await admin.post("/api/sites", json={"name": "s1", "lat": 1, "lon": 1, "zone_id": zone["id"]})
    sources = (await (await api.as_role(Role.viewer)).get("/api/sources")).json()
    assert {"marker", "tone", "line-in"} <= {s["id"] for s in sources}

    speaker = await api.as_role(Role.speaker)
    body = {"title": "Test", "source": "tone", "zone_ids": [zone["id"]], "priority": "live", "duration_s": 30}
    assert (await speaker.post("/api/addresses", json=body)).status_code == 403

    op = await api.as_role(Role.operator)
    r = await op.post("/api/addresses", json=body)
    assert r.status_code == 201, r.text
    address = r.json()
    assert address["status"] == "live" and address["speaker"] == "operator" and address["zone_ids"] == [zone["id"]]
    desired = await api.ctx.addresses.desired.get("s1")  # type: ignore[attr-defined]
    assert desired is not None and desired.channel == address["channel"]  # the site follows the address
    fleet = (await op.get("/api/fleet")).json()
    assert [a["id"] for a in fleet["on_air"]] == [address["id"]] and fleet["sites_total"] == 1

    r = await op.post(f"/api/addresses/{address['id']}/stop")
    assert r.status_code == 200
    stopped = r.json()
    assert stopped["status"] == "ended" and stopped["end_reason"] == "stopped by operator" and stopped["ended_at"]
    listed = (await op.get("/api/addresses?limit=10")).json()
    assert [a["id"] for a in listed] == [address["id"]]
    assert (await op.post("/api/addresses/999/stop")).status_code == 404
    desired = await api.ctx.addresses.desired.get("s1")  # type: ignore[attr-defined]
    assert desired is not None and desired.channel == 5  # back on the zone's own channel

    bad = await op.post("/api/addresses", json=body | {"source": "file:../../etc/passwd"})
    assert bad.status_code == 422 and "file" in bad.json()["detail"]
    nozone = await op.post("/api/addresses", json=body | {"zone_ids": [999]})
    assert nozone.status_code == 422 and "no such zone" in nozone.json()["detail"]
    badprio = await op.post("/api/addresses", json=body | {"priority": "urgent"})
    assert badprio.status_code == 422 and "priority" in badprio.json()["detail"]
    actions = [a["action"] for a in (await admin.get("/api/audit")).json()]
    assert "address.start" in actions and "address.stop" in actions and "address.start_failed" in actions


def _add_recording(api: Api, *, name: str, ended_days_ago: float) -> int:
    shutil.copy(SPEECH, api.ctx.recordings_dir / name)
    now = dt.datetime.now(dt.UTC)
    with api.ctx.db.session() as s:
        a = Address(
            title=f"speech {name}",
            source="tone",
            priority="live",
            channel=1000,
            zone_ids=[],
            status="ended",
            started_at=now - dt.timedelta(days=ended_days_ago, seconds=12),
            ended_at=now - dt.timedelta(days=ended_days_ago),
        )
        s.add(a)
        s.flush()
        rec = Recording(
            address_id=a.id,
            channel=1000,
            path=name,
            started_at=a.started_at,
            ended_at=a.ended_at,
            frames=600,
            bytes=SPEECH.stat().st_size,
        )
        s.add(rec)
        s.flush()
        return int(rec.id)


async def test_recordings_list_range_and_download(api: Api) -> None:
    rec_id = _add_recording(api, name="a.ogg", ended_days_ago=0)
    viewer = await api.as_role(Role.viewer)
    listed = (await viewer.get("/api/recordings")).json()
    assert len(listed) == 1
    assert listed[0]["title"] == "speech a.ogg" and listed[0]["duration_s"] == pytest.approx(12.0, abs=0.01)
    data = SPEECH.read_bytes()

    full = await viewer.get(f"/api/recordings/{rec_id}/audio")
    assert full.status_code == 200 and full.headers["content-type"] == "audio/ogg" and full.content == data
    assert full.headers["content-disposition"].startswith("inline")
    assert full.headers.get("accept-ranges") == "bytes"
    part = await viewer.get(f"/api/recordings/{rec_id}/audio", headers={"Range": "bytes=4-99"})
    assert part.status_code == 206 and part.content == data[4:100]
    assert part.headers["content-range"] == f"bytes 4-99/{len(data)}"
    dl = await viewer.get(f"/api/recordings/{rec_id}/audio?download=1")
    assert (
        dl.headers["content-disposition"].startswith("attachment") and "recording-" in dl.headers["content-disposition"]
    )
    assert (await viewer.get("/api/recordings/999/audio")).status_code == 404
    assert (await api.client().get(f"/api/recordings/{rec_id}/audio")).status_code == 401

    # A row whose path leaves the recordings directory is never served.
    with api.ctx.db.session() as s:
        s.get(Recording, rec_id).path = "../conftest.py"  # type: ignore[union-attr]
    assert (await viewer.get(f"/api/recordings/{rec_id}/audio")).status_code == 404


async def test_settings_retention_applies_at_once(api: Api) -> None:
    _add_recording(api, name="old.ogg", ended_days_ago=40)
    _add_recording(api, name="new.ogg", ended_days_ago=1)
    viewer = await api.as_role(Role.viewer)
    assert (await viewer.get("/api/settings")).json() == {"retention_days": 0, "tile_url": ""}
    assert (await viewer.put("/api/settings", json={"retention_days": 30})).status_code == 403
    admin = await api.as_role(Role.admin)
    assert (await admin.put("/api/settings", json={"retention_days": -1})).status_code == 422
    r = await admin.put("/api/settings", json={"retention_days": 30})
    assert r.status_code == 200 and r.json() == {"retention_days": 30, "tile_url": ""}
    assert (await viewer.get("/api/settings")).json() == {"retention_days": 30, "tile_url": ""}
    assert not (api.ctx.recordings_dir / "old.ogg").exists() and (api.ctx.recordings_dir / "new.ogg").exists()
    assert [x["title"] for x in (await viewer.get("/api/recordings")).json()] == ["speech new.ogg"]
    audit = (await admin.get("/api/audit?limit=1")).json()[0]
    assert audit["action"] == "settings.update" and audit["detail"]["recordings_deleted"] == 1


async def test_alerts_fleet_and_metrics(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    await admin.post("/api/sites", json={"name": "s1", "lat": 1, "lon": 1})
    await admin.post("/api/sites", json={"name": "s2", "lat": 1, "lon": 1})
    now = dt.datetime.now(dt.UTC)
    with api.ctx.db.session() as s:
        site_id = s.scalar(select(Site.id).where(Site.name == "s1"))
        s.add(Alert(site_id=site_id, kind="offline", severity="warning", message="s1 offline", raised_at=now))
        s.add(
            Alert(
                site_id=site_id, kind="underruns", message="old", raised_at=now - dt.timedelta(hours=1), cleared_at=now
            )
        )
    viewer = await api.as_role(Role.viewer)
    active = (await viewer.get("/api/alerts?active=true")).json()
    assert [(a["site"], a["kind"], a["cleared_at"]) for a in active] == [("s1", "offline", None)]
    assert len((await viewer.get("/api/alerts")).json()) == 2
    assert [a["kind"] for a in (await viewer.get("/api/alerts?active=false")).json()] == ["underruns"]

    api.ctx.fleet.on_telemetry(telemetry("s1", state="playing", channel=3), 10**18)
    fleet = (await viewer.get("/api/fleet")).json()
    assert fleet["sites_total"] == 2 and fleet["by_state"]["playing"] == 1 and fleet["by_state"]["offline"] == 1

    m = await viewer.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert "citycast" in m.text and 'state="playing"' in m.text


async def _recv(ws: Any) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), 5)))


async def test_websocket_snapshot_then_events(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    await admin.post("/api/sites", json={"name": "s1", "lat": 1, "lon": 1})
    token = api.tokens["admin"]
    async with websockets.connect(api.ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        snap = await _recv(ws)
        assert snap["type"] == "snapshot" and [s["name"] for s in snap["sites"]] == ["s1"]
        assert snap["addresses"] == [] and snap["alerts"] == []
        api.ctx.events.publish({"type": "alert", "alert": {"site": "s1", "kind": "offline", "at": dt.datetime.now()}})
        event = await _recv(ws)
        assert event["type"] == "alert" and event["alert"]["kind"] == "offline"
        api.ctx.events.publish({"type": "resync"})  # a slow client gets a fresh snapshot instead of a backlog
        assert (await _recv(ws))["type"] == "snapshot"
    await wait_until(lambda: api.ctx.events.subscribers == 0, "the server to drop the closed socket's subscription")

    # The session cookie works too, from a page of the hub's own origin.
    async with websockets.connect(
        api.ws_url, origin=api.base_url, additional_headers={"Cookie": f"citycast_session={token}"}
    ) as ws:
        assert (await _recv(ws))["type"] == "snapshot"


async def test_websocket_without_login_is_closed_with_policy_violation(api: Api) -> None:
    for headers in ({"Authorization": "Bearer nonsense"}, {"Cookie": "citycast_session=nonsense"}):
        async with websockets.connect(api.ws_url, origin=api.base_url, additional_headers=headers) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_console_is_served_at_the_root_beside_the_api(api: Api) -> None:
    c = api.client()
    index = await c.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert (await (await api.as_role(Role.viewer)).get("/openapi.json")).json()["info"]["title"] == "citycast hub"
    assert (await c.get("/api/health")).json() == {"ok": True}

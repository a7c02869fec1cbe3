"""Zones and sites over HTTP, and the enrolment round trip against a real operator-mode nats-server: create a
site, enrol it with its own key, connect to NATS with the minted JWT, revoke it, and see NATS refuse it."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import nats
import pytest
from nats.errors import NoServersError
from sqlalchemy import select
from tests.helpers import Api, telemetry, wait_until

from citycast.bus import jwt
from citycast.bus.connection import settle
from citycast.bus.jwt import KeyKind
from citycast.hub.db.models import AuditEntry, RevokedKey, Role, Site


def new_key() -> tuple[str, str]:
    seed = jwt.new_seed(KeyKind.USER)
    return seed, jwt.public_key(seed)


async def connect_as_site(api: Api, enrolled: dict[str, object], seed: str, tmp_path: Path) -> nats.NATS:
    creds = tmp_path / f"{enrolled['site']}-{seed[-6:]}.creds"
    creds.write_text(jwt.creds_text(str(enrolled["user_jwt"]), seed))
    urls = enrolled["nats_urls"]
    assert isinstance(urls, list)
    return await nats.connect(
        urls[0],
        user_credentials=str(creds),
        inbox_prefix=str(enrolled["inbox_prefix"]).encode(),
        allow_reconnect=False,
        connect_timeout=3,
    )


async def test_zone_crud_and_conflicts(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    r = await admin.post("/api/zones", json={"name": "saddar", "channel": 10, "color": "#ff0000"})
    assert r.status_code == 201
    zone = r.json()
    assert zone == {
        "id": zone["id"],
        "name": "saddar",
        "channel": 10,
        "color": "#ff0000",
        "volume": 1.0,
        "muted": False,
        "city_servers": [],
        "chime": None,
        "start_lead_ms": 0,
    }
    assert (await admin.post("/api/zones", json={"name": "saddar", "channel": 11})).status_code == 409
    taken = await admin.post("/api/zones", json={"name": "clifton", "channel": 10})
    assert taken.status_code == 409 and "channel 10" in taken.json()["detail"]
    bad = await admin.post("/api/zones", json={"name": "x", "channel": 12, "color": "red"})
    assert bad.status_code == 422 and "color" in bad.json()["detail"]

    r = await admin.patch(f"/api/zones/{zone['id']}", json={"channel": 20, "color": "#00ff00"})
    assert r.status_code == 200 and r.json()["channel"] == 20 and r.json()["color"] == "#00ff00"
    assert [z["name"] for z in (await admin.get("/api/zones")).json()] == ["saddar"]

    site = (await admin.post("/api/sites", json={"name": "s1", "lat": 24.8, "lon": 67.0, "zone_id": zone["id"]})).json()
    assert site["site"]["zone"] == "saddar"
    assert (await admin.delete(f"/api/zones/{zone['id']}")).status_code == 200
    assert (await admin.delete(f"/api/zones/{zone['id']}")).status_code == 404
    sites = (await admin.get("/api/sites")).json()
    assert sites[0]["zone_id"] is None and sites[0]["zone"] is None  # the site stays, outside every zone


async def test_a_zone_keeps_its_volume_and_mute_and_joining_sites_take_them(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    op = await api.as_role(Role.operator)
    quiet = (await admin.post("/api/zones", json={"name": "quiet", "channel": 30})).json()
    loud = (await admin.post("/api/zones", json={"name": "loud", "channel": 31})).json()
    first = await admin.post("/api/sites", json={"name": "q1", "lat": 24.8, "lon": 67.0, "zone_id": quiet["id"]})
    r = await op.post(f"/api/zones/{quiet['id']}/control", json={"volume": 0.4, "muted": True})
    assert r.status_code == 200 and r.json()["sites"] == ["q1"]
    r = await op.post(f"/api/zones/{loud['id']}/control", json={"volume": 1.8})
    assert r.json()["sites"] == []  # an empty zone still keeps what was set
    listed = {z["name"]: z for z in (await (await api.as_role(Role.viewer)).get("/api/zones")).json()}
    assert (listed["quiet"]["volume"], listed["quiet"]["muted"]) == (0.4, True)
    assert (listed["loud"]["volume"], listed["loud"]["muted"]) == (1.8, False)
    # A new site in the muted zone is muted from the start; one moved to the loud zone takes its volume.
    created = await admin.post("/api/sites", json={"name": "q2", "lat": 24.8, "lon": 67.0, "zone_id": quiet["id"]})
    assert (created.json()["site"]["volume"], created.json()["site"]["muted"]) == (0.4, True)
    desired = await api.ctx.addresses.desired.get("q2")  # type: ignore[attr-defined]
    assert desired is not None and desired.muted is True and desired.volume == 0.4
    moved = await admin.patch(f"/api/sites/{first.json()['site']['id']}", json={"zone_id": loud["id"]})
    assert (moved.json()["volume"], moved.json()["muted"]) == (1.8, False)
    desired = await api.ctx.addresses.desired.get("q1")  # type: ignore[attr-defined]
    assert desired is not None and desired.muted is False and desired.volume == 1.8
    # A change that leaves the zone alone keeps the site's own volume.
    await op.post(f"/api/sites/{first.json()['site']['id']}/control", json={"volume": 0.9})
    kept = await admin.patch(f"/api/sites/{first.json()['site']['id']}", json={"label": "renamed"})
    assert kept.json()["volume"] == 0.9


async def test_site_crud_control_and_live_state(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    zone = (await admin.post("/api/zones", json={"name": "saddar", "channel": 7})).json()
    r = await admin.post(
        "/api/sites",
        json={"name": "empress-1", "label": "Empress Market", "lat": 24.86, "lon": 67.03, "zone_id": zone["id"]},
    )
    assert r.status_code == 201
    created = r.json()
    assert created["enrol_token"] and created["enrol_token"] in created["enrol_command"]
    site = created["site"]
    assert site["state"] == "offline" and site["enrolled"] is False and site["volume"] == 1.0
    # Only the token's hash is stored.
    with api.ctx.db.session() as s:
        row = s.scalars(select(Site)).one()
        assert row.enrol_token_hash is not None and row.enrol_token_hash != created["enrol_token"]
        assert len(row.enrol_token_hash) == 64

    assert (await admin.post("/api/sites", json={"name": "empress-1", "lat": 1, "lon": 1})).status_code == 409
    for bad in (
        {"name": "Bad Name", "lat": 1, "lon": 1},
        {"name": "a.b", "lat": 1, "lon": 1},
        {"name": "ok", "lat": 91, "lon": 1},
        {"name": "ok", "lat": 1, "lon": 1, "zone_id": 999},
        {"name": "ok", "lat": 1, "lon": 1, "extra": True},
    ):
        r = await admin.post("/api/sites", json=bad)
        assert r.status_code == 422, bad
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]

    # Telemetry reaches the fleet; the site list shows it beside the DB record.
    api.ctx.fleet.on_telemetry(
        telemetry("empress-1", state="playing", channel=7, sync_error_ms=0.4, buffer_ms=90.0), 1_000_000_000_000
    )
    listed = (await (await api.as_role(Role.viewer)).get("/api/sites")).json()
    assert listed[0]["state"] == "playing" and listed[0]["channel"] == 7 and listed[0]["sync_error_ms"] == 0.4
    assert listed[0]["label"] == "Empress Market" and listed[0]["zone"] == "saddar"
    assert listed[0]["sink_error"] is None
    api.ctx.fleet.on_telemetry(
        telemetry("empress-1", state="playing", channel=7, sink_error="cannot open 'hw:1'"), 1_001_000_000_000
    )
    listed = (await (await api.as_role(Role.viewer)).get("/api/sites")).json()
    assert listed[0]["state"] == "fault" and listed[0]["sink_error"] == "cannot open 'hw:1'"
    api.ctx.fleet.on_telemetry(
        telemetry("empress-1", state="playing", channel=7, sync_error_ms=0.4, buffer_ms=90.0), 1_002_000_000_000
    )

    op = await api.as_role(Role.operator)
    r = await op.post(f"/api/sites/{site['id']}/control", json={"volume": 0.25, "muted": True})
    assert r.status_code == 200 and r.json()["volume"] == 0.25 and r.json()["muted"] is True
    desired = await api.ctx.addresses.desired.get("empress-1")  # type: ignore[attr-defined]
    assert desired is not None and desired.volume == 0.25 and desired.muted is True and desired.channel == 7
    assert (await op.post(f"/api/sites/{site['id']}/control", json={"volume": 3})).status_code == 422
    assert (await op.post(f"/api/sites/{site['id']}/control", json={})).status_code == 422

    r = await op.post(f"/api/zones/{zone['id']}/control", json={"volume": 1.5, "muted": False})
    assert r.status_code == 200 and r.json()["sites"] == ["empress-1"]
    desired = await api.ctx.addresses.desired.get("empress-1")  # type: ignore[attr-defined]
    assert desired is not None and desired.volume == 1.5 and desired.muted is False

    r = await admin.patch(f"/api/sites/{site['id']}", json={"label": "moved", "zone_id": None})
    assert r.status_code == 200 and r.json()["label"] == "moved" and r.json()["zone_id"] is None
    assert (await admin.patch(f"/api/sites/{site['id']}", json={"lat": None})).status_code == 422
    assert (await admin.patch("/api/sites/999", json={"label": "x"})).status_code == 404
    assert (await admin.delete(f"/api/sites/{site['id']}")).status_code == 200
    assert (await admin.get("/api/sites")).json() == []
    assert "empress-1" not in api.ctx.fleet


async def test_enrol_connect_reuse_revoke_and_reenrol(api: Api, tmp_path: Path) -> None:
    admin = await api.as_role(Role.admin)
    created = (await admin.post("/api/sites", json={"name": "site-a", "lat": 24.9, "lon": 67.1})).json()
    token = created["enrol_token"]
    site_id = created["site"]["id"]
    anon = api.client()

    bad_key = await anon.post("/api/enrol", json={"token": token, "nkey_public": "not-a-key"})
    assert bad_key.status_code == 400 and "nkeys user public key" in bad_key.json()["detail"]
    seed_acct = jwt.new_seed(KeyKind.ACCOUNT)  # a valid nkey, of the wrong kind
    wrong_kind = await anon.post("/api/enrol", json={"token": token, "nkey_public": jwt.public_key(seed_acct)})
    assert wrong_kind.status_code == 400

    seed, pub = new_key()
    r = await anon.post("/api/enrol", json={"token": token, "nkey_public": pub})
    assert r.status_code == 200, r.text
    enrolled = r.json()
    assert enrolled["site"] == "site-a" and enrolled["prefix"] == "citycast"
    assert enrolled["nats_urls"] == [api.nats.url] and enrolled["trusted_keys"] == ["00" * 32]
    assert enrolled["time_subject"] == "citycast.time" and enrolled["delay_ms"] == 80.0
    assert jwt.decode(enrolled["user_jwt"])["sub"] == pub

    again = await anon.post("/api/enrol", json={"token": token, "nkey_public": new_key()[1]})
    assert again.status_code == 401 and "used or expired" in again.json()["detail"]

    # The minted credentials really work: the site publishes its telemetry on the live server.
    nc = await connect_as_site(api, enrolled, seed, tmp_path)
    hub = await nats.connect(api.nats.url, user_credentials=str(api.authority.hub_creds_path))
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        await got.put(msg.data)

    await hub.subscribe("citycast.telemetry.site-a", cb=on_msg)
    await settle(hub)
    await nc.publish("citycast.telemetry.site-a", b"hello")
    await settle(nc)
    assert await asyncio.wait_for(got.get(), 5) == b"hello"
    site = (await admin.get("/api/sites")).json()[0]
    assert site["enrolled"] is True and site["revoked"] is False

    r = await admin.post(f"/api/sites/{site_id}/revoke")
    assert r.status_code == 200 and r.json()["nkey_public"] == pub and r.json()["site"]["revoked"] is True
    await wait_until(lambda: nc.is_closed or not nc.is_connected, "the server to drop the live connection", timeout=5)
    assert not nc.is_connected
    with pytest.raises((NoServersError, OSError, nats.errors.Error)):
        await connect_as_site(api, enrolled, seed, tmp_path)
    with api.ctx.db.session() as s:
        assert s.scalar(select(RevokedKey.nkey_public)) == pub
        actions = [a.action for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert actions.count("site.enrol") == 1 and "site.revoke" in actions and "site.enrol_failed" in actions

    # Revoked: no token works until an admin issues a new one, and the revoked key never again.
    assert (await anon.post("/api/enrol", json={"token": token, "nkey_public": new_key()[1]})).status_code == 401
    fresh = (await admin.post(f"/api/sites/{site_id}/token")).json()["enrol_token"]
    old = await anon.post("/api/enrol", json={"token": fresh, "nkey_public": pub})
    assert old.status_code == 409 and "revoked" in old.json()["detail"]
    seed2, pub2 = new_key()
    r = await anon.post("/api/enrol", json={"token": fresh, "nkey_public": pub2})
    assert r.status_code == 200
    nc2 = await connect_as_site(api, r.json(), seed2, tmp_path)
    assert nc2.is_connected
    await nc2.close()
    await hub.close()
    site = (await admin.get("/api/sites")).json()[0]
    assert site["enrolled"] is True and site["revoked"] is False


async def test_expired_token_is_refused(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    token = (await admin.post("/api/sites", json={"name": "late", "lat": 1, "lon": 1})).json()["enrol_token"]
    with api.ctx.db.session() as s:
        s.scalars(select(Site)).one().enrol_expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    r = await api.client().post("/api/enrol", json={"token": token, "nkey_public": new_key()[1]})
    assert r.status_code == 401


async def test_enrol_attempts_are_rate_limited(api: Api) -> None:
    anon = api.client()
    for i in range(10):
        r = await anon.post("/api/enrol", json={"token": f"guess-{i}", "nkey_public": new_key()[1]})
        assert r.status_code == 401
    r = await anon.post("/api/enrol", json={"token": "guess", "nkey_public": new_key()[1]})
    assert r.status_code == 429


async def test_the_site_agents_own_enrolment_works_against_the_api(api: Api, tmp_path: Path) -> None:
    from citycast.site.enrol import enrol

    admin = await api.as_role(Role.admin)
    created = (await admin.post("/api/sites", json={"name": "box-7", "lat": 24.9, "lon": 67.1})).json()
    assert created["enrol_command"].startswith("citycast site --enrol http://127.0.0.1:")
    # This fixture's bus is plaintext (no hub CA, so no pin in the token): the --insecure contract.
    creds = await enrol(api.base_url, created["enrol_token"], tmp_path / "site.json", insecure=True)
    assert creds.site == "box-7"
    site = (await admin.get("/api/sites")).json()[0]
    assert site["enrolled"] is True

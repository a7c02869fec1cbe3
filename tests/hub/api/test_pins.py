"""Speaker PINs over HTTP: operators only, a generated PIN shown exactly once, never a hash, every write audited,
clear 422s; and what the API writes is what the telephone's PinStore accepts."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.helpers import Api, serve

from citycast.hub.api import create_app
from citycast.hub.api import pins as pins_api
from citycast.hub.auth.passwords import hash_password
from citycast.hub.db.models import Priority, Role, SpeakerPin, User
from citycast.hub.telephone.pins import PinGate, PinGuard, PinStore


@pytest.fixture
def guard() -> PinGuard:
    """The PIN guard the served app's routes use (the runtime gives the app the hub's, shared with the
    telephone and go-live)."""
    return PinGuard()


@pytest.fixture
async def pins(api: Api, guard: PinGuard) -> AsyncIterator[Api]:
    """The fixture's hub, served once more from an app that surely has the PIN routes (until `create_app`
    registers them itself, then this is the same app)."""
    app = create_app(api.ctx, static_dir=None)
    app.state.pin_guard = guard
    if not any(getattr(r, "path", "") == "/api/pins" for r in app.routes):
        app.include_router(pins_api.router)
    server, task, base_url = await serve(app)
    served = Api(ctx=api.ctx, base_url=base_url, nats=api.nats, authority=api.authority)
    try:
        yield served
    finally:
        await served.close()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _verify(api: Api, pin: str) -> Any:
    return await PinStore(api.ctx.db).verify(pin, _now())


async def test_only_operators_see_and_manage_pins(pins: Api) -> None:
    body = {"label": "Imam Saddar mosque", "pin": "482913"}
    assert (await pins.client().get("/api/pins")).status_code == 401
    for role in (Role.viewer, Role.speaker):
        c = await pins.as_role(role)
        assert (await c.get("/api/pins")).status_code == 403
        assert (await c.post("/api/pins", json=body)).status_code == 403
    admin = await pins.as_role(Role.admin)
    r = await admin.post("/api/pins", json=body)
    assert r.status_code == 201, r.text
    pin_id = r.json()["id"]
    for role in (Role.viewer, Role.speaker):
        c = await pins.as_role(role)
        assert (await c.patch(f"/api/pins/{pin_id}", json={"enabled": False})).status_code == 403
        assert (await c.delete(f"/api/pins/{pin_id}")).status_code == 403
    assert (await (await pins.as_role(Role.operator)).get("/api/pins")).status_code == 200


async def test_generated_pin_is_shown_once_and_works(pins: Api) -> None:
    op = await pins.as_role(Role.operator)
    zone = (await (await pins.as_role(Role.admin)).post("/api/zones", json={"name": "saddar", "channel": 3})).json()
    r = await op.post("/api/pins", json={"label": "Imam Saddar mosque", "zone_ids": [zone["id"]], "priority": "live"})
    assert r.status_code == 201, r.text
    created = r.json()
    pin = created["pin"]
    assert re.fullmatch(r"[0-9]{6}", pin)
    assert created["pin_hint"] == pin[-2:] and created["enabled"] and created["valid_now"]
    assert "pin_hash" not in created

    listed = (await op.get("/api/pins")).text
    assert pin not in listed and "argon2" not in listed
    (row,) = json.loads(listed)
    assert "pin" not in row and "pin_hash" not in row and row["pin_hint"] == pin[-2:]

    grant = await _verify(pins, pin)
    assert grant is not None and grant.pin_id == created["id"] and grant.zone_ids == (zone["id"],)
    assert grant.label == "Imam Saddar mosque"

    # A PIN the operator chose is not echoed back.
    r = await op.post("/api/pins", json={"label": "Frere Hall", "pin": "90210417"})
    assert r.status_code == 201 and r.json()["pin"] is None and r.json()["pin_hint"] == "17"
    assert "90210417" not in r.text

    audit = (await (await pins.as_role(Role.admin)).get("/api/audit")).json()
    creates = [a for a in audit if a["action"] == "pin.create"]
    assert len(creates) == 2 and {a["username"] for a in creates} == {"operator"}
    assert pin not in json.dumps(audit) and "90210417" not in json.dumps(audit)


async def test_patch_disable_validity_and_delete(pins: Api) -> None:
    op = await pins.as_role(Role.operator)
    pin_id = (await op.post("/api/pins", json={"label": "Empress Market", "pin": "739104"})).json()["id"]
    assert await _verify(pins, "739104") is not None

    r = await op.patch(f"/api/pins/{pin_id}", json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["valid_now"] is False
    assert await _verify(pins, "739104") is None
    assert (await op.patch(f"/api/pins/{pin_id}", json={"enabled": True})).status_code == 200
    assert await _verify(pins, "739104") is not None

    past = (_now() - dt.timedelta(hours=1)).isoformat()
    r = await op.patch(f"/api/pins/{pin_id}", json={"valid_until": past, "priority": "emergency", "zone_ids": []})
    assert r.status_code == 200, r.text
    assert r.json()["valid_now"] is False and r.json()["priority"] == "emergency"
    assert await _verify(pins, "739104") is None
    r = await op.patch(f"/api/pins/{pin_id}", json={"valid_until": None})  # null clears it
    assert r.status_code == 200 and r.json()["valid_until"] is None
    grant = await _verify(pins, "739104")
    assert grant is not None and grant.priority == "emergency"

    r = await op.patch(f"/api/pins/{pin_id}", json={"label": None})
    assert r.status_code == 422 and "label cannot be null" in r.json()["detail"]
    assert (await op.patch("/api/pins/999999", json={"enabled": False})).status_code == 404

    assert (await op.delete(f"/api/pins/{pin_id}")).status_code == 200
    assert (await op.delete(f"/api/pins/{pin_id}")).status_code == 404
    assert await _verify(pins, "739104") is None
    audit = (await (await pins.as_role(Role.admin)).get("/api/audit")).json()
    actions = [a["action"] for a in audit if a["target"] == f"pin:{pin_id}"]
    assert actions.count("pin.update") == 4 and "pin.create" in actions and "pin.delete" in actions


async def test_bad_pins_get_clear_messages(pins: Api) -> None:
    op = await pins.as_role(Role.operator)
    for bad in ("123", "1234", "12345", "1234567890123", "12a456", "", " 123456"):
        r = await op.post("/api/pins", json={"label": "x", "pin": bad})
        assert r.status_code == 422, bad
        assert "pin: " in r.json()["detail"] and "a new PIN is 6 to 12 digits" in r.json()["detail"], r.text
        assert "too easy to guess" in r.json()["detail"]
    r = await op.post("/api/pins", json={"label": "x", "pin": 123456})
    assert r.status_code == 422  # a number is not a PIN string (leading zeros would be lost)
    assert (await op.post("/api/pins", json={"label": "first", "pin": "246810"})).status_code == 201
    r = await op.post("/api/pins", json={"label": "second", "pin": "246810"})
    assert r.status_code == 422 and r.json()["detail"] == "this PIN is already in use: choose another"

    viewer_id = (await (await pins.as_role(Role.viewer)).get("/api/me")).json()["id"]
    cases: dict[str, dict[str, Any]] = {
        "timezone": {"valid_from": "2026-01-01T10:00:00"},
        "valid_until must be after valid_from": {
            "valid_from": "2026-01-02T10:00:00+05:00",
            "valid_until": "2026-01-01T10:00:00+05:00",
        },
        "no such zone": {"zone_ids": [424242]},
        "no such user": {"user_id": 424242},
        "needs the speaker role": {"user_id": viewer_id},
        "label": {"label": ""},
        "priority": {"priority": "loudest"},
        "control characters": {"label": "Saddar\x00"},
        "out of range": {"valid_until": "9999-12-31T23:59:59-23:59"},
    }
    for needle, change in cases.items():
        r = await op.post("/api/pins", json={"label": "x", "pin": "135791"} | change)
        assert r.status_code == 422, (change, r.text)
        assert needle in r.json()["detail"], (needle, r.json())
    assert [p["label"] for p in (await op.get("/api/pins")).json()] == ["first"]  # nothing half-made


async def test_pin_for_a_speaker_user(pins: Api) -> None:
    op = await pins.as_role(Role.operator)
    with pins.ctx.db.session() as s:
        speaker_id = s.query(User.id).filter(User.username == "speaker").scalar()
    r = await op.post("/api/pins", json={"label": "the speaker", "user_id": speaker_id, "priority": "emergency"})
    assert r.status_code == 201, r.text
    grant = await _verify(pins, r.json()["pin"])
    assert grant is not None and grant.user_id == speaker_id and grant.priority == "emergency"


async def test_unreadable_bodies_do_not_break_the_server(pins: Api) -> None:
    op = await pins.as_role(Role.operator)
    r = await op.post("/api/pins", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)
    r = await op.post("/api/pins", json={"label": "x", "pin": "123456", "extra": 1})
    assert r.status_code == 422 and "extra" in r.json()["detail"]
    assert (await op.get("/api/pins")).status_code == 200


async def test_an_operator_sees_a_locked_pin_unlocks_and_rotates_it(pins: Api, guard: PinGuard) -> None:
    """The guard the telephone and go-live share locks a PIN being guessed (10 addresses, each one wrong PIN
    ending like it); the list shows it; unlock lifts it; rotate gives a new number (shown once), the old stops
    working, and no lock is left."""
    op = await pins.as_role(Role.operator)
    pin_id = (await op.post("/api/pins", json={"label": "Empress Market", "pin": "482913"})).json()["id"]
    row = (await op.get("/api/pins")).json()[0]
    assert row["locked_until"] is None and row["recent_failures"] == 0 and row["weak"] is False
    store = PinStore(pins.ctx.db)
    for i in range(10):
        r = await PinGate(store, guard, f"203.0.113.{i}").attempt(f"{i:04d}13", now_s=time.monotonic(), now=_now())
        assert r.outcome == "retry"
    row = (await op.get("/api/pins")).json()[0]
    assert row["locked_until"] is not None

    r = await op.post(f"/api/pins/{pin_id}/unlock")
    assert r.status_code == 200 and r.json()["locked_until"] is None and r.json()["recent_failures"] == 0
    r = await op.post(f"/api/pins/{pin_id}/rotate")
    assert r.status_code == 200, r.text
    new = r.json()["pin"]
    assert re.fullmatch(r"[0-9]{6}", new) and r.json()["pin_hint"] == new[-2:] and new != "482913"
    assert await _verify(pins, "482913") is None
    grant = await _verify(pins, new)
    assert grant is not None and grant.pin_id == pin_id
    assert new not in (await op.get("/api/pins")).text
    assert (await op.post("/api/pins/999999/unlock")).status_code == 404
    assert (await op.post("/api/pins/999999/rotate")).status_code == 404
    viewer = await pins.as_role(Role.viewer)
    assert (await viewer.post(f"/api/pins/{pin_id}/unlock")).status_code == 403
    audit = (await (await pins.as_role(Role.admin)).get("/api/audit")).json()
    actions = [a["action"] for a in audit if a["target"] == f"pin:{pin_id}"]
    assert "pin.unlock" in actions and "pin.rotate" in actions
    assert new not in json.dumps(audit)


async def test_an_old_short_pin_still_works_is_listed_weak_until_rotated(pins: Api) -> None:
    """A 4-digit PIN made before the 6-digit rule (written to the database as the old API did) still lets its
    speaker in, and from its first use on the list marks it weak; rotating it clears the mark."""

    with pins.ctx.db.session() as s:
        row = SpeakerPin(label="old", pin_hash=hash_password("7391"), pin_hint="91", zone_ids=[],
                         priority=Priority.live, enabled=True)  # fmt: skip
        s.add(row)
        s.flush()
        pin_id = row.id
    op = await pins.as_role(Role.operator)
    assert (await op.get("/api/pins")).json()[0]["weak"] is False  # its length is unknown until it is typed
    grant = await _verify(pins, "7391")
    assert grant is not None and grant.weak
    assert (await op.get("/api/pins")).json()[0]["weak"] is True
    r = await op.post(f"/api/pins/{pin_id}/rotate")
    assert r.status_code == 200 and r.json()["weak"] is False and len(r.json()["pin"]) == 6
    assert (await op.get("/api/pins")).json()[0]["weak"] is False

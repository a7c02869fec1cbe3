"""Schedules over HTTP: next runs computed in the schedule's own time zone, clear 422s for bad rules."""

from __future__ import annotations

import datetime as dt
import itertools

from tests.helpers import Api

from citycast.hub.db.models import Role


async def test_schedule_crud_with_next_runs(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    zone = (await admin.post("/api/zones", json={"name": "saddar", "channel": 3})).json()
    body = {
        "title": "Friday address",
        "rrule": "FREQ=WEEKLY;BYDAY=FR;BYHOUR=20;BYMINUTE=0",
        "dtstart": "2025-01-03T20:00:00",
        "timezone": "Asia/Karachi",
        "duration_s": 600,
        "source": "tone",
        "zone_ids": [zone["id"]],
        "priority": "scheduled",
        "enabled": True,
    }
    assert (await (await api.as_role(Role.speaker)).post("/api/schedules", json=body)).status_code == 403
    op = await api.as_role(Role.operator)
    r = await op.post("/api/schedules", json=body)
    assert r.status_code == 201, r.text
    sch = r.json()
    runs = [dt.datetime.fromisoformat(x) for x in sch["next_runs"]]
    assert len(runs) == 5
    now = dt.datetime.now(dt.UTC)
    for run in runs:
        # Friday 20:00 in Karachi (UTC+5, no DST) is Friday 15:00 UTC.
        assert run.utcoffset() == dt.timedelta(0) and run > now
        assert (run.weekday(), run.hour, run.minute) == (4, 15, 0)
    assert all(b - a == dt.timedelta(days=7) for a, b in itertools.pairwise(runs))

    r = await op.patch(f"/api/schedules/{sch['id']}", json={"timezone": "Europe/London", "enabled": False})
    assert r.status_code == 200
    patched = r.json()
    assert patched["enabled"] is False and patched["timezone"] == "Europe/London"
    london = [dt.datetime.fromisoformat(x) for x in patched["next_runs"]]
    assert all(run.hour in (19, 20) for run in london)  # 20:00 London is 20:00 UTC in winter, 19:00 in summer
    assert [s["id"] for s in (await (await api.as_role(Role.viewer)).get("/api/schedules")).json()] == [sch["id"]]

    assert (await op.delete(f"/api/schedules/{sch['id']}")).status_code == 200
    assert (await op.delete(f"/api/schedules/{sch['id']}")).status_code == 404
    actions = [a["action"] for a in (await admin.get("/api/audit")).json()]
    assert {"schedule.create", "schedule.update", "schedule.delete"} <= set(actions)


async def test_bad_schedules_get_clear_messages(api: Api) -> None:
    op = await api.as_role(Role.operator)
    body = {
        "title": "t",
        "rrule": "FREQ=DAILY;BYHOUR=6",
        "dtstart": "2025-01-01T06:00:00",
        "timezone": "Asia/Karachi",
        "duration_s": 60,
        "source": "tone",
    }
    assert (await op.post("/api/schedules", json=body)).status_code == 201
    cases = {
        "FREQ": {"rrule": "BYDAY=FR"},
        "not NAME=VALUE": {"rrule": "every friday"},
        "never occurs": {"rrule": "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30"},
        "unknown time zone": {"timezone": "Mars/Olympus"},
        "unknown source": {"source": "file:nothing.wav"},
        "no such zone": {"zone_ids": [42]},
    }
    for needle, change in cases.items():
        r = await op.post("/api/schedules", json=body | change)
        assert r.status_code == 422, (change, r.text)
        assert needle in r.json()["detail"], (needle, r.json())
    r = await op.post("/api/schedules", json=body | {"duration_s": -5})
    assert r.status_code == 422 and "duration_s" in r.json()["detail"]
    assert len((await op.get("/api/schedules")).json()) == 1
    sch_id = (await op.get("/api/schedules")).json()[0]["id"]
    r = await op.patch(f"/api/schedules/{sch_id}", json={"rrule": "FREQ=SECONDLY"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)
    assert (await op.get("/api/schedules")).json()[0]["rrule"] == "FREQ=DAILY;BYHOUR=6"  # unchanged

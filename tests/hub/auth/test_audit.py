"""citycast.hub.audit: the audit log (kept here beside the auth tests that own its fixtures)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from citycast.hub.audit import SYSTEM, audit
from citycast.hub.db import Database
from citycast.hub.db.models import AuditEntry, Role, User, Zone


def test_audit_rows_are_written(database: Database) -> None:
    with database.session() as s:
        user = User(username="dua", password_hash="x", role=Role.admin)
        s.add(user)
        s.flush()
        entry = audit(s, user, "zone.create", "zone:1", {"name": "Clifton", "channel": 1}, remote="10.0.0.7")
        assert entry.id is not None
        audit(s, None, "schedule.fire", "schedule:3")
    with database.session() as s:
        rows = list(s.scalars(select(AuditEntry).order_by(AuditEntry.id)))
        assert [(r.username, r.action, r.target, r.detail, r.remote) for r in rows] == [
            ("dua", "zone.create", "zone:1", {"name": "Clifton", "channel": 1}, "10.0.0.7"),
            (SYSTEM, "schedule.fire", "schedule:3", {}, ""),
        ]
        assert rows[0].user_id is not None and rows[1].user_id is None
        assert all(abs(r.at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1) for r in rows)


def test_audit_rolls_back_with_the_change(database: Database) -> None:
    with pytest.raises(RuntimeError), database.session() as s:
        s.add(Zone(name="Lyari", channel=9))
        audit(s, None, "zone.create", "zone:Lyari")
        raise RuntimeError("the change failed")
    with database.session() as s:
        assert s.scalars(select(AuditEntry)).all() == []


def test_awkward_input_is_still_recorded(database: Database) -> None:
    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with database.session() as s:
        audit(s, None, "a" * 500, "t" * 5000, {"when": when, "path": Path("/x"), "role": Role.admin}, "r" * 500)
    with database.session() as s:
        row = s.scalars(select(AuditEntry)).one()
        assert (len(row.action), len(row.target), len(row.remote)) == (64, 200, 64)
        assert row.detail == {"when": str(when), "path": "/x", "role": "admin"}


def test_action_is_required(database: Database) -> None:
    with database.session() as s, pytest.raises(ValueError, match="action"):
        audit(s, None, "")

"""The SpeakerPin record on SQLite and PostgreSQL: aware times, zones as JSON, the user link, migration 0002."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic import command
from sqlalchemy import inspect, select
from sqlalchemy.exc import StatementError

from citycast.hub.auth.passwords import hash_password, verify_password
from citycast.hub.db import Database
from citycast.hub.db.models import Priority, Role, SpeakerPin, User

KARACHI = dt.timezone(dt.timedelta(hours=5))


def test_speaker_pin_round_trip(database: Database) -> None:
    start = dt.datetime(2026, 3, 1, 20, 0, tzinfo=KARACHI)
    with database.session() as s:
        user = User(username="imam", password_hash=hash_password("a long password"), role=Role.speaker)
        s.add(user)
        s.flush()
        row = SpeakerPin(
            label="Imam Saddar mosque",
            pin_hash=hash_password("482913"),
            pin_hint="13",
            user_id=user.id,
            zone_ids=[3, 7],
            priority=Priority.emergency,
            valid_from=start,
            valid_until=start + dt.timedelta(days=30),
        )
        s.add(row)
        s.flush()
        pin_id, user_id = row.id, user.id
    with database.session() as s:
        got = s.get_one(SpeakerPin, pin_id)
        assert got.enabled is True and got.last_used_at is None
        assert got.zone_ids == [3, 7] and got.priority is Priority.emergency
        assert got.valid_from == start and got.valid_from.utcoffset() == dt.timedelta(0)  # read back as UTC
        assert got.valid_until == start + dt.timedelta(days=30)
        assert got.created_at.tzinfo is not None
        assert verify_password(got.pin_hash, "482913") and not verify_password(got.pin_hash, "482914")
        s.delete(s.get_one(User, user_id))
    with database.session() as s:
        assert s.get_one(SpeakerPin, pin_id).user_id is None  # the PIN outlives its user account
        assert list(s.scalars(select(SpeakerPin.id).where(SpeakerPin.pin_hint == "13"))) == [pin_id]


def test_naive_validity_is_refused(database: Database) -> None:
    with pytest.raises(StatementError, match="naive datetime"), database.session() as s:
        s.add(SpeakerPin(label="x", pin_hash="h", pin_hint="00", priority=Priority.live, zone_ids=[],
                         valid_until=dt.datetime(2026, 1, 1)))  # fmt: skip
        s.flush()


def test_migration_0002_goes_down_and_up(database: Database) -> None:
    assert "speaker_pins" in inspect(database.engine).get_table_names()
    # Database.upgrade() only goes up: down through Alembic itself, on the same configuration.
    config = database._alembic_config()
    with database.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    assert database.current_revision() == "0001"
    assert "speaker_pins" not in inspect(database.engine).get_table_names()
    database.upgrade()
    assert database.current_revision() == database.head_revision()  # down through 0003 and back
    assert "speaker_pins" in inspect(database.engine).get_table_names()

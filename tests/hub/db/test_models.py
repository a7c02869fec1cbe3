"""Every model survives a round trip on both backends, with its JSON, enums and time zones intact, and the
ON DELETE rules do what the models say."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import exc, func, select

from citycast.hub.db import Database
from citycast.hub.db.models import (
    Address,
    AddressStatus,
    Alert,
    AuditEntry,
    Channel,
    FleetSample,
    Priority,
    Recording,
    RevokedKey,
    Role,
    Schedule,
    Session,
    Setting,
    Site,
    SiteStateChange,
    User,
    Zone,
)

KARACHI = ZoneInfo("Asia/Karachi")
# A local time with microseconds: must come back as the same instant, in UTC, to the microsecond.
T0 = dt.datetime(2024, 3, 8, 20, 0, 0, 123456, tzinfo=KARACHI)


def _world(db: Database) -> dict[str, int]:
    """One row of every model, linked the way the hub links them. Returns their ids."""
    with db.session() as s:
        user = User(username="amina", password_hash="$argon2id$x", role=Role.operator)
        zone = Zone(name="Saddar", channel=3, color="#ff0000")
        s.add_all([user, zone, Channel(number=3, name="Saddar", delay_ms=120.0)])
        s.flush()
        site = Site(name="saddar-1", label="Empress Market", lat=24.8607, lon=67.0011, zone_id=zone.id, enrolled_at=T0)
        schedule = Schedule(
            title="Friday",
            rrule="FREQ=WEEKLY;BYDAY=FR",
            dtstart=dt.datetime(2024, 3, 8, 20, 0),
            duration_s=600.0,
            source="file:azan.opus",
            priority=Priority.scheduled,
            zone_ids=[zone.id],
            created_by=user.id,
        )
        s.add_all([site, schedule])
        s.flush()
        address = Address(
            title="Friday",
            source="file:azan.opus",
            priority=Priority.scheduled,
            channel=3,
            zone_ids=[zone.id, 99],
            status=AddressStatus.live,
            started_at=T0,
            created_by=user.id,
            schedule_id=schedule.id,
        )
        s.add(address)
        s.flush()
        recording = Recording(address_id=address.id, channel=3, path="2024/03/08/1.opus", started_at=T0)
        alert = Alert(site_id=site.id, kind="offline", message="no telemetry for 12 s", raised_at=T0)
        change = SiteStateChange(site_id=site.id, at=T0, state="playing", detail="address 1")
        entry = AuditEntry(user_id=user.id, username=user.username, action="site.create", detail={"a": [1, "x"]})
        session = Session(token_hash="ab" * 32, user_id=user.id, expires_at=T0 + dt.timedelta(hours=12))
        s.add_all([recording, alert, change, entry, session])
        s.add_all([Setting(key="retention_days", value="30"), RevokedKey(nkey_public="UABC")])
        s.add(FleetSample(at=T0, by_state={"playing": 10, "offline": 2, "nested": {"x": [1.5, None]}}))
        s.flush()
        return {
            "user": user.id,
            "zone": zone.id,
            "site": site.id,
            "schedule": schedule.id,
            "address": address.id,
            "recording": recording.id,
            "alert": alert.id,
            "change": change.id,
            "entry": entry.id,
            "session": session.id,
        }


def test_round_trip_of_every_model(database: Database) -> None:
    ids = _world(database)
    with database.session() as s:
        user = s.get_one(User, ids["user"])
        assert (user.username, user.role, user.disabled) == ("amina", Role.operator, False)
        assert user.role is Role.operator
        assert user.created_at.tzinfo is dt.UTC
        assert abs(user.created_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)

        site = s.get_one(Site, ids["site"])
        assert (site.name, site.label, site.lat, site.lon) == ("saddar-1", "Empress Market", 24.8607, 67.0011)
        assert (site.volume, site.muted, site.last_state, site.nkey_public) == (1.0, False, "offline", None)
        assert site.zone is not None and site.zone.name == "Saddar"
        assert site.enrolled_at == T0 and site.enrolled_at.tzinfo is dt.UTC
        assert site.enrolled_at.hour == 15  # 20:00 in Karachi (UTC+5) is 15:00 UTC

        assert s.get_one(Channel, 3).delay_ms == 120.0
        schedule = s.get_one(Schedule, ids["schedule"])
        assert schedule.dtstart == dt.datetime(2024, 3, 8, 20, 0) and schedule.dtstart.tzinfo is None  # local time
        assert (schedule.timezone, schedule.zone_ids, schedule.enabled) == ("Asia/Karachi", [ids["zone"]], True)

        address = s.get_one(Address, ids["address"])
        assert address.zone_ids == [ids["zone"], 99]
        assert (address.priority, address.status) == (Priority.scheduled, AddressStatus.live)
        assert address.started_at == T0 and address.ended_at is None
        assert (address.created_by, address.schedule_id) == (ids["user"], ids["schedule"])

        assert s.get_one(Recording, ids["recording"]).path == "2024/03/08/1.opus"
        assert s.get_one(Alert, ids["alert"]).severity == "warning"
        assert s.get_one(SiteStateChange, ids["change"]).state == "playing"
        assert s.get_one(AuditEntry, ids["entry"]).detail == {"a": [1, "x"]}
        login = s.get_one(Session, ids["session"])
        assert login.user.username == "amina" and login.expires_at == T0 + dt.timedelta(hours=12)
        assert s.get_one(Setting, "retention_days").value == "30"
        assert s.scalars(select(RevokedKey.nkey_public)).one() == "UABC"
        sample = s.scalars(select(FleetSample)).one()
        assert sample.by_state == {"playing": 10, "offline": 2, "nested": {"x": [1.5, None]}}

        # Update: JSON columns are replaced whole (they are not mutation-tracked).
        address.zone_ids = [*address.zone_ids, 7]
        address.status = AddressStatus.ended
        address.ended_at = T0 + dt.timedelta(minutes=10)
        site.volume, site.muted = 0.5, True
    with database.session() as s:
        address = s.get_one(Address, ids["address"])
        assert address.zone_ids == [ids["zone"], 99, 7]
        assert address.status is AddressStatus.ended
        assert address.ended_at is not None and address.ended_at - address.started_at == dt.timedelta(minutes=10)
        site = s.get_one(Site, ids["site"])
        assert (site.volume, site.muted) == (0.5, True)
        s.delete(s.get_one(Setting, "retention_days"))
    with database.session() as s:
        assert s.get(Setting, "retention_days") is None


def test_times_compare_as_instants_in_queries(database: Database) -> None:
    ids = _world(database)
    with database.session() as s:
        # T0 is 15:00:00.123456 UTC: a bound given in another zone must compare as the same instant.
        before = dt.datetime(2024, 3, 8, 15, 0, 0, 123455, tzinfo=dt.UTC)
        after = dt.datetime(2024, 3, 8, 16, 0, 0, 123457, tzinfo=ZoneInfo("Europe/London"))  # = 16:00 UTC
        found = s.scalars(select(Address.id).where(Address.started_at > before, Address.started_at < after))
        assert list(found) == [ids["address"]]
        assert list(s.scalars(select(Address.id).where(Address.started_at > T0))) == []


def test_naive_datetime_is_refused(database: Database) -> None:
    with pytest.raises(exc.StatementError, match="naive datetime"), database.session() as s:
        s.add(Site(name="x", lat=0.0, lon=0.0, enrolled_at=dt.datetime(2024, 1, 1)))
        s.flush()


def test_unique_names(database: Database) -> None:
    with database.session() as s:
        s.add(Zone(name="Clifton", channel=1))
    with pytest.raises(exc.IntegrityError), database.session() as s:
        s.add(Zone(name="Clifton", channel=2))
    with pytest.raises(exc.IntegrityError), database.session() as s:
        s.add(Zone(name="Korangi", channel=1))


def test_foreign_keys_are_enforced(database: Database) -> None:
    with pytest.raises(exc.IntegrityError), database.session() as s:
        s.add(SiteStateChange(site_id=12345, state="idle"))


def _count(db: Database, model: type[object]) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_deleting_a_user_ends_its_sessions_and_keeps_its_history(database: Database) -> None:
    ids = _world(database)
    with database.session() as s:
        s.delete(s.get_one(User, ids["user"]))
    assert _count(database, Session) == 0  # CASCADE
    with database.session() as s:
        entry = s.get_one(AuditEntry, ids["entry"])
        assert (entry.user_id, entry.username) == (None, "amina")  # SET NULL, name kept
        assert s.get_one(Address, ids["address"]).created_by is None
        assert s.get_one(Schedule, ids["schedule"]).created_by is None


def test_deleting_a_zone_leaves_its_sites_unzoned(database: Database) -> None:
    ids = _world(database)
    with database.session() as s:
        s.delete(s.get_one(Zone, ids["zone"]))
    with database.session() as s:
        site = s.get_one(Site, ids["site"])
        assert site.zone_id is None and site.zone is None


def test_deleting_a_site_deletes_its_alerts_and_history(database: Database) -> None:
    ids = _world(database)
    with database.session() as s:
        s.delete(s.get_one(Site, ids["site"]))
    assert _count(database, Alert) == 0
    assert _count(database, SiteStateChange) == 0
    assert _count(database, Zone) == 1


def test_deleting_an_address_or_schedule_keeps_recordings_and_addresses(database: Database) -> None:
    ids = _world(database)
    with database.session() as s:
        s.delete(s.get_one(Schedule, ids["schedule"]))
    with database.session() as s:
        assert s.get_one(Address, ids["address"]).schedule_id is None
        s.delete(s.get_one(Address, ids["address"]))
    with database.session() as s:
        recording = s.get_one(Recording, ids["recording"])
        assert recording.address_id is None and recording.path == "2024/03/08/1.opus"

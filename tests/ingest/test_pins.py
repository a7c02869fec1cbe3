"""Speaker PINs: the guard's limits in simulated time, and the store against a real database (SQLite, and
PostgreSQL when `CITYCAST_TEST_PG_URL` is set)."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from citycast.hub.auth.passwords import hash_password
from citycast.hub.db import Database, default_sqlite_url
from citycast.hub.db.models import Alert, AuditEntry, Priority, SpeakerPin
from citycast.ingest.pins import PinGate, PinGuard, PinStore, SpeakerGrant, hint_of, pin_problem

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
PG_ENV = "CITYCAST_TEST_PG_URL"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database(default_sqlite_url(tmp_path))
        db.upgrade()
        yield db
        db.dispose()
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f'PostgreSQL: {PG_ENV} not set (eval "$(scripts/pg.sh)" sets it)')
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    db = Database(make_url(base).update_query_dict({"options": f"-c search_path={schema}"}).render_as_string(False))
    try:
        db.upgrade()
        yield db
    finally:
        db.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def add_pin(db: Database, pin: str, label: str = "Imam Saddar mosque", **over: Any) -> int:
    fields: dict[str, Any] = {"zone_ids": [3, 4], "priority": Priority.live, "enabled": True} | over
    with db.session() as s:
        row = SpeakerPin(label=label, pin_hash=hash_password(pin), pin_hint=hint_of(pin), **fields)
        s.add(row)
        s.flush()
        return int(row.id)


# -- PinGuard (sans-IO)


def test_guard_blocks_a_source_after_five_failures_in_ten_minutes() -> None:
    guard = PinGuard()
    t = 1000.0
    for i in range(4):
        assert guard.allowed("198.51.100.7", t + i * 60)
        assert guard.on_failure("198.51.100.7", t + i * 60) is False
    assert guard.on_failure("198.51.100.7", t + 299) is True  # the fifth within 10 min
    assert not guard.allowed("198.51.100.7", t + 300)
    assert guard.blocked_for("198.51.100.7", t + 299) == pytest.approx(900.0)
    assert guard.allowed("203.0.113.9", t + 300)  # another source is not affected
    assert not guard.allowed("198.51.100.7", t + 299 + 899.9)
    assert guard.allowed("198.51.100.7", t + 299 + 900.0)  # 15 minutes later
    assert len(guard) == 0  # nothing left to remember about it


def test_guard_failures_older_than_the_window_do_not_count() -> None:
    guard = PinGuard()
    # One failure every 3 minutes, forever: never 5 within 10 minutes.
    for i in range(50):
        assert guard.on_failure("198.51.100.7", i * 180.0) is False
        assert guard.allowed("198.51.100.7", i * 180.0)


def test_guard_after_a_block_counts_afresh() -> None:
    guard = PinGuard(failures=2, window_s=600, block_s=900)
    assert not guard.on_failure("a", 0.0)
    assert guard.on_failure("a", 1.0)
    assert not guard.allowed("a", 500.0)
    assert guard.allowed("a", 901.0)
    assert not guard.on_failure("a", 902.0)  # one failure after the block is not a new block
    assert guard.on_failure("a", 903.0)


def test_guard_memory_is_bounded() -> None:
    guard = PinGuard(max_sources=100, failures=2)
    guard.on_failure("first", 0.0)
    assert guard.on_failure("first", 0.5)  # blocked
    for i in range(1000):
        guard.on_failure(f"10.0.{i // 256}.{i % 256}", 1.0 + i * 0.001)
    assert len(guard) == 100
    assert guard.allowed("first", 2.0)  # evicted: the oldest are forgotten first


def test_guard_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="positive"):
        PinGuard(tries_per_call=0)


# -- PIN format


def test_pin_format() -> None:
    for good in ("0000", "123456", "000000000000"):
        assert pin_problem(good) is None
    for bad in ("", "123", "1234567890123", "12a4", " 1234", "1234\n", "١٢٣٤"):  # Arabic-Indic digits too
        problem = pin_problem(bad)
        assert problem is not None and "4 to 12 digits" in problem


# -- PinStore against a real database


async def test_store_verifies_a_pin_and_returns_its_grant(database: Database) -> None:
    pin_id = add_pin(database, "482913", user_id=None, priority=Priority.emergency)
    add_pin(database, "555513", label="someone else")  # same last two digits: both hashes are candidates
    store = PinStore(database)
    grant = await store.verify("482913", NOW)
    assert grant == SpeakerGrant(pin_id, "Imam Saddar mosque", (3, 4), Priority.emergency, None)
    assert (await store.verify("555513", NOW)) is not None
    with database.session() as s:
        assert s.get_one(SpeakerPin, pin_id).last_used_at == NOW
    for wrong in ("482914", "482912", "48291", "", "abcdef", "4829130"):
        assert await store.verify(wrong, NOW) is None, wrong
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.verify("482913", NOW.replace(tzinfo=None))


async def test_store_refuses_disabled_expired_and_future_pins(database: Database) -> None:
    hour = dt.timedelta(hours=1)
    add_pin(database, "1111", enabled=False)
    add_pin(database, "2222", valid_until=NOW - hour)
    add_pin(database, "3333", valid_from=NOW + hour)
    add_pin(database, "4444", valid_from=NOW - hour, valid_until=NOW + hour)
    add_pin(database, "5555", valid_until=NOW)  # the end is exclusive
    store = PinStore(database)
    assert await store.verify("1111", NOW) is None
    assert await store.verify("2222", NOW) is None
    assert await store.verify("3333", NOW) is None
    assert await store.verify("3333", NOW + 2 * hour) is not None  # once it begins, it works
    assert await store.verify("4444", NOW) is not None
    assert await store.verify("4444", NOW + 2 * hour) is None
    assert await store.verify("5555", NOW) is None
    assert await store.verify("5555", NOW - dt.timedelta(seconds=1)) is not None


async def test_store_bounds_the_hashes_checked_and_refuses_crowded_or_reused_pins(database: Database) -> None:
    store = PinStore(database, max_candidates=2)
    oldest = add_pin(database, "100007")
    add_pin(database, "200007")
    assert store.problem_with_new("300007") == (
        "too many PINs end in 07 already: choose a PIN with other last two digits"
    )
    assert store.hint_full("07")
    assert not store.hint_full("07", exclude_id=oldest)
    assert store.problem_with_new("300008") is None
    add_pin(database, "300007")  # written past the API's check: the newest two are checked, the oldest is not
    assert await store.verify("300007", NOW) is not None
    assert await store.verify("100007", NOW) is None
    assert store.problem_with_new("200007", exclude_id=oldest) is not None
    store = PinStore(database)
    assert store.problem_with_new("200007") == "this PIN is already in use: choose another"
    assert store.problem_with_new("12x4") is not None


async def test_gate_three_tries_per_call_then_block_per_source(database: Database) -> None:
    pin_id = add_pin(database, "482913")
    events: list[dict[str, Any]] = []
    store = PinStore(database, publish=events.append)
    guard = PinGuard()
    t = 0.0

    call = PinGate(store, guard, "198.51.100.7")
    outcomes = [(await call.attempt("000000", now_s=t, now=NOW)).outcome for _ in range(3)]
    assert outcomes == ["retry", "retry", "hangup"]
    assert (await call.attempt("482913", now_s=t, now=NOW)).outcome == "hangup"  # no fourth try in one call

    call = PinGate(store, guard, "198.51.100.7")  # redial: two more failures reach 5 in 10 minutes
    assert (await call.attempt("000001", now_s=t + 60, now=NOW)).outcome == "retry"
    result = await call.attempt("000002", now_s=t + 61, now=NOW)
    assert result.outcome == "blocked" and result.grant is None

    call = PinGate(store, guard, "198.51.100.7")  # the right PIN during the block is not even checked
    assert (await call.attempt("482913", now_s=t + 600, now=NOW)).outcome == "blocked"
    with database.session() as s:
        assert s.get_one(SpeakerPin, pin_id).last_used_at is None
    other = PinGate(store, guard, "203.0.113.9")
    granted = await other.attempt("482913", now_s=t + 600, now=NOW)
    assert granted.outcome == "granted" and granted.grant is not None and granted.grant.pin_id == pin_id

    call = PinGate(store, guard, "198.51.100.7")  # 15 minutes after the block began
    assert (await call.attempt("482913", now_s=t + 61 + 900, now=NOW)).outcome == "granted"

    with database.session() as s:
        audited = list(s.scalars(select(AuditEntry).where(AuditEntry.action == "pin.failure").order_by(AuditEntry.id)))
        alerts = list(s.scalars(select(Alert).where(Alert.kind == "pin_abuse").order_by(Alert.id)))
    assert [a.detail["outcome"] for a in audited] == ["retry", "retry", "hangup", "retry", "blocked"]
    assert {a.remote for a in audited} == {"198.51.100.7"}
    assert len(alerts) == 2 and alerts[0].severity == "critical"
    assert "used up its 3 PIN tries" in alerts[0].message and "refused for 15 min" in alerts[1].message
    assert [e["alert"]["kind"] for e in events] == ["pin_abuse", "pin_abuse"]
    assert [e["alert"]["id"] for e in events] == [a.id for a in alerts]

"""Speaker PINs: the guard's limits in simulated time, and the store against a real database (SQLite, and
PostgreSQL when `CITYCAST_TEST_PG_URL` is set)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from citycast.hub.auth.hashing import HashPool
from citycast.hub.auth.passwords import hash_password
from citycast.hub.db import Database, default_sqlite_url
from citycast.hub.db.models import Alert, AuditEntry, Priority, SpeakerPin
from citycast.hub.telephone.pins import (
    Attempt,
    PinGate,
    PinGuard,
    PinStore,
    Refusal,
    SpeakerGrant,
    hint_of,
    new_pin_problem,
    pin_problem,
)

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


# -- guessing in parallel and from many sources (issue 8 §3) ----------------------------------------------------------


class InstrumentedStore(PinStore):
    """The real store, watched: how many PIN checks run at once and at most (the hashing itself is untouched)."""

    def __init__(self, database: Database, **kw: Any) -> None:
        super().__init__(database, **kw)
        self.running = 0
        self.most_at_once = 0

    async def match(self, pin: str, candidates: Any) -> Any:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            return await super().match(pin, candidates)
        finally:
            self.running -= 1


def _failures_audited(db: Database) -> int:
    with db.session() as s:
        return len(list(s.scalars(select(AuditEntry).where(AuditEntry.action == "pin.failure"))))


async def test_fifty_parallel_attempts_from_one_source_check_one_at_a_time_and_five_in_all(database: Database) -> None:
    """The attacker fires 50 wrong PINs at once from one address (50 calls, or 50 browser offers), then again and
    again: one is checked at a time, the rest are refused at once, and no more than 5 are ever checked."""
    add_pin(database, "482913")
    store = InstrumentedStore(database)
    guard = PinGuard()
    source = "198.51.100.7"
    outcomes: list[str] = []
    for wave in range(8):
        gates = [PinGate(store, guard, source) for _ in range(50)]
        results = await asyncio.gather(
            *(g.attempt(f"{i:04d}{wave}3", now_s=float(wave), now=NOW) for i, g in enumerate(gates))
        )
        outcomes += [r.outcome for r in results]
        assert store.most_at_once <= 1, store.most_at_once
    assert _failures_audited(database) <= 5  # every checked wrong PIN is audited: at most 5 were checked
    assert store.hash_checks <= 5, store.hash_checks
    assert outcomes.count("busy") >= 5 * 49 and "granted" not in outcomes
    assert not guard.allowed(source, 8.0)  # the fifth failure blocked the source


async def test_many_sources_guessing_one_pin_lock_it_and_raise_an_alert(database: Database) -> None:
    """30 addresses each try one PIN ending like the real one (the guesser knows it ends in 13): after 10 wrong
    guesses counted against it, the PIN is locked: the right PIN is refused like a wrong one, whoever types it,
    one critical alert says so, and other PINs still work. An operator's unlock lets the speaker back in."""
    pin_id = add_pin(database, "482913")
    other_id = add_pin(database, "771155", label="Frere Hall")
    events: list[dict[str, Any]] = []
    store = PinStore(database, publish=events.append)
    guard = PinGuard()
    results = await asyncio.gather(
        *(
            PinGate(store, guard, f"203.0.113.{i}").attempt(f"{100000 + i:06d}"[:4] + "13", now_s=10.0, now=NOW)
            for i in range(30)
        )
    )
    assert all(r.outcome == "retry" for r in results)
    assert guard.pin_locked_for(pin_id, 11.0) == pytest.approx(3600.0, abs=2)

    right = await PinGate(store, guard, "192.0.2.200").attempt("482913", now_s=20.0, now=NOW)
    assert right.outcome == "retry" and right.grant is None  # the same answer as a wrong PIN: no oracle
    with database.session() as s:
        assert s.get_one(SpeakerPin, pin_id).last_used_at is None
        locked_use = list(s.scalars(select(AuditEntry).where(AuditEntry.action == "pin.locked_use")))
        alerts = list(s.scalars(select(Alert).where(Alert.kind == "pin_abuse")))
    assert [e.target for e in locked_use] == [f"pin:{pin_id}"]  # the operators see the real speaker trying
    guessed = [a for a in alerts if "being guessed" in a.message]
    assert len(guessed) == 1 and guessed[0].severity == "critical"
    assert "Imam Saddar mosque" in guessed[0].message and "ending 13" in guessed[0].message
    assert any("being guessed" in e["alert"]["message"] for e in events)

    ok = await PinGate(store, guard, "192.0.2.201").attempt("771155", now_s=21.0, now=NOW)
    assert ok.outcome == "granted" and ok.grant is not None and ok.grant.pin_id == other_id

    assert guard.unlock_pin(pin_id)
    back = await PinGate(store, guard, "192.0.2.202").attempt("482913", now_s=22.0, now=NOW)
    assert back.outcome == "granted" and back.grant is not None and back.grant.pin_id == pin_id


async def test_a_full_hash_pool_refuses_the_attempt_without_counting_it(database: Database) -> None:
    add_pin(database, "482913")
    pool = HashPool(workers=1, max_waiting=1)
    release = threading.Event()
    store = PinStore(database, pool=pool)
    guard = PinGuard()
    try:
        hog = asyncio.ensure_future(pool.run(release.wait, 30))
        await asyncio.sleep(0.05)
        gate = PinGate(store, guard, "198.51.100.7")
        result = await gate.attempt("482913", now_s=0.0, now=NOW)
        assert result.outcome == "overloaded" and result.retry_after > 0
        assert gate.tries == 0 and len(guard) == 0 and store.hash_checks == 0  # not a try, not a failure
        release.set()
        await hog
        assert (await gate.attempt("482913", now_s=1.0, now=NOW)).outcome == "granted"
    finally:
        release.set()
        pool.close()


def test_guard_pin_lock_expires_and_persistent_guessing_locks_again() -> None:
    guard = PinGuard()
    t = 0.0
    locks = []
    for i in range(10):
        a = guard.begin(f"10.0.0.{i}", t)
        assert not isinstance(a, Refusal)
        assert guard.charge(a, [7], t) == frozenset({7})  # within budget until the tenth is counted
        locks += guard.fail(a, t).locked
    assert [lk.pin_id for lk in locks] == [7] and locks[0].sources == 10
    a = guard.begin("10.0.1.1", 1.0)
    assert not isinstance(a, Refusal) and guard.charge(a, [7], 1.0) == frozenset()  # locked: not grantable
    guard.succeed(a)  # even a right guess does not lift it
    assert guard.pin_locked_for(7, 3599.0) > 0
    assert guard.pin_locked_for(7, 3600.0) == 0
    # Still guessed in the last ten minutes of the lock: locked again at its end, with a new alert.
    for i in range(10):
        a = guard.begin(f"10.0.2.{i}", 3300.0 + i)
        assert not isinstance(a, Refusal)
        guard.charge(a, [7], 3300.0 + i)
        assert guard.fail(a, 3300.0 + i).locked == ()
    a = guard.begin("10.0.3.1", 3601.0)
    assert not isinstance(a, Refusal) and guard.charge(a, [7], 3601.0) == frozenset()
    assert [lk.pin_id for lk in guard.fail(a, 3601.0).locked] == [7]
    assert guard.pin_locked_for(7, 3602.0) == pytest.approx(3599.0)


def test_guard_one_attempt_in_flight_per_source_and_counted_before_the_check() -> None:
    guard = PinGuard(failures=2)
    a = guard.begin("s", 0.0)
    assert isinstance(a, Attempt)
    assert guard.begin("s", 0.0) == Refusal("busy")  # refused at once, not queued
    assert isinstance(guard.begin("other", 0.0), Attempt)
    guard.succeed(a)  # right: it never counted
    assert len(guard) == 1  # only "other", still in flight
    a = guard.begin("s", 1.0)
    assert isinstance(a, Attempt)
    assert not guard.fail(a, 1.0).source_blocked
    a = guard.begin("s", 2.0)
    assert isinstance(a, Attempt)
    assert guard.fail(a, 2.0).source_blocked
    refused = guard.begin("s", 3.0)
    assert isinstance(refused, Refusal) and refused.reason == "blocked" and refused.wait == pytest.approx(899.0)


def test_new_pins_need_six_digits_old_short_ones_still_verify() -> None:
    assert new_pin_problem("12345") is not None and "6 to 12 digits" in (new_pin_problem("12345") or "")
    assert new_pin_problem("123456") is None
    assert pin_problem("1234") is None  # a row made before the rule still works when typed


async def test_a_short_pin_still_works_and_is_flagged_weak(database: Database) -> None:
    pin_id = add_pin(database, "7391")
    store = PinStore(database)
    result = await PinGate(store, PinGuard(), "198.51.100.7").attempt("7391", now_s=0.0, now=NOW)
    assert result.outcome == "granted" and result.grant is not None and result.grant.weak
    assert store.weak_ids() == {pin_id}
